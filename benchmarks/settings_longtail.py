"""Long-tail (emoji subcategories, Pareto split) and open-set (unseen emoji identities).

    python benchmarks/settings_longtail.py [--epochs 30] [--seed 0]

Long tail: the class is the emoji subcategory (99 of them, e.g. "face-smiling", "flag");
the training renderings of the training identities are cut to a Pareto profile (largest
subcategories first, 300 down to 2 images); the test set is every rendering of the unseen
test identities (a subcategory must be recognized on new emoji). Frozen MobileNetV2 features,
a trainable head (linear 1280 -> 128, L2-normalized) and a cosine classifier (scale 16)
trained with cross-entropy on batches drawn by instance (uniform over images) or class-balanced
(classes uniform, 4 images each) sampling; many (>= 100 training images) / medium / few (<= 20)
accuracy by ``metricvision.metrics.shot_accuracy``. Reference: nearest class mean on the frozen features.
The simplified OLTR meta-embedding (loss ``oltr_meta_embedding``, centroids of the head's embeddings
refreshed every epoch as supervision "oltr" does) classifies with its cosine-norm classifier.

Open set: the known classes are the 956 training identities; half of each identity's
renderings (at least one) form the gallery (class means), the rest are known queries; the
renderings of the 955 unseen test identities are the unknown queries. A query takes the
identity of the nearest class mean (cosine), or is rejected as unknown below a similarity
threshold fitted (max F-measure) on a validation half of the queries (split by identity);
F-measure and AUROC (max similarity, known vs unknown) on the other half. Embeddings: the
frozen features, and a metric head trained (multi-similarity) on the gallery images only.
"""
from __future__ import annotations

import argparse
from typing import Dict

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metricvision.losses import create_loss
from metricvision.metrics import open_set_f_measure, open_set_scores, shot_accuracy
from metricvision.metrics.classify import class_means, ncm_predict, ncm_scores
from metricvision.supervision import SUPERVISIONS, weighted_pk_batches
from metricvision.supervision.fewshot import CosineClassifier
from metricvision.supervision.longtail import fit_threshold, long_tail_subset, reject_below
from metricvision.supervision.oltr import class_centroids
from settings_common import Timer, embed, emoji_features, make_head, print_table, train_head


def subcategory_labels(*splits: Dict[str, object]) -> list[np.ndarray]:
    """(N,) int subcategory of each sample of each split, numbered over all splits."""
    names = sorted({s.meta["subcategory"] for sp in splits for s in sp["samples"]})
    code = {n: i for i, n in enumerate(names)}
    return [np.array([code[s.meta["subcategory"]] for s in sp["samples"]]) for sp in splits]


def long_tail(train, test, epochs: int, seed: int) -> list[dict]:
    ytr, yte = subcategory_labels(train, test)
    keep = long_tail_subset(ytr, max_count=300, min_count=2, seed=seed, order="size")
    x, y = train["x"][keep], torch.from_numpy(ytr[keep])
    tested = np.isin(yte, np.unique(y.numpy()))
    xt, yt = test["x"][torch.from_numpy(tested)], yte[tested]
    counts = np.bincount(y.numpy())
    counts = counts[counts > 0]
    print(f"long tail: {len(keep)} training images of {len(counts)} subcategories ({counts.max()} .. {counts.min()}), "
          f"{(counts >= 100).sum()} many / {((counts > 20) & (counts < 100)).sum()} medium / {(counts <= 20).sum()} few; "
          f"{len(yt)} test images of unseen identities")
    rows = [{"setting": "NCM on frozen features", **pct(shot_accuracy(ncm_predict(embed(None, x), y.numpy(), embed(None, xt)), yt, y.numpy())), "seconds": 0.0}]
    n_batches = len(y) // 128
    for sampling in ("instance", "class-balanced"):
        t = Timer()
        head, clf = make_head(seed=seed), CosineClassifier(int(y.max()) + 1, 128, scale=16.0)
        g = torch.Generator().manual_seed(seed)

        def batches(epoch, _head):
            if sampling == "instance":
                return torch.randperm(len(y), generator=g)[: n_batches * 128].view(n_batches, 128).tolist()
            return weighted_pk_batches(y, torch.ones(len(y)), 128, 4, n_batches, g)

        model = torch.nn.Sequential(head, clf)
        train_head(model, x, epochs, batches, lambda logits, idx: torch.nn.functional.cross_entropy(logits, y[idx]))
        with torch.no_grad():
            pred = model(xt).argmax(1).numpy()
        rows.append({"setting": f"cosine classifier, {sampling} sampling", **pct(shot_accuracy(pred, yt, y.numpy())), "seconds": t()})
    t = Timer()
    head, meta = make_head(seed=seed), create_loss("oltr_meta_embedding", num_classes=int(y.max()) + 1, embedding_dim=128)
    g = torch.Generator().manual_seed(seed)

    def balanced_with_memory(epoch, h):
        meta.set_centroids(class_centroids(embed(h, x), y, int(y.max()) + 1))
        return weighted_pk_batches(y, torch.ones(len(y)), 128, 4, n_batches, g)

    train_head(_HeadAndMeta(head, meta), x, epochs, balanced_with_memory, lambda e, idx: meta(e, y[idx]).value)
    pred = meta.predict(embed(head, xt)).argmax(1).numpy()
    rows.append({"setting": "OLTR meta-embedding (simplified), class-balanced", **pct(shot_accuracy(pred, yt, y.numpy())), "seconds": t()})
    return rows


