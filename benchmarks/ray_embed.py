"""Embedding extraction speed: one process vs Ray (ray.data + Embedder actors) with 1 and 2 workers.

All runs embed the same emoji images with the same Embedder and eval transform:
- in-process: ``Embedder.encode`` in this process with all cores (what ``metricvision embed`` does);
- ray 1 / 2 workers: ``ray_embed`` (actors with one torch thread each, Parquet output),
  timed from the call to the written folder, actor start-up included; Ray itself is
  started once beforehand (its start-up time is printed separately).
Ratios are in-process time / Ray time (> 1: Ray is faster). Embeddings are checked equal.

    python benchmarks/ray_embed.py                       # mobilenet_v2 at 96 px, 3000 images
    python benchmarks/ray_embed.py --n 500 --size 48     # quick run
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from metricvision.data.emoji import load_emoji
    from metricvision.data.sample import SampleDataset
    from metricvision.data.transforms import TRANSFORMS
    from metricvision.engine.ray_embed import ensure_ray, ray_embed, read_embeddings
    from metricvision.models import Embedder

    samples = load_emoji("all")[: args.n]
    torch.manual_seed(0)
    model = Embedder(args.backbone, dim=128, pretrained=False).eval()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)

    t = time.perf_counter()
    data = SampleDataset(samples, TRANSFORMS.create("eval", size=args.size))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    ref = model.encode((x for x, _ in loader)).numpy()
    t_local = time.perf_counter() - t

    t = time.perf_counter()
    ray = ensure_ray(num_cpus=cores)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_start = time.perf_counter() - t

    rows = [("in-process", cores, t_local, 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            t = time.perf_counter()
            ray_embed(model, samples, out, image_size=args.size, num_workers=workers, batch_size=args.batch_size)
            elapsed = time.perf_counter() - t
            _, _, emb = read_embeddings(out)
            assert np.abs(emb - ref).max() < 1e-4, "Ray embeddings differ from in-process ones"
            rows.append((f"ray {workers} worker{'s' if workers > 1 else ''}", workers, elapsed, t_local / elapsed))
    ray.shutdown()

    print(f"{args.n} images, {args.backbone} at {args.size} px, batch {args.batch_size}, {cores} cores; "
          f"ray.init {t_start:.1f} s (not counted)")
    print(f"{'run':<16}{'threads':>8}{'seconds':>10}{'images/s':>10}{'speed-up vs in-process':>24}")
    for name, threads, sec, ratio in rows:
        print(f"{name:<16}{threads:>8}{sec:>10.1f}{args.n / sec:>10.0f}{ratio:>24.2f}")
    w1, w2 = rows[1][2], rows[2][2]
    print(f"ray 2 workers vs 1 worker: {w1 / w2:.2f}x")


if __name__ == "__main__":
    main()
