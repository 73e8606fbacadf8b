"""`metricvision implant RUN`: few-shot evaluation of a trained run with implanting (supervision/implant.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `implant`."""
    p = sub.add_parser("implant", help="few-shot episodes on a run's evaluation classes, with an implant trained per episode")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train` (an nn.Sequential backbone)")
    p.add_argument("--split", default="test", help="evaluation split whose classes make the episodes (default test)")
    p.add_argument("--n-way", type=int, default=5, help="classes per episode (default 5)")
    p.add_argument("--k-shot", type=int, default=1, help="support images per class (default 1)")
    p.add_argument("--n-query", type=int, default=15, help="query images per class (default 15)")
    p.add_argument("--episodes", type=int, default=200, help="number of episodes (default 200)")
    p.add_argument("--dim", type=int, default=32, help="filters of each implant (default 32)")
    p.add_argument("--layers", type=int, default=2, help="last conv layers of the backbone with an implant beside them (default 2)")
    p.add_argument("--steps", type=int, default=20, help="SGD steps on each support set")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode sampler (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=implant)


def implant(args: argparse.Namespace) -> Dict[str, Any]:
    """Accuracy and 95% interval with and without implants; also written to RUN/implant.json."""
    import numpy as np
    import torch

    from metricvision._atomic import atomic_write
    from metricvision.data.sample import SampleDataset
    from metricvision.data.transforms import TRANSFORMS
    from metricvision.engine.builders import build_eval_splits
    from metricvision.engine.runs import load_run
    from metricvision.supervision.implant import block_maps, evaluate_implanting

    recipe, model = load_run(args.run)
    if model.taps:
        raise ValueError(f"implanting runs the backbone's last blocks; run {args.run} has model.taps {list(model.taps)}")
    splits = build_eval_splits(recipe)
    if args.split not in splits:
        raise ValueError(f"--split {args.split}: the evaluation dataset has splits {sorted(splits)}")
    samples = splits[args.split]
    data = SampleDataset(samples, TRANSFORMS.create("eval", size=recipe.data.image_size))
    images = torch.stack([data[i][0] for i in range(len(data))])
    inputs, last = block_maps(model.backbone, (images - model.mean) / model.std, args.layers)
    result: Dict[str, Any] = evaluate_implanting(inputs, last, np.array([s.label for s in samples]), args.n_way, args.k_shot,
                                                 args.n_query, args.episodes, args.seed, args.dim, args.steps)
    result.update({"n_way": args.n_way, "k_shot": args.k_shot, "n_query": args.n_query, "split": args.split,
                   "layers": args.layers})
    with atomic_write(args.run / "implant.json") as f:
        f.write(json.dumps(result, indent=2).encode())
    return result
