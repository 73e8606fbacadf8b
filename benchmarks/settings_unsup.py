"""Unsupervised: pretrained MobileNetV2 vs + mining on manifolds (no labels), on frozen
features of the emoji training images, anchors from the stationary distribution (the paper) or at
random (its ablation); retrieval on unseen identities.

    python benchmarks/settings_unsup.py [--epochs 10] [--seed 0]
"""
from __future__ import annotations

import argparse
import math

import torch

from metricvision.losses import create_loss
from metricvision.supervision import SUPERVISIONS
from metricvision.supervision.manifold import tuple_labels
from settings_common import Timer, embed, emoji_features, make_head, print_table, retrieval, train_head


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = emoji_features("train"), emoji_features("test")
    rows = [{"setting": "pretrained (GeM features)", **retrieval(None, test), "seconds": 0.0}]
    for anchors in ("stationary", "random"):
        t = Timer()
        sup = SUPERVISIONS.create("manifold_mining", num_anchors=2048, k=10, graph_k=10, seed=a.seed, anchor_selection=anchors)
        sup.bind(train["y"])
        loss = create_loss("contrastive")
        g = torch.Generator().manual_seed(a.seed)
        used = []

        def batches(epoch, head):
            used.append(sup.refresh(embed(head, train["x"]))["anchors_with_tuples"])
            return sup.batches(96, math.ceil(used[-1] / 32), g)  # about one tuple per anchor

        head = train_head(make_head(seed=a.seed), train["x"], a.epochs, batches,
                          lambda e, idx: loss(e, tuple_labels(len(idx))).value, lr=3e-4)
        rows.append({"setting": f"+ mining on manifolds, {anchors} anchors ({min(used):.0f}-{max(used):.0f} with tuples)",
                     **retrieval(head, test), "seconds": t()})
    print_table(rows)


if __name__ == "__main__":
    main()