class _HeadAndMeta(torch.nn.Module):
    """The head's forward; the meta-embedding's parameters train beside it."""

    def __init__(self, head: torch.nn.Module, meta: torch.nn.Module) -> None:
        super().__init__()
        self.head, self.meta = head, meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def pct(scores: Dict[str, float]) -> Dict[str, float]:
    return {k: 100 * v for k, v in scores.items()}


def open_set(train, test, epochs: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    ytr = train["y"].numpy()
    gallery, known = [], []
    for c in np.unique(ytr):
        idx = rng.permutation(np.flatnonzero(ytr == c))
        half = max(1, len(idx) // 2)
        gallery += idx[:half].tolist()
        known += idx[half:].tolist()
    gallery, known = np.array(gallery), np.array(known)
    unknown_ids = rng.permutation(np.unique(test["y"].numpy()))
    val_unknown = np.isin(test["y"].numpy(), unknown_ids[: len(unknown_ids) // 2])
    val_known = np.isin(ytr[known], rng.permutation(np.unique(ytr))[: len(np.unique(ytr)) // 2])
    xq = torch.cat([train["x"][known], test["x"]])
    yq = np.concatenate([ytr[known], np.full(len(test["y"]), -1)])
    val = np.concatenate([val_known, val_unknown])
    print(f"open set: {len(gallery)} gallery images of {len(np.unique(ytr))} known identities; "
          f"{len(known)} known + {len(test['y'])} unknown queries, half for the threshold")
    sup = SUPERVISIONS.create("partial_labels")
    sup.bind(np.where(np.isin(np.arange(len(ytr)), gallery), ytr, -1))
    loss = create_loss("multi_similarity")
    g = torch.Generator().manual_seed(seed)
    t = Timer()
    head = train_head(make_head(seed=seed), train["x"], epochs, lambda e, h: sup.batches(128, len(gallery) // 128, g),
                      lambda e, idx: loss(e, sup.lookup(idx).labels).value)
    rows = []
    for name, h, secs in (("frozen features", None, 0.0), ("metric head on the gallery", head, t())):
        classes, means = class_means(embed(h, train["x"][gallery]), ytr[gallery])
        scores = ncm_scores(embed(h, xq), means)
        val_t = torch.from_numpy(val)
        threshold = fit_threshold(scores[val_t], classes, yq[val])
        ev = ~val
        pred = reject_below(scores[~val_t], classes, threshold)
        closed, known_ev = reject_below(scores[~val_t], classes, -np.inf), yq[ev] >= 0
        oltr = open_set_scores(scores[~val_t], classes, yq[ev], threshold=0.1, temperature=0.05)
        rows.append({"embedding": name, "threshold": threshold, "F-measure": 100 * open_set_f_measure(pred, yq[ev]),
                     "AUROC": 100 * roc_auc_score(yq[ev] >= 0, scores[~val_t].max(1).values.numpy()),
                     "closed-set acc": 100 * float((closed[known_ev] == yq[ev][known_ev]).mean()), "F (softmax conf. 0.1)": 100 * oltr["f_measure"], "seconds": secs})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    train, test = emoji_features("train"), emoji_features("test")
    print_table(long_tail(train, test, a.epochs, a.seed))
    print_table(open_set(train, test, 15, a.seed))


if __name__ == "__main__":
    main()
