"""Training throughput of the Trainer against a plain PyTorch loop: same model, batch, optimizer, one process.

    python benchmarks/train_throughput.py [--recipe default --steps 16 --repeats 7 --set key=value ...]

The Trainer runs ``train_epoch`` (sampler, DataLoader, transforms, hooks, autocast, the
gradient scaler and the schedule) for ``--steps`` PK batches of the recipe's dataset. The
plain loop runs forward + backward + AdamW step on the same batches, already decoded and
stacked in memory (so it measures the model alone), with an identical copy of the model
and loss (under the same autocast; no gradient scaler). Both start from the same weights; runs alternate (Trainer, plain, ...) after
one warm-up each. Printed: images / s of both (medians over the repeats) and the Trainer's time per
step as a multiple of the plain loop's: the median of the per-repeat ratios, each Trainer run over the
plain run right after it, so that a slow spell of the machine moves both sides of a ratio (goal: <= 1.1).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from typing import List, Optional, Tuple

import torch

from metricvision.config import load_recipe
from metricvision.data.transforms import as_float_images
from metricvision.engine.builders import build_optimizer
from metricvision.engine.trainer import Trainer


def plain_loop(model: torch.nn.Module, loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: List[Tuple[torch.Tensor, torch.Tensor]], amp: Optional[torch.dtype]) -> float:
    """Seconds for forward + backward + step over ``batches`` (the model under autocast ``amp`` if given)."""
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            z = model(x)
        loss(z.float(), y).value.backward()
        optimizer.step()
    if batches and batches[0][0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def trainer_epoch(trainer: Trainer, epoch: int) -> float:
    """Seconds of one Trainer epoch (its batches_per_epoch steps)."""
    start = time.perf_counter()
    trainer.train_epoch(epoch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--steps", type=int, default=16, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.set)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(recipe, run_dir)
        trainer.sampler.batches_per_epoch = args.steps
        model, loss = copy.deepcopy(trainer.model), copy.deepcopy(trainer.loss)
        optimizer = build_optimizer(recipe, model, loss)
        loader = torch.utils.data.DataLoader(trainer.train_set, batch_sampler=trainer.sampler)
        trainer.sampler.set_epoch(0)
        batches = [(as_float_images(x.to(trainer.device)), y.to(trainer.device)) for x, y in loader]
        start = time.perf_counter()
        for _ in loader:  # the same batches again, warm
            pass
        loading = (time.perf_counter() - start) / args.steps
        images = sum(len(y) for _, y in batches)
        trainer_epoch(trainer, 0)  # warm-up: allocator, oneDNN kernels
        plain_loop(model, loss, optimizer, batches, trainer.amp_dtype)
        ours, plain = [], []
        for r in range(args.repeats):
            ours.append(trainer_epoch(trainer, r + 1))
            plain.append(plain_loop(model, loss, optimizer, batches, trainer.amp_dtype))
    t_ours, t_plain = statistics.median(ours), statistics.median(plain)
    print(f"recipe {recipe.name}: {recipe.model.backbone}, batch {recipe.data.batch_size}, "
          f"{args.steps} steps x {args.repeats} repeats, device {trainer.device}, threads {torch.get_num_threads()}, "
          f"amp {recipe.train.amp}, num_workers {recipe.data.num_workers}")
    print(f"data loading alone (sampler, decode, augmentation, collation): {loading * 1000:.1f} ms a step")
    print(f"{'':10s} {'s/step':>8s} {'images/s':>9s}")
    for name, times, t in (("trainer", ours, t_ours), ("plain", plain, t_plain)):
        runs = " ".join(f"{s / args.steps:.3f}" for s in times)
        print(f"{name:10s} {t / args.steps:8.3f} {images / t:9.1f}   s/step of each repeat: {runs}")
    ratios = sorted(o / p for o, p in zip(ours, plain))
    print(f"trainer / plain time per step: {statistics.median(ratios):.2f}x (goal <= 1.10; "
          f"per repeat {' '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
