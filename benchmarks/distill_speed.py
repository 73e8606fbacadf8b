"""A distilled student against its teacher: retrieval quality, multiply-adds and CPU inference time.

    python benchmarks/distill_speed.py TEACHER_RUN STUDENT_RUN [--images 1024 --batch 256 --repeats 5]

Both runs are folders written by ``metricvision train`` (the student by the ``distill`` recipe).
Each model embeds the same number of images at its own recipe's resolution (random pixels: the
time does not depend on the content), in one process, alternating teacher and student after a
warm-up; the median time per image of the repeats is compared. Floating-point operations of one
forward pass come from ``torch.utils.flop_counter`` (exact, independent of the machine's load).
P@1 / MAP@R are read from each run's metrics.json. The goal of issue 14: the student within 1 P@1
of its teacher at <= 1/4 of its inference time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from metricvision.data.transforms import height_width
from metricvision.engine.runs import load_run


def images(n: int, size: int | list) -> torch.Tensor:
    """(n, 3, H, W) random images in [0, 1] at the recipe's size."""
    h, w = height_width(size if isinstance(size, int) else list(size))
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def seconds(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    """Seconds to embed ``x`` in batches of ``batch``."""
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    return time.perf_counter() - start


@torch.no_grad()
def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations of one forward pass, per image."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x[:8])
    return counter.get_total_flops() / 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("teacher")
    parser.add_argument("student")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rows = {}
    for name, run in (("teacher", args.teacher), ("student", args.student)):
        recipe, model = load_run(run)
        x = images(args.images, recipe.data.image_size)
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        rows[name] = {"model": model, "x": x, "recipe": recipe, "metrics": metrics, "times": [],
                      "flops": flops_per_image(model, x)}
        seconds(model, x, args.batch)  # warm-up
    for _ in range(args.repeats):
        for r in rows.values():
            r["times"].append(seconds(r["model"], r["x"], args.batch) / args.images)
    print(f"{'':8s} {'backbone':20s} {'px':>4s} {'MFLOP/img':>10s} {'ms/img':>7s} {'P@1':>6s} {'MAP@R':>6s}  (threads {torch.get_num_threads()})")
    for name, r in rows.items():
        m = r["metrics"]
        print(f"{name:8s} {r['recipe'].model.backbone:20s} {str(r['recipe'].data.image_size):>4s} {r['flops'] / 1e6:10.1f} "
              f"{1000 * statistics.median(r['times']):7.3f} {m.get('precision@1', float('nan')):6.3f} {m.get('map@r', float('nan')):6.3f}")
    t, s = rows["teacher"], rows["student"]
    time_ratio = statistics.median(s["times"]) / statistics.median(t["times"])
    gap = 100 * (t["metrics"]["precision@1"] - s["metrics"]["precision@1"])
    print(f"student / teacher: FLOPs {s['flops'] / t['flops']:.3f}, time {time_ratio:.3f} (goal <= 0.25); "
          f"P@1 {gap:.1f} points below the teacher (goal <= 1)")


if __name__ == "__main__":
    main()
