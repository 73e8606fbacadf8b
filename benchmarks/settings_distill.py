"""Distillation: a small student that ranks like its teacher. Teacher = frozen MobileNetV2
features + a metric head trained on the training identities; student = an MLP on 16 x 16
pixels (1/300 of the teacher's compute), alone or distilled with KD, RKD (distance, angle)
or listwise rank distillation, each added to the student's own multi-similarity loss.

    python benchmarks/settings_distill.py [--epochs 15] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from metricvision.losses import create_loss
from metricvision.supervision import SUPERVISIONS
from settings_common import Timer, _Normalize, embed, emoji_features, make_head, print_table, retrieval, train_head


def pixels(samples) -> torch.Tensor:
    imgs = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255
    return F.interpolate(imgs, size=(16, 16), mode="area").flatten(1)


def student(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(768, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128), _Normalize())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = emoji_features("train"), emoji_features("test")
    px_train, px_test = pixels(train["samples"]), pixels(test["samples"])
    sup = SUPERVISIONS.create("partial_labels")
    sup.bind(train["y"])
    n_batches = len(train["y"]) // 128
    ms = create_loss("multi_similarity")
    g = torch.Generator().manual_seed(a.seed)
    t = Timer()
    teacher = train_head(make_head(seed=a.seed), train["x"], a.epochs, lambda e, h: sup.batches(128, n_batches, g),
                         lambda e, idx: ms(e, train["y"][idx]).value)
    rows = [{"model": "teacher (MobileNetV2 + head)", **retrieval(teacher, test), "seconds": t()}]
    t_emb = embed(teacher, train["x"])
    px_test_set = {"x": px_test, "y": test["y"]}
    for name, dist, weight in [("student alone", None, 0.0), ("+ KD", "kd", 1.0), ("+ RKD distance", "rkd_distance", 1.0),
                               ("+ RKD angle", "rkd_angle", 2.0), ("+ rank distillation", "rank_distillation", 1.0)]:
        t = Timer()
        d = create_loss(dist) if dist else None
        g = torch.Generator().manual_seed(a.seed)

        def step(e, idx, d=d, weight=weight):
            value = ms(e, train["y"][idx]).value
            return value + weight * d(e, t_emb[idx]).value if d is not None else value

        s = train_head(student(a.seed), px_train, a.epochs, lambda e, h: sup.batches(128, n_batches, g), step)
        rows.append({"model": name, **retrieval(s, px_test_set), "seconds": t()})
    print_table(rows)


if __name__ == "__main__":
    main()
