"""Distillation: a small student that ranks like its teacher. Teacher = frozen MobileNetV2
features + a metric head trained on the training identities; student = an MLP on 16 x 16
pixels (1/300 of the teacher's compute), alone or distilled with KD, RKD (distance, angle)
or listwise rank distillation, each added to the student's own multi-similarity loss.

    python benchmarks/settings_distill.py [--epochs 15] [--seed 0] [--choose-weights]
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


def fit(x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, epochs: int, seed: int,
        teacher: torch.Tensor | None = None, dist: str | None = None, weight: float = 0.0) -> torch.nn.Module:
    """Train ``model`` on (N, ...) inputs ``x`` with multi-similarity on labels ``y`` (0..C-1),
    plus ``weight`` x the distillation loss ``dist`` towards (N, D) ``teacher`` embeddings."""
    sup = SUPERVISIONS.create("partial_labels")
    sup.bind(y)
    ms, d = create_loss("multi_similarity"), create_loss(dist) if dist else None
    g = torch.Generator().manual_seed(seed)

    def step(e, idx):
        value = ms(e, y[idx]).value
        return value + weight * d(e, teacher[idx]).value if d is not None else value

    return train_head(model, x, epochs, lambda e, h: sup.batches(128, len(y) // 128, g), step)


def choose_weights(train, px_train, epochs: int, seed: int, losses: list[str], weights: list[float]) -> dict:
    """Per distillation loss, the weight with the best validation MAP@R: teacher and students
    trained on 80% of the training identities, scored on the other 20%."""
    ids = np.random.default_rng(seed).permutation(np.unique(train["y"].numpy()))
    val_ids = torch.from_numpy(ids[: len(ids) // 5])
    val = torch.isin(train["y"], val_ids)
    y_fit = torch.unique(train["y"][~val], return_inverse=True)[1]
    teacher = fit(train["x"][~val], y_fit, make_head(seed=seed), epochs, seed)
    t_emb = embed(teacher, train["x"][~val])
    val_set = {"x": px_train[val], "y": train["y"][val]}
    best = {}
    for dist in losses:
        scores = {w: retrieval(fit(px_train[~val], y_fit, student(seed), epochs, seed, t_emb, dist, w), val_set)["MAP@R"]
                  for w in weights}
        print(f"validation MAP@R {dist}: " + ", ".join(f"w={w}: {v:.1f}" for w, v in scores.items()))
        best[dist] = max(scores, key=scores.get)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--choose-weights", action="store_true",
                   help="pick each weight (except RKD angle's) among 0.1, 0.3, 1, 3 on held-out training identities")
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = emoji_features("train"), emoji_features("test")
    px_train, px_test = pixels(train["samples"]), pixels(test["samples"])
    weights = {"kd": 1.0, "rkd_distance": 1.0, "rkd_angle": 2.0, "rank_distillation": 1.0}
    if a.choose_weights:
        weights.update(choose_weights(train, px_train, a.epochs, a.seed, ["kd", "rkd_distance", "rank_distillation"],
                                      [0.1, 0.3, 1.0, 3.0]))
    t = Timer()
    teacher = fit(train["x"], train["y"], make_head(seed=a.seed), a.epochs, a.seed)
    rows = [{"model": "teacher (MobileNetV2 + head)", **retrieval(teacher, test), "seconds": t()}]
    t_emb = embed(teacher, train["x"])
    px_test_set = {"x": px_test, "y": test["y"]}
    names = {"kd": "+ KD", "rkd_distance": "+ RKD distance", "rkd_angle": "+ RKD angle", "rank_distillation": "+ rank distillation"}
    for dist in [None] + ([k for k in names if k != "rkd_angle"] if a.choose_weights else list(names)):
        t = Timer()
        s = fit(px_train, train["y"], student(a.seed), a.epochs, a.seed, t_emb, dist, weights.get(dist, 0.0))
        rows.append({"model": names[dist] + f" (weight {weights[dist]})" if dist else "student alone",
                     **retrieval(s, px_test_set), "seconds": t()})
    print_table(rows)


if __name__ == "__main__":
    main()
