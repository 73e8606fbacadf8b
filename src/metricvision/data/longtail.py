"""Long-tailed splits: a Pareto profile of class sizes, and the built-in emoji long-tail / open-set
dataset (classes = emoji subcategories) that the long-tail benchmark and recipes share."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from metricvision.data.emoji import load_emoji
from metricvision.data.registry import register_dataset
from metricvision.data.sample import Sample

LT_ORDERS = ("random", "size")


def pareto_counts(num_classes: int, max_count: int, min_count: int = 1, alpha: float = 6.0) -> np.ndarray:
    """Per-class sample counts with a Pareto (Lomax) profile, largest first.

    n_i = max_count * (1 + s r_i) ^ -alpha with r_i = i / (C - 1) and s chosen so that the
    last class gets ``min_count`` (ImageNet-LT draws its counts from a Pareto with alpha = 6).
    """
    if num_classes < 1 or not 1 <= min_count <= max_count:
        raise ValueError(f"need num_classes >= 1 and 1 <= min_count <= max_count, got {num_classes}, {min_count}, {max_count}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rank = np.arange(num_classes) / max(1, num_classes - 1)
    s = (max_count / min_count) ** (1.0 / alpha) - 1.0
    return np.maximum(min_count, np.round(max_count * (1.0 + s * rank) ** -alpha)).astype(np.int64)


def long_tail_subset(
    labels: Sequence[int] | np.ndarray, max_count: int, min_count: int = 1, alpha: float = 6.0, seed: int = 0, order: str = "random"
) -> np.ndarray:
    """Indices of a long-tailed subset: the classes, in ``order``, get ``pareto_counts`` samples
    (fewer when a class has fewer).

    Args:
        order: "random" (ImageNet-LT) or "size" (largest classes first, ties at random: keeps
            the profile when the classes are themselves unequal).
    """
    if order not in LT_ORDERS:
        raise ValueError(f"order must be one of {LT_ORDERS}, got '{order}'")
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y[y >= 0]))
    if order == "size":
        classes = classes[np.argsort([-np.sum(y == c) for c in classes], kind="stable")]
    counts = pareto_counts(len(classes), max_count, min_count, alpha)
    keep = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in zip(classes, counts)]
    return np.sort(np.concatenate(keep))


@register_dataset(
    "emoji_lt", splits=("train", "test", "open"), protocol="longtail", class_disjoint=False,
    licence="Noto Emoji: Apache-2.0; Twemoji: CC-BY 4.0 (see NOTICE)",
    description="built-in: emoji subcategories; training renderings cut to a Pareto profile (300 down to 2), "
                "test = unseen identities' renderings; option open_fraction: subcategories held out as the open split",
)
def emoji_lt_splits(path: Optional[str] = None, max_count: int = 300, min_count: int = 2, alpha: float = 6.0,
                    open_fraction: float = 0.0, seed: int = 0) -> dict:
    """{"train", "test", "open"}: labels are subcategory numbers (sorted names), open samples -1.

    The training renderings of the training identities of the known subcategories are cut by
    ``long_tail_subset`` (largest first); "test" holds every rendering of the unseen test
    identities in a kept subcategory, "open" those of the ``open_fraction`` of subcategories
    (drawn with ``seed``) never trained on. With ``open_fraction=0`` (no open split) the training
    split is that of benchmarks/settings_longtail.py.
    """
    if not 0 <= open_fraction < 1:
        raise ValueError(f"open_fraction must be in [0, 1), got {open_fraction}")
    train, test = load_emoji("train", path), load_emoji("test", path)
    names = sorted({s.meta["subcategory"] for s in train + test})
    code = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng(seed)
    unknown = set(rng.choice(names, int(round(open_fraction * len(names))), replace=False).tolist())

    def as_class(s: Sample, split: str) -> Sample:
        label = -1 if s.meta["subcategory"] in unknown else code[s.meta["subcategory"]]
        return Sample(**{**s.__dict__, "label": label, "split": split})

    known = [as_class(s, "train") for s in train if s.meta["subcategory"] not in unknown]
    keep = long_tail_subset([s.label for s in known], max_count, min_count, alpha, seed, order="size")
    kept = [known[i] for i in keep]
    classes = {s.label for s in kept}
    tests = [as_class(s, "test") for s in test]
    return {"train": kept, "test": [s for s in tests if s.label in classes], "open": [s for s in tests if s.label < 0]}
