"""The core commands: train, evaluate, embed (top level: they use engine/ and report/)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `train`, `evaluate` and `embed`."""
    p = sub.add_parser("train", help="train an embedding model from a recipe and evaluate it on unseen classes")
    p.add_argument("recipe", nargs="?", default="default", help="recipe name in recipes/ or a YAML path (default: default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the latest run of this recipe) with the run's recorded recipe")
    p.add_argument("--allow-changes", action="store_true", help="with --resume: let --set change the recorded recipe")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=train)

    p = sub.add_parser("evaluate", help="evaluate a run folder (default: rerun its protocol on its evaluation dataset)")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    p.add_argument("--protocol", default=None, help="evaluation protocol (default: the run's, or --dataset's own)")
    p.add_argument("--dataset", "--reader", dest="dataset", default=None,
                   help="a registered dataset, read at --data (see `metricvision data list`; default: the run's)")
    p.add_argument("--data", type=Path, default=None, help="the dataset's folder in its native layout")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("embed", help="embed a dataset or an image folder with a run's model into an .npz file")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. emoji (see `metricvision data list`)")
    src.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    p.add_argument("--data", type=Path, default=None, help="the --dataset's folder in its native layout")
    p.add_argument("--split", default="test", help="split of --dataset (default: test)")
    p.add_argument("--out", type=Path, required=True, help="output .npz (embeddings, labels, paths)")
    p.add_argument("--strict", action="store_true",
                   help="stop at unreadable images (default: skip them, list them in <out>.unreadable.txt)")
    p.add_argument("--json", action="store_true", help="print the counts and the output path as JSON")
    p.set_defaults(func=embed)


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision train`."""
    from metricvision.config import load_recipe
    from metricvision.engine.runs import latest_run_dir, new_run_dir, resumed_recipe
    from metricvision.engine.trainer import Trainer

    run_dir = args.out
    if args.resume:
        if run_dir is None:
            name = load_recipe(args.recipe).name
            run_dir = latest_run_dir(name)
            if run_dir is None:
                raise FileNotFoundError(f"--resume: no run of recipe '{name}' under runs/")
        recipe = resumed_recipe(run_dir, args.overrides, args.allow_changes)
    else:
        recipe = load_recipe(args.recipe, args.overrides)
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

        emb = trainer.last_test_embeddings
        grid = query_grid(trainer.test_samples, emb, seed=recipe.train.seed) if emb is not None else ""
        path = write_report(run_dir, recipe.name, metrics, trainer.history, trainer.recipe.to_dict(), grid,
                            samples=trainer.test_samples, embeddings=emb, seed=recipe.train.seed)
        print(f"report: {path}", file=sys.stderr)
    return metrics


def _embed_fn(model: Any, image_size: int, scales: Sequence[float] = (1.0,), whitening: Any = None):
    """samples -> (N, D) embeddings as the run's evaluation makes them: eval transform, ``scales``, ``whitening``."""
    import torch

    from metricvision.data.sample import SampleDataset
    from metricvision.data.transforms import TRANSFORMS

    transform = TRANSFORMS.create("eval", size=image_size)

    def fn(samples) -> "torch.Tensor":
        from tqdm import tqdm

        loader = torch.utils.data.DataLoader(SampleDataset(samples, transform), batch_size=256)
        emb = model.encode((x for x, _ in tqdm(loader, desc="embedding", unit="batch", leave=False)), scales=scales)
        return emb if whitening is None else whitening.transform(emb)

    return fn


def _run_whitening(run: Path, kind: str) -> Any:
    """The whitening the run fitted at its last evaluation (None when its recipe has none)."""
    from metricvision.index.whitening import WHITENING_FILE, load_whitening

    if kind == "none":
        return None
    if not (run / WHITENING_FILE).exists():
        raise FileNotFoundError(f"{run / WHITENING_FILE} not found: the recipe whitens its descriptors (eval.whitening={kind}) "
                                f"and the run has not saved its whitening yet; run `metricvision evaluate {run}` first")
    return load_whitening(run / WHITENING_FILE)


def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision evaluate`: the run's protocol on its evaluation dataset, or --protocol / --dataset / --data."""
    from metricvision.data import DATASETS
    from metricvision.engine.builders import resolve_eval
    from metricvision.engine.runs import resumed_recipe
    from metricvision.engine.trainer import Trainer
    from metricvision.metrics.protocols import PROTOCOLS

    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol '{args.protocol}'; expected one of: {', '.join(PROTOCOLS.names())} "
                       "(pick the dataset with --dataset NAME (alias --reader) and --data PATH; see `metricvision data list`)")
    recipe = resolve_eval(resumed_recipe(args.run))
    recipe.model.pretrained = False  # the checkpoint holds the weights
    e = recipe.eval
    if args.dataset is not None or args.data is not None:
        dataset = args.dataset or (args.protocol if args.protocol in DATASETS else None)
        if dataset is None:
            raise ValueError(f"--data {args.data} needs --dataset NAME (one of: {', '.join(DATASETS.names())})")
        changed = dataset != e.dataset or (args.data is not None and str(args.data) != e.path)
        if changed:
            e.dataset, e.path, e.options, e.params, e.also = dataset, None if args.data is None else str(args.data), {}, {}, {}
            e.protocol = None
    if args.protocol is not None and args.protocol != e.protocol:
        e.protocol, e.params, e.also = args.protocol, {}, {}
    # the Trainer's own evaluation: multi-scale descriptors and whitening as in training
    trainer = Trainer(resolve_eval(recipe), args.run)
    if not trainer.restore():
        raise FileNotFoundError(f"{args.run} has no checkpoint: is it a run folder written by `metricvision train`?")
    return trainer.evaluate()


def embed(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision embed`: writes embeddings, labels and image paths to an .npz file.

    Unreadable images are skipped and listed in ``<out>.unreadable.txt`` (``--strict``: refused).
    """
    from metricvision.data.check import drop_unreadable
    from metricvision.data.sample import load_samples
    from metricvision.engine.runs import load_run

    recipe, model = load_run(args.run)
    found = load_samples(args.dataset, args.images, args.split, args.data)
    samples = drop_unreadable(found, args.strict, args.out.with_name(args.out.name + ".unreadable.txt"))
    fn = _embed_fn(model, recipe.data.image_size, recipe.eval.scales, _run_whitening(args.run, recipe.eval.whitening))
    emb = fn(samples).numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, embeddings=emb, labels=np.array([s.label for s in samples]),
             paths=np.array([s.image if isinstance(s.image, str) else "" for s in samples]))
    tmp.replace(args.out)
    return {"embedded": len(samples), "skipped": len(found) - len(samples), "dim": int(emb.shape[1]), "out": str(args.out)}
