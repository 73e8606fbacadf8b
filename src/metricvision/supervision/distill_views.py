"""Augmented views shared by a distillation teacher and its student at two resolutions.

View ``k`` of training image ``i`` is the training augmentation (``TrainAugment``: colour jitter,
greyscale, random resized crop, rotation) with random numbers drawn from a generator seeded by
(seed, i, k) alone. The crop box is chosen on the source image and the angle does not depend on the
output size, so the same view rendered at the teacher's resolution and at the student's shows the same
content. This is exact for a source that no size reduces first (``TrainAugment.reduce_above``: every
emoji, icon or glyph); simplified for large photographs: the source is decoded as the student's augmentation
needs it, and a crop drawn on a copy reduced by another factor, or ``randint`` over another range, can give the
two resolutions different views. The teacher embeds its renderings of K views per image once (cached like the
clean-image embeddings); each epoch the student trains on one of the K views of each image, rendered at its own
resolution, and is pulled onto the teacher's embedding of that very view. With ``mixup`` p > 0, a fraction p
of the views (drawn per view from its own seeded generator) blend in, with a weight drawn from U(0, 0.5), view
``k`` of another training image drawn the same way: the teacher embeds the same blend, so the student matches the
teacher on images between the training images too (a simplified form of the mixup in Beyer et al. 2022's "function
matching"); the label stays the dominant image's.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from metricvision._atomic import atomic_write
from metricvision.data.sample import SampleDataset
from metricvision.data.transforms import TrainAugment, as_float_images

VIEWS_CACHE = "teacher_view_embeddings.pt"


class SeededDraws:
    """The ``Draws`` of one view: uniform numbers from a private generator seeded by ``seed``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def rand(self) -> float:
        return self.rng.random()

    def uniform(self, lo: float, hi: float) -> float:
        return self.rng.uniform(lo, hi)

    def randint(self, n: int) -> int:
        return self.rng.randrange(n)

    def randperm(self, n: int) -> List[int]:
        p = list(range(n))
        self.rng.shuffle(p)
        return p


def view_seed(seed: int, index: int, view: int) -> int:
    """The generator seed of view ``view`` of training image ``index`` in a run of seed ``seed``."""
    return (seed * 1_000_003 + index) * 1_009 + view


def render_view(augment: TrainAugment, base: SampleDataset, index: int, view: int, seed: int,
                mixup: float = 0.0) -> torch.Tensor:
    """(3, H, W) uint8: view ``view`` of image ``index`` of ``base`` at ``augment``'s size; with probability
    ``mixup`` (a draw of the view's own generator) blended with view ``view`` of another image."""
    out = augment.apply(base.image(index), SeededDraws(view_seed(seed, index, view)))
    if mixup <= 0:
        return out
    mix = random.Random(-1 - view_seed(seed, index, view))  # apart from the augmentation's draws
    if mix.random() >= mixup:
        return out
    other, weight = mix.randrange(len(base)), mix.uniform(0.0, 0.5)
    partner = augment.apply(base.image(other), SeededDraws(view_seed(seed, other, view)))
    return ((1 - weight) * out.float() + weight * partner.float()).round().to(torch.uint8)


class ViewDataset(torch.utils.data.Dataset):
    """The training set seen through K fixed views per image: item ``i`` is view ``view_of[i]`` of image ``i``.

    Args:
        base: the training samples (its own transform is not used).
        augment: the augmentation rendering the views at the student's resolution.
        views: K, the number of views per image.
        seed: the run's seed (which views exist).
        mixup: the fraction of views blended with another image's (``render_view``).

    Attributes:
        view_of: (N,) int64, the view each image shows this epoch (``choose``).
    """

    def __init__(self, base: SampleDataset, augment: TrainAugment, views: int, seed: int, mixup: float = 0.0) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if not 0 <= mixup <= 1:
            raise ValueError(f"mixup must be in [0, 1], got {mixup}")
        self.base, self.augment, self.views, self.seed, self.mixup = base, augment, views, seed, mixup
        self.view_of = torch.zeros(len(base), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.base)

    def choose(self, epoch: int) -> None:
        """Draw the view of every image for ``epoch`` (a function of seed and epoch only)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self.view_of = torch.randint(self.views, (len(self.base),), generator=g)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return render_view(self.augment, self.base, i, int(self.view_of[i]), self.seed, self.mixup), self.base.samples[i].label

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, int]]:
        return [self[i] for i in indices]


def cached_teacher_embeddings(teacher_run: str | Path, key: Dict[str, Any], cache: Path, device: torch.device,
                              embed: Callable[[Any, torch.nn.Module], torch.Tensor]) -> torch.Tensor:
    """The teacher's embeddings read from ``cache`` when it was written for this teacher and ``key``, else
    ``embed(recipe, model)`` of the teacher run, written there (atomically)."""
    key = {"teacher": str(Path(teacher_run).resolve()), **key}
    if cache.exists():
        stored = torch.load(cache, map_location="cpu")
        if stored.get("key") == key:
            return stored["embeddings"]
    from metricvision.engine.runs import load_run  # the teacher is a run folder: the engine reads it back

    recipe, model = load_run(teacher_run)
    emb = embed(recipe, model.to(device))
    with atomic_write(cache) as f:
        torch.save({"key": key, "embeddings": emb}, f)
    return emb


def teacher_view_embeddings(teacher_run: str | Path, base: SampleDataset, augment_params: Dict[str, Any], views: int,
                            seed: int, device: torch.device, cache: Path, batch_size: int = 256,
                            mixup: float = 0.0) -> torch.Tensor:
    """(N, K, D_t) embeddings by the teacher of ``teacher_run`` of K views of each image of ``base``, rendered at
    the teacher's resolution with ``TrainAugment(**augment_params)`` (and ``mixup``, see ``render_view``); cached
    (``cached_teacher_embeddings``) by teacher, samples, views, seed, augmentation and mixup."""
    key = {"samples": len(base), "views": views, "seed": seed, "augment": dict(sorted(augment_params.items()))}
    if mixup:
        key["mixup"] = mixup
    pairs = [(i, k) for i in range(len(base)) for k in range(views)]

    def embed(recipe: Any, model: torch.nn.Module) -> torch.Tensor:
        augment = TrainAugment(size=recipe.data.image_size, **augment_params)

        def batches():
            starts = range(0, len(pairs), batch_size)
            for start in tqdm(starts, desc=f"teacher: embedding {views} views of {len(base)} images", leave=False,
                              dynamic_ncols=True):
                chunk = pairs[start:start + batch_size]
                yield as_float_images(torch.stack([render_view(augment, base, i, k, seed, mixup) for i, k in chunk]))

        return model.encode(batches()).float().cpu().view(len(base), views, -1)

    return cached_teacher_embeddings(teacher_run, key, cache, device, embed)
