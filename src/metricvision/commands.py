"""The core commands: train, evaluate, embed (top level: they use engine/ and report/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `train`, `evaluate` and `embed`."""
    p = sub.add_parser("train", help="train an embedding model from a recipe and evaluate it on unseen classes")
    p.add_argument("recipe", nargs="?", default="default", help="recipe name in recipes/ or a YAML path (default: default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (default: the latest run of this recipe)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=train)

    p = sub.add_parser("evaluate", help="evaluate a run folder (default: retrieval on its dataset's test split)")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    p.add_argument("--protocol", default=None, help="evaluation protocol name (see metricvision.metrics.protocols)")
    p.add_argument("--data", type=Path, default=None, help="dataset folder for --protocol")
    p.add_argument("--reader", default=None, help="dataset reader for --data (default: the protocol's own)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("embed", help="embed a dataset or an image folder with a run's model into an .npz file")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. emoji")
    src.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    p.add_argument("--split", default="test", help="split of --dataset (default: test)")
    p.add_argument("--out", type=Path, required=True, help="output .npz (embeddings, labels, paths)")
    p.add_argument("--strict", action="store_true",
                   help="stop at unreadable images (default: skip them, list them in <out>.unreadable.txt)")
    p.add_argument("--json", action="store_true", help="print the counts and the output path as JSON")
    p.set_defaults(func=embed)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision train`."""
    from metricvision.config import load_recipe
    from metricvision.engine.runs import latest_run_dir, new_run_dir
    from metricvision.engine.trainer import Trainer

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.out
    if args.resume and run_dir is None:
        run_dir = latest_run_dir(recipe.name)
        if run_dir is None:
            raise FileNotFoundError(f"--resume: no run of recipe '{recipe.name}' under runs/")
    run_dir = run_dir or new_run_dir(recipe.name)
    print(f"run folder: {run_dir}", file=sys.stderr)
    trainer = Trainer(recipe, run_dir)
    try:
        metrics = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: metricvision train {args.recipe} --out {run_dir} --resume", file=sys.stderr)
        raise
    from metricvision.engine.card import model_card, write_model_card

    write_model_card(run_dir, model_card(recipe, metrics, trainer.train_samples, trainer.test_samples, trainer.epoch))
    if not args.no_report:
        from metricvision.report import query_grid, write_report

        grid = query_grid(trainer.test_samples, trainer.last_test_embeddings, seed=recipe.train.seed)
        path = write_report(run_dir, recipe.name, metrics, trainer.history, recipe.to_dict(), grid,
                            samples=trainer.test_samples, embeddings=trainer.last_test_embeddings, seed=recipe.train.seed)
        print(f"report: {path}", file=sys.stderr)
    return metrics


def _embed_fn(model: Any, image_size: int):
    import torch

    from metricvision.data.sample import SampleDataset
    from metricvision.data.transforms import TRANSFORMS

    transform = TRANSFORMS.create("eval", size=image_size)

    def fn(samples) -> "torch.Tensor":
        from tqdm import tqdm

        loader = torch.utils.data.DataLoader(SampleDataset(samples, transform), batch_size=256)
        return model.encode((x for x, _ in tqdm(loader, desc="embedding", unit="batch", leave=False)))

    return fn


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision evaluate`."""
    from metricvision.engine.builders import build_splits
    from metricvision.engine.runs import load_run
    from metricvision.metrics import evaluate_retrieval

    recipe, model = load_run(args.run)
    fn = _embed_fn(model, recipe.data.image_size)
    if args.protocol is None:
        _, test = build_splits(recipe)
        return evaluate_retrieval(fn(test), np.array([s.label for s in test]), ks=recipe.eval.ks, clustering=recipe.eval.clustering)
    from metricvision.metrics.protocols import evaluate_dataset

    if args.data is None:
        raise ValueError(f"--protocol {args.protocol} needs --data PATH (the dataset folder)")
    return evaluate_dataset(args.protocol, fn, args.data, args.reader)


def embed(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision embed`: writes embeddings, labels and image paths to an .npz file.

    Unreadable images are skipped and listed in ``<out>.unreadable.txt`` (``--strict``: refused).
    """
    from metricvision.data.check import drop_unreadable
    from metricvision.data.sample import load_samples
    from metricvision.engine.runs import load_run

    recipe, model = load_run(args.run)
    found = load_samples(args.dataset, args.images, args.split)
    samples = drop_unreadable(found, args.strict, args.out.with_name(args.out.name + ".unreadable.txt"))
    emb = _embed_fn(model, recipe.data.image_size)(samples).numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, embeddings=emb, labels=np.array([s.label for s in samples]),
             paths=np.array([s.image if isinstance(s.image, str) else "" for s in samples]))
    tmp.replace(args.out)
    return {"embedded": len(samples), "skipped": len(found) - len(samples), "dim": int(emb.shape[1]), "out": str(args.out)}
