"""Semi-supervised: labelled-only vs + label propagation vs fully supervised, on frozen
MobileNetV2 features of the emoji training identities; retrieval on unseen identities.

    python benchmarks/settings_semi.py [--epochs 15] [--seed 0] [--refresh-every 1]

Every training identity keeps the label of 10% / 20% of its samples, at least one
(label_mode=per_class): 2-sample identities keep 1, 12-sample ones 1 / 2, 52-sample ones 5 / 10.
"""
from __future__ import annotations

import argparse

import torch

from metricvision.losses import create_loss
from metricvision.supervision import SUPERVISIONS
from settings_common import Timer, embed, emoji_features, make_head, print_table, retrieval, train_head


def run(sup, train, test, epochs: int, seed: int) -> dict:
    loss = create_loss("multi_similarity")
    sup.bind(train["y"])
    n_batches = len(train["y"]) // 128
    g = torch.Generator().manual_seed(seed)

    def batches(epoch, head):
        if sup.refresh_due(epoch):
            sup.refresh(embed(head, train["x"]))
        return sup.batches(128, n_batches, g)

    head = train_head(make_head(seed=seed), train["x"], epochs, batches,
                      lambda e, idx: loss(e, sup.lookup(idx).labels).value)
    return retrieval(head, test)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refresh-every", type=int, default=1, help="epochs between label propagations")
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = emoji_features("train"), emoji_features("test")
    rows = [{"setting": "pretrained, no training", **retrieval(None, test), "seconds": 0.0}]
    for frac in (0.1, 0.2):
        common = dict(label_fraction=frac, label_seed=a.seed, label_mode="per_class")
        propagation = SUPERVISIONS.create("label_propagation", k=50, class_balance=False, refresh_every=a.refresh_every, **common)
        for name, sup in [
            (f"{int(frac * 100)}% labels, labelled only", SUPERVISIONS.create("partial_labels", **common)),
            (f"{int(frac * 100)}% labels + propagation", propagation),
        ]:
            t = Timer()
            rows.append({"setting": name, **run(sup, train, test, a.epochs, a.seed), "seconds": t()})
    t = Timer()
    rows.append({"setting": "100% labels", **run(SUPERVISIONS.create("partial_labels"), train, test, a.epochs, a.seed), "seconds": t()})
    print_table(rows)


if __name__ == "__main__":
    main()
