"""Batch samplers: class-balanced PK batches for metric learning, optionally camera-aware (re-ID) or with the classes
in groups of a coarser label (hard negatives: near-miss classes meet in a batch)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Sequence

import numpy as np
import torch

from metricvision._registry import Registry

SAMPLERS: Registry["PKSampler"] = Registry("sampler")


class PKSampler(torch.utils.data.Sampler[List[int]]):
    """Yields batches of P classes x K samples (with replacement inside a class smaller than K).

    Deterministic given (seed, epoch): call ``set_epoch`` before iterating so a resumed run
    replays the same batches.

    Args:
        labels: (N,) labels; samples with label < 0 are never drawn.
        batch_size: P * K.
        k: samples per class.
        seed: base seed.
        batches_per_epoch: default len(labelled samples) // batch_size.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, k: int = 4, seed: int = 0, batches_per_epoch: int | None = None) -> None:
        if k < 1 or batch_size % k:
            raise ValueError(f"batch_size must be a positive multiple of k, got batch_size={batch_size}, k={k}")
        labels = np.asarray(labels)
        self.by_class: Dict[int, np.ndarray] = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])}
        self.p, self.k, self.seed, self.epoch = batch_size // k, k, seed, 0
        if len(self.by_class) < self.p:
            n = len(self.by_class)
            # the smallest K that divides the batch and leaves at most n classes per batch
            fit = next((kk for kk in range(-(-batch_size // max(n, 1)), batch_size + 1) if batch_size % kk == 0), batch_size)
            raise ValueError(f"a batch of {batch_size} = {self.p} classes x {k} needs {self.p} classes but the data has "
                             f"only {n}; set data.samples_per_class={fit} (or a smaller data.batch_size)")
        n = int((labels >= 0).sum())
        self.batches_per_epoch = batches_per_epoch or max(1, n // batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches are produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = np.array(sorted(self.by_class))
        order: List[int] = []
        for _ in range(self.batches_per_epoch):
            if len(order) < self.p:
                order += rng.permutation(classes).tolist()
            chosen, order = order[: self.p], order[self.p :]
            batch: List[int] = []
            for c in chosen:
                batch += self.draw(rng, c)
            yield batch

    def draw(self, rng: np.random.Generator, c: int) -> List[int]:
        """K dataset indices of class ``c`` (without replacement when it has K or more)."""
        idx = self.by_class[c]
        return rng.choice(idx, self.k, replace=len(idx) < self.k).tolist()


class CameraPKSampler(PKSampler):
    """PK batches whose K images of an identity come from as many different cameras as it has.

    An identity's images are dealt round-robin over its cameras (cameras and images in a
    random order), so the K drawn span min(K, its cameras) cameras; an identity with fewer
    than K images is completed with repeats. Deterministic given (seed, epoch).

    Args:
        labels: (N,) identities; < 0 never drawn.
        cameras: (N,) camera ids (-1 = unknown, one camera of its own).
        batch_size, k, seed, batches_per_epoch: as PKSampler.
    """

    def __init__(
        self, labels: Sequence[int], cameras: Sequence[int], batch_size: int, k: int = 4, seed: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        super().__init__(labels, batch_size, k, seed, batches_per_epoch)
        if len(cameras) != len(labels):
            raise ValueError(f"cameras must give one camera per sample: {len(cameras)} cameras for {len(labels)} labels")
        cams = np.asarray(cameras)
        self.by_camera: Dict[int, List[np.ndarray]] = {
            c: [idx[cams[idx] == cam] for cam in np.unique(cams[idx])] for c, idx in self.by_class.items()
        }

    def draw(self, rng: np.random.Generator, c: int) -> List[int]:
        """K indices of identity ``c``, one camera after the other."""
        groups = [rng.permutation(g) for g in self.by_camera[c]]
        order = rng.permutation(len(groups))
        dealt = [int(groups[g][i]) for i in range(max(len(g) for g in groups)) for g in order if i < len(groups[g])]
        if len(dealt) < self.k:
            dealt += rng.choice(self.by_class[c], self.k - len(dealt)).tolist()
        return dealt[: self.k]


class GroupPKSampler(PKSampler):
    """PK batches whose P classes come in groups of a coarser label (e.g. an emoji's subcategory), so that classes
    which look alike meet in a batch and a batch-mining loss sees them as negatives; a simplified form of the
    hierarchical triplet loss's sampling (Ge et al., ECCV 2018), with a given hierarchy instead of a learned one.

    Anchor classes are taken in turn from a shuffled order of all classes (each once per pass, as in PK), and each
    brings up to ``classes_per_group - 1`` other classes of its group, drawn at random (fewer where the group is
    smaller, or the batch is full); further anchors fill the batch. Deterministic given (seed, epoch).

    Args:
        labels: (N,) labels; < 0 never drawn.
        groups: (N,) each sample's group (any hashable); a class's group is that of its samples.
        batch_size, k, seed, batches_per_epoch: as PKSampler.
        classes_per_group: classes of one group drawn together (at most the batch's P; 1: no grouping).
    """

    def __init__(self, labels: Sequence[int], groups: Sequence[Any], batch_size: int, k: int = 4, seed: int = 0,
                 classes_per_group: int = 4, batches_per_epoch: int | None = None) -> None:
        super().__init__(labels, batch_size, k, seed, batches_per_epoch)
        if classes_per_group < 1:
            raise ValueError(f"classes_per_group must be >= 1, got {classes_per_group}")
        if len(groups) != len(labels):
            raise ValueError(f"groups must give one group per sample: {len(groups)} groups for {len(labels)} labels")
        members: Dict[Any, List[int]] = {}
        for c, idx in self.by_class.items():
            names = {groups[i] for i in idx}
            if len(names) > 1:
                raise ValueError(f"class {c} has samples in several groups {sorted(map(str, names))}; a class needs one")
            members.setdefault(names.pop(), []).append(c)
        self.group_of = {c: g for g, cs in members.items() for c in cs}
        self.members = {g: np.array(sorted(cs)) for g, cs in members.items()}
        self.classes_per_group = classes_per_group

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        classes = np.array(sorted(self.by_class))
        order: List[int] = []
        for _ in range(self.batches_per_epoch):
            chosen: List[int] = []
            while len(chosen) < self.p:
                if not order:
                    order = rng.permutation(classes).tolist()
                anchor = order.pop(0)
                if anchor in chosen:
                    continue
                mates = [int(c) for c in rng.permutation(self.members[self.group_of[anchor]]) if c != anchor and c not in chosen]
                chosen += [anchor] + mates[: min(self.classes_per_group, self.p - len(chosen)) - 1]
            yield [i for c in chosen for i in self.draw(rng, c)]


@SAMPLERS.register("pk")
def pk_sampler(samples: Sequence[Any], batch_size: int, k: int = 4, seed: int = 0) -> PKSampler:
    """PK batches over the samples' labels."""
    return PKSampler([s.label for s in samples], batch_size, k, seed)


@SAMPLERS.register("camera_pk")
def camera_pk_sampler(samples: Sequence[Any], batch_size: int, k: int = 4, seed: int = 0) -> CameraPKSampler:
    """PK batches over the samples' labels, each identity's K images from different cameras where possible."""
    return CameraPKSampler([s.label for s in samples], [s.camera for s in samples], batch_size, k, seed)


@SAMPLERS.register("group_pk")
def group_pk_sampler(samples: Sequence[Any], batch_size: int, k: int = 4, seed: int = 0, key: str = "subcategory",
                     classes_per_group: int = 4) -> GroupPKSampler:
    """PK batches with the classes in groups of ``classes_per_group`` sharing the samples' ``meta[key]``."""
    missing = next((s for s in samples if s.label >= 0 and key not in s.meta), None)
    if missing is not None:
        raise ValueError(f"sampler group_pk groups classes by meta[{key!r}], but sample {missing.image!r} has no such key "
                         f"(its meta keys: {sorted(missing.meta)})")
    return GroupPKSampler([s.label for s in samples], [s.meta.get(key) for s in samples], batch_size, k, seed,
                          classes_per_group)
