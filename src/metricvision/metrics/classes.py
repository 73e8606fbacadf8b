"""Class-level protocols: few-shot episodes, long-tail shot groups, open set, class-incremental.

- few-shot: N-way K-shot episodes scored by prototypes (Snell et al. 2017), accuracy mean
  +- 1.96 std / sqrt(episodes), as the miniImageNet literature reports it; ``fewshot_grid`` runs
  several (N, K) on one embedding (Omniglot's 5 / 20-way, 1 / 5-shot).
- long-tail: OLTR's ``shot_acc`` (Liu et al. 2019, github.com/zhmiao/OpenLongTailRecognition-OLTR,
  utils.py): per-class accuracy averaged within many / medium / few-shot groups; groups are
  many >= 100 and few <= 20 training images, as the issue specifies (OLTR's code uses > 100 and < 20).
- open set: OLTR's ``F_measure(openset=True)`` as fixed in January 2020, with rejection of
  low-confidence predictions (softmax over class-mean similarities below a threshold ->
  unknown), and AUROC of the confidence for known vs unknown.
- class-incremental: average incremental accuracy (Rebuffi et al. 2017) and average
  forgetting (Chaudhry et al. 2018) from the task accuracy matrix.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from metricvision.metrics.classify import class_means, ncm_predict, ncm_scores
from metricvision.metrics.protocols import PROTOCOLS, ArrayLike, EmbedFn, Splits, as_float_tensors, embed, labels_of, require_splits


def few_shot_accuracy(
    embeddings: ArrayLike, labels: np.ndarray, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
    episodes: int = 600, seed: int = 0,
) -> Dict[str, float]:
    """Prototype accuracy over random episodes: mean, 95% interval half-width, episodes.

    Args:
        embeddings: (N, D) float32 / float64 embeddings of the evaluation classes, finite.
        labels: (N,) labels; classes with fewer than k_shot + n_query items are not drawn.
    """
    (embeddings,) = as_float_tensors(embeddings=embeddings)
    classes, counts = np.unique(labels, return_counts=True)
    usable = classes[counts >= k_shot + n_query]
    if len(usable) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot with {n_query} queries needs {n_way} classes of >= {k_shot + n_query} items, found {len(usable)}")
    members = {c: np.flatnonzero(labels == c) for c in usable}
    rng = np.random.default_rng(seed)
    accs = np.empty(episodes)
    for e in range(episodes):
        picked = [rng.permutation(members[c])[: k_shot + n_query] for c in rng.choice(usable, n_way, replace=False)]
        idx = torch.as_tensor(np.stack(picked))  # (n_way, k_shot + n_query)
        support, query = embeddings[idx[:, :k_shot]], embeddings[idx[:, k_shot:]].reshape(-1, embeddings.shape[1])
        prototypes = support.mean(1)
        pred = torch.cdist(query, prototypes).argmin(1)
        accs[e] = int((pred == torch.arange(n_way).repeat_interleave(n_query)).sum()) / len(pred)  # float64, not float32
    return {"accuracy": float(accs.mean()), "ci95": float(1.96 * accs.std() / np.sqrt(episodes)), "episodes": float(episodes)}


def shot_accuracy(pred: np.ndarray, labels: np.ndarray, train_labels: np.ndarray, many: int = 100, few: int = 20) -> Dict[str, float]:
    """Overall accuracy, per-class accuracy averaged within many / medium / few-shot groups, and where the
    few-shot classes' errors go: ``few_errors_to_{many,medium,few}``, the shares of the misclassified
    samples of few-shot classes predicted as a class of each group (head bias shows as ``few_errors_to_many``).

    A group without classes (or errors) reports NaN.
    """
    train_classes, train_counts = np.unique(train_labels, return_counts=True)
    count_of = dict(zip(train_classes.tolist(), train_counts.tolist()))

    def group(c: int) -> str:
        n = count_of.get(int(c), 0)
        return "many" if n >= many else "few" if n <= few else "medium"

    groups: Dict[str, List[float]] = {"many": [], "medium": [], "few": []}
    for c in np.unique(labels):
        groups[group(c)].append(float((pred[labels == c] == c).mean()))
    out = {"accuracy": float((pred == labels).mean())}
    out.update({f"{g}_shot": float(np.mean(v)) if v else float("nan") for g, v in groups.items()})
    wrong = [group(p) for p, y in zip(pred, labels) if p != y and group(y) == "few"]
    out.update({f"few_errors_to_{g}": wrong.count(g) / len(wrong) if wrong else float("nan") for g in groups})
    return out


def open_set_f_measure(pred: np.ndarray, labels: np.ndarray) -> float:
    """OLTR's open-set F-measure, current definition; label and prediction -1 mean "unknown".

    Over (N,) predictions: TP = known samples classified right, FP = known samples not
    classified right (a wrong class or rejected), FN = unknown samples not rejected. This is
    ``F_measure(openset=True)`` since OLTR's commit "debug in f measurement calculation"
    (January 2020), with which OLTR republished its numbers; the earlier code did not count a
    rejected known sample as a false positive, which rewarded rejecting everything uncertain.
    """
    known = labels != -1
    tp = float(((pred == labels) & known).sum())
    fp = float(((pred != labels) & known).sum())
    fn = float(((pred != labels) & ~known).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall + 1e-12)


def open_set_scores(scores: ArrayLike, classes: np.ndarray, labels: np.ndarray, threshold: float = 0.1, temperature: float = 0.1) -> Dict[str, float]:
    """F-measure with rejection and AUROC (known = positive) from (N, C) class similarities.

    ``auroc`` ranks items by the softmax confidence (OLTR's score), ``auroc_max_score`` by the
    best raw score (the similarity to the nearest class mean; a classifier's largest logit). They
    can disagree on either side of 0.5: an unknown class that resembles exactly one known class
    (Fashion-MNIST's sneakers, only near sandals) gets a confident softmax while known classes
    that resemble each other (pullover, coat) do not, so ``auroc`` falls below 0.5 although
    the unknown items are farther from every class mean (``auroc_max_score`` above 0.5).

    Args:
        scores: (N, C) float32 / float64 similarities to the known classes, finite.
        classes: (C,) class labels of the columns.
        labels: (N,) true labels, -1 for unknown items.
        threshold: reject (predict -1) when the softmax confidence is below it (OLTR: 0.1).
        temperature: softmax temperature over the similarities.
    """
    (scores,) = as_float_tensors(scores=scores)
    probs = torch.softmax(scores / temperature, dim=1)
    conf, arg = probs.max(1)
    pred = np.where(conf.numpy() < threshold, -1, classes[arg.numpy()])
    known = labels != -1
    out = {"f_measure": open_set_f_measure(pred, labels), "closed_accuracy": float((pred[known] == labels[known]).mean())}
    both = known.any() and (~known).any()
    out["auroc"] = float(roc_auc_score(known, conf.numpy())) if both else float("nan")
    out["auroc_max_score"] = float(roc_auc_score(known, scores.max(1).values.numpy())) if both else float("nan")
    return out


def incremental_scores(accuracy: np.ndarray, seen_accuracy: Sequence[float]) -> Dict[str, float]:
    """Average incremental accuracy and average forgetting.

    Args:
        accuracy: (T, T) accuracy on task j's test data after step t (lower triangle used).
        seen_accuracy: (T,) accuracy on all classes seen so far after each step.
    """
    t = accuracy.shape[0]
    out = {"average_incremental_accuracy": float(np.mean(seen_accuracy)), "final_accuracy": float(seen_accuracy[-1])}
    if t > 1:
        best = np.array([accuracy[j:t - 1, j].max() for j in range(t - 1)])
        out["forgetting"] = float((best - accuracy[t - 1, : t - 1]).mean())
    return out


@PROTOCOLS.register("fewshot")
@PROTOCOLS.register("miniimagenet")
def few_shot(embed_fn: EmbedFn, splits: Splits, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
             episodes: int = 600, seed: int = 0, split: str = "test") -> Dict[str, float]:
    """N-way K-shot episodes on the ``split`` split (miniImageNet "test", or any dataset)."""
    require_splits(splits, [split], "fewshot")
    return few_shot_accuracy(embed(embed_fn, splits[split]), labels_of(splits[split]), n_way, k_shot, n_query, episodes, seed)


@PROTOCOLS.register("fewshot_grid")
def few_shot_grid(embed_fn: EmbedFn, splits: Splits, ways: Sequence[int] = (5, 20), shots: Sequence[int] = (1, 5),
                  n_query: int = 15, episodes: int = 600, seed: int = 0, split: str = "test") -> Dict[str, float]:
    """Every N-way K-shot setting of ``ways`` x ``shots`` (Omniglot's 5 / 20-way, 1 / 5-shot) on one
    embedding of the ``split`` split: "{N}way_{K}shot" (accuracy) and "{N}way_{K}shot_ci95" (95% interval)."""
    require_splits(splits, [split], "fewshot_grid")
    x, y = embed(embed_fn, splits[split]), labels_of(splits[split])
    out: Dict[str, float] = {}
    for n in ways:
        for k in shots:
            r = few_shot_accuracy(x, y, int(n), int(k), n_query, episodes, seed)
            out[f"{n}way_{k}shot"], out[f"{n}way_{k}shot_ci95"] = r["accuracy"], r["ci95"]
    out["episodes"] = float(episodes)
    return out


@PROTOCOLS.register("longtail")
@PROTOCOLS.register("imagenet_lt")
@PROTOCOLS.register("places_lt")
def long_tail(embed_fn: EmbedFn, splits: Splits, many: int = 100, few: int = 20) -> Dict[str, float]:
    """Nearest-class-mean accuracy on "test" by shot group of the "train" class sizes."""
    require_splits(splits, ["train", "test"], "longtail")
    train_labels, test_labels = labels_of(splits["train"]), labels_of(splits["test"])
    pred = ncm_predict(embed(embed_fn, splits["train"]), train_labels, embed(embed_fn, splits["test"]))
    return shot_accuracy(pred, test_labels, train_labels, many, few)


@PROTOCOLS.register("openset")
def open_set(embed_fn: EmbedFn, splits: Splits, threshold: float = 0.1, temperature: float = 0.1) -> Dict[str, float]:
    """OLTR open set: class means from "train"; "test" (known) and "open" (unknown) are classified."""
    require_splits(splits, ["train", "test", "open"], "openset")
    classes, means = class_means(embed(embed_fn, splits["train"]), labels_of(splits["train"]))
    samples = splits["test"] + splits["open"]
    labels = np.concatenate([labels_of(splits["test"]), np.full(len(splits["open"]), -1)])
    return open_set_scores(ncm_scores(embed(embed_fn, samples), means), classes, labels, threshold, temperature)


@PROTOCOLS.register("incremental")
def class_incremental(embed_fn: Union[EmbedFn, Sequence[EmbedFn]], splits: Splits, num_tasks: int = 0) -> Dict[str, float]:
    """Class-incremental evaluation: classes in sorted order split into tasks; step t uses the t-th
    embed function (the model after learning task t) with nearest class means of the seen classes.

    Args:
        embed_fn: one embed function per step (a single one evaluates only the last step).
        num_tasks: number of tasks; default the number of embed functions.
    """
    require_splits(splits, ["train", "test"], "incremental")
    fns: List[Callable] = list(embed_fn) if isinstance(embed_fn, (list, tuple)) else [embed_fn]
    tasks = num_tasks or len(fns)
    if tasks < len(fns):
        raise ValueError(f"num_tasks ({tasks}) must be >= the number of embed functions ({len(fns)})")
    train_y, test_y = labels_of(splits["train"]), labels_of(splits["test"])
    task_of = {c: i for i, part in enumerate(np.array_split(np.unique(train_y), tasks)) for c in part.tolist()}
    train_task = np.array([task_of[int(c)] for c in train_y])
    test_task = np.array([task_of.get(int(c), -1) for c in test_y])
    first = tasks - len(fns)  # a single function is the model after the last task
    steps = len(fns)
    accuracy = np.full((steps, steps), np.nan)
    seen = []
    for t, fn in enumerate(fns):
        step_task = first + t
        tr, te = train_task <= step_task, (test_task <= step_task) & (test_task >= 0)
        pred = ncm_predict(embed(fn, [s for s, m in zip(splits["train"], tr) if m]), train_y[tr],
                           embed(fn, [s for s, m in zip(splits["test"], te) if m]))
        correct = pred == test_y[te]
        seen.append(float(correct.mean()))
        for j in range(t + 1):
            accuracy[t, j] = float(correct[test_task[te] == first + j].mean())
    return incremental_scores(accuracy, seen)
