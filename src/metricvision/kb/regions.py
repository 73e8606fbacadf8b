"""Regions of knowledge-base images: boxes embedded beside the whole image.

A query for a small object scores low against the whole-image embedding of a large
scene that contains it; against the embedding of a crop around the object it scores as
high as against the object alone. At ``kb build`` / ``kb add`` each image's regions are
proposed (a multi-scale grid of overlapping square windows, or the class-agnostic
proposals of a trained ``query_detector`` from the localization registry), embedded with
the KB's model, and written to ``KB/regions/`` as append-only parts (item id, box,
embedding). A search then ranks each item by the best of its whole-image score and its
best region's score, and returns the best regions' boxes with each hit.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision._atomic import atomic_write
from metricvision.data import Sample, load_image
from metricvision.kb.model import ImageTextModel

REGIONS_DIR = "regions"
PROPOSER_FILE = "proposer.json"
REGION_EMBEDDINGS = ("detector", "model")  # how a detector's regions are embedded
GRID_SCALES = (0.5, 0.3, 0.18)


def grid_boxes(width: int, height: int, scales: Sequence[float] = GRID_SCALES, overlap: float = 0.5) -> np.ndarray:
    """Square windows of side ``scale * min(width, height)`` tiling the image with ``overlap``.

    Returns:
        (R, 4) float32 boxes x0, y0, x1, y1 in pixels (x1, y1 exclusive), the last window of
        each row and column flush with the border.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not scales or not all(0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be in (0, 1], got {list(scales)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    out = []
    for s in scales:
        side = max(1, round(s * min(width, height)))
        stride = max(1, round(side * (1 - overlap)))
        xs = _starts(width, side, stride)
        ys = _starts(height, side, stride)
        out += [(x, y, x + side, y + side) for y in ys for x in xs]
    return np.array(out, np.float32).reshape(-1, 4)


def _starts(length: int, side: int, stride: int) -> List[int]:
    last = max(length - side, 0)
    starts = list(range(0, last + 1, stride))
    return starts if starts[-1] == last else starts + [last]


class GridProposer:
    """Regions = crops of a multi-scale grid, each embedded like a whole image (resized to the card's size).

    Args:
        model: the KB's image model.
        scales: window sides as fractions of the image's shorter side.
        overlap: overlap of neighbouring windows.
    """

    def __init__(self, model: ImageTextModel, scales: Sequence[float] = GRID_SCALES, overlap: float = 0.5) -> None:
        self.model, self.scales, self.overlap = model, tuple(scales), overlap

    def __call__(self, image: Any) -> Tuple[np.ndarray, torch.Tensor]:
        """One image -> boxes (R, 4) in pixels and their embeddings (R, D)."""
        im = load_image(image)
        boxes = grid_boxes(im.width, im.height, self.scales, self.overlap)
        crops = [im.crop(tuple(int(v) for v in b)) for b in boxes]
        return boxes, self.model.encode_images(crops)


class DetectorProposer:
    """Regions = the best class-agnostic boxes of a trained ``query_detector`` (objectness, then NMS), each
    embedded in the model's space by the detector's region embedding (``embedding="detector"``, one pass) or
    by the image model itself on the box's square crop at its card's size (``"model"``, as the localizer
    ``query_detector_model_crops``; a forward pass of the whole model for each region's crop).

    Args:
        model: the KB's image model (the one the detector was trained on, unless ``detector_model`` is given).
        weights: detector head weights from ``metricvision detector train``.
        max_regions: regions kept per image.
        nms_iou: IoU above which the less objectlike of two boxes is dropped.
        embedding: "detector" or "model" (``REGION_EMBEDDINGS``).
        detector_model: checkpoint of the image model the detector was trained on, when it is not ``model`` (e.g. the
            ImageNet-aligned model under a KB of a scene-trained identity model); needs ``embedding="model"``.
        refiner: box refiner weights (``metricvision detector refiner``, trained on ``model``'s crop maps); each
            region's box is regressed from its crop's maps, the crop's embedding unchanged; needs ``embedding="model"``.
    """

    def __init__(self, model: ImageTextModel, weights: str, max_regions: int = 30, nms_iou: float = 0.5,
                 embedding: str = "detector", detector_model: Optional[str] = None, refiner: Optional[str] = None) -> None:
        from metricvision.localization.localizers import LOCALIZERS
        from metricvision.localization.refine import load_refiner

        if max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {max_regions}")
        check_region_embedding(weights, embedding, detector_model, refiner)
        self.refiner = load_refiner(refiner, model.embedder, model.card.image_size)[0] if refiner else None
        base = ImageTextModel.from_checkpoint(detector_model) if detector_model else model
        self.localizer = LOCALIZERS.create("query_detector", model=base, weights=weights)
        self.model, self.max_regions, self.nms_iou, self.embedding = model, max_regions, nms_iou, embedding

    @torch.no_grad()
    def __call__(self, image: Any) -> Tuple[np.ndarray, torch.Tensor]:
        """One image -> boxes (R, 4) in pixels and their embeddings (R, D)."""
        from torchvision.ops import clip_boxes_to_image, nms

        x = torch.from_numpy(np.asarray(load_image(image), np.float32) / 255.0).permute(2, 0, 1)
        objectness, boxes, emb = self.localizer.prepare(x)
        obj, boxes, emb = objectness[0].reshape(-1), boxes[0].reshape(-1, 4), emb[0].reshape(-1, emb.shape[-1])
        top = obj.topk(min(10 * self.max_regions, obj.numel())).indices
        keep = top[nms(boxes[top], obj[top], self.nms_iou)][: self.max_regions]
        h, w = x.shape[-2:]
        clipped = clip_boxes_to_image(boxes[keep], (h, w))
        if self.embedding == "model":
            from metricvision.localization.refine import crop_maps

            maps = crop_maps(self.model.embedder, x, boxes[keep], self.model.card.image_size)
            if self.refiner is not None:
                clipped = clip_boxes_to_image(self.refiner.refine(boxes[keep], maps), (h, w))
            return clipped.numpy().astype(np.float32), self.model.embedder.from_features(maps)
        return clipped.numpy().astype(np.float32), emb[keep]


def create_proposer(model: ImageTextModel, detector: Optional[str] = None, **kwargs: Any) -> Any:
    """A ``DetectorProposer`` when detector weights are given, else a ``GridProposer``."""
    return DetectorProposer(model, detector, **kwargs) if detector else GridProposer(model, **kwargs)


def check_region_embedding(detector: Optional[str], embedding: str, detector_model: Optional[str] = None,
                           refiner: Optional[str] = None) -> None:
    """Refuse an unknown region embedding, one other than the grid's own without detector weights, or a detector
    model (the image model the detector was trained on, when it is not the KB's) or a box refiner unless the KB's
    model embeds the crops."""
    if embedding not in REGION_EMBEDDINGS:
        raise ValueError(f"region embedding must be one of {REGION_EMBEDDINGS}, got {embedding!r}")
    if embedding != "detector" and not detector:
        raise ValueError(f"region embedding {embedding!r} needs detector weights: --region-embedding {embedding} needs "
                         "--detector WEIGHTS (grid regions are embedded by the model)")
    if detector_model and not (detector and embedding == "model"):
        raise ValueError(f"a detector model ({detector_model}) needs --detector WEIGHTS and --region-embedding model: the "
                         "detector's own region embeddings live in its model's space, not the KB's")
    if refiner and not (detector and embedding == "model"):
        raise ValueError(f"a box refiner ({refiner}) needs --detector WEIGHTS and --region-embedding model: it reads the "
                         "KB's model's maps of each region's crop")


def enable_regions(kb_path: str | os.PathLike, detector: Optional[str] = None, embedding: str = "detector",
                   detector_model: Optional[str] = None, refiner: Optional[str] = None) -> None:
    """Mark the KB as one with regions (KB/regions/proposer.json), so that ``kb add`` proposes them too;
    ``embedding``, ``detector_model``, ``refiner``: as in ``DetectorProposer``."""
    for path, what in ((detector, "detector weights"), (detector_model, "detector model"), (refiner, "box refiner")):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} not found")
    check_region_embedding(detector, embedding, detector_model, refiner)
    folder = region_dir(kb_path)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"detector": str(Path(detector).resolve()) if detector else None, "embedding": embedding,
              "detector_model": str(Path(detector_model).resolve()) if detector_model else None,
              "refiner": str(Path(refiner).resolve()) if refiner else None}
    with atomic_write(folder / PROPOSER_FILE) as f:
        f.write(json.dumps(config).encode())


def kb_proposer(kb_path: str | os.PathLike, model: ImageTextModel) -> Optional[Any]:
    """The proposer the KB was built with (``enable_regions``), None for a KB without regions."""
    path = region_dir(kb_path) / PROPOSER_FILE
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    if not config["detector"]:
        return create_proposer(model)
    return create_proposer(model, config["detector"], embedding=config.get("embedding", "detector"),
                           detector_model=config.get("detector_model"), refiner=config.get("refiner"))


@dataclass
class RegionTable:
    """All regions of a KB: ``item_ids`` (R,), ``boxes`` (R, 4) in pixels, ``embeddings`` (R, D) normalized."""

    item_ids: np.ndarray
    boxes: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)


def region_dir(kb_path: str | os.PathLike) -> Path:
    """KB/regions/."""
    return Path(kb_path) / REGIONS_DIR


def has_regions(kb_path: str | os.PathLike) -> bool:
    """Whether the KB holds any region part."""
    return any(region_dir(kb_path).glob("part-*.npz"))


def add_regions(kb_path: str | os.PathLike, item_ids: Sequence[int], samples: Sequence[Sample], proposer: Any) -> int:
    """Propose and embed the regions of each sample's image, written as one new part; returns how many regions.

    Args:
        kb_path: the KB folder.
        item_ids: (N,) the ids ``KnowledgeBase.add`` gave the samples.
        samples: (N,) the samples, in the same order.
        proposer: ``create_proposer(...)``.
    """
    from tqdm import tqdm

    if len(item_ids) != len(samples):
        raise ValueError(f"{len(item_ids)} item ids for {len(samples)} samples; expected one id per sample")
    ids, boxes, embs = [], [], []
    for i, s in tqdm(list(zip(item_ids, samples)), desc="embedding regions", unit="image", leave=False):
        b, e = proposer(s.image)
        ids.append(np.full(len(b), int(i), np.int64))
        boxes.append(b)
        embs.append(e.numpy().astype(np.float32))
    if not ids or not sum(map(len, ids)):
        return 0
    folder = region_dir(kb_path)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(list(folder.glob("part-*.npz")))
    with atomic_write(folder / f"part-{n:06d}.npz") as f:
        np.savez(f, item_ids=np.concatenate(ids), boxes=np.concatenate(boxes), embeddings=np.concatenate(embs))
    return int(sum(map(len, ids)))


_CACHE: Dict[str, Tuple[Tuple[Tuple[str, float], ...], RegionTable]] = {}
_CACHE_LOCK = threading.Lock()


def load_regions(kb_path: str | os.PathLike) -> RegionTable:
    """Every part of KB/regions/ concatenated (cached until a part is added or changed)."""
    parts = sorted(region_dir(kb_path).glob("part-*.npz"))
    key = tuple((p.name, p.stat().st_mtime) for p in parts)
    with _CACHE_LOCK:
        cached = _CACHE.get(str(Path(kb_path).resolve()))
        if cached is not None and cached[0] == key:
            return cached[1]
    loaded = [np.load(p) for p in parts]
    table = RegionTable(
        item_ids=np.concatenate([z["item_ids"] for z in loaded]) if loaded else np.empty(0, np.int64),
        boxes=np.concatenate([z["boxes"] for z in loaded]) if loaded else np.empty((0, 4), np.float32),
        embeddings=np.concatenate([z["embeddings"] for z in loaded]) if loaded else np.empty((0, 0), np.float32),
    )
    with _CACHE_LOCK:
        _CACHE[str(Path(kb_path).resolve())] = (key, table)
    return table


def best_regions(table: RegionTable, query: np.ndarray, allowed: Optional[np.ndarray] = None, per_item: int = 3,
                 max_items: Optional[int] = None) -> Dict[int, List[Dict[str, Any]]]:
    """The items with the best-scoring regions for a (D,) query, with those regions, best first.

    Args:
        table: the KB's regions.
        query: (D,) normalized query.
        allowed: item ids that may be returned (None: all).
        per_item: regions kept per item.
        max_items: items returned, by their best region (None: every item with a region).

    Returns:
        item id -> [{"box": [x0, y0, x1, y1], "score": cosine}], best items first.
    """
    if per_item < 1:
        raise ValueError(f"per_item must be >= 1, got {per_item}")
    if not len(table):
        return {}
    if table.embeddings.shape[1] != query.shape[0]:
        raise ValueError(f"query has dim {query.shape[0]}, the regions {table.embeddings.shape[1]}")
    scores = table.embeddings @ query.astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    if allowed is not None:
        order = order[np.isin(table.item_ids[order], allowed)]
    ids = table.item_ids[order]
    grouped = np.argsort(ids, kind="stable")  # by item, best region first within an item
    starts = np.flatnonzero(np.r_[True, ids[grouped][1:] != ids[grouped][:-1]])
    rank = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.r_[starts, len(grouped)]))
    best_first = np.sort(grouped[starts])[:max_items]  # each item's best region, best items first
    keep = set(ids[best_first].tolist())
    out: Dict[int, List[Dict[str, Any]]] = {i: [] for i in ids[best_first].tolist()}
    for r in order[np.sort(grouped[rank < per_item])]:
        i = int(table.item_ids[r])
        if i in keep:
            out[i].append({"box": [round(float(v), 1) for v in table.boxes[r]], "score": float(scores[r])})
    return out


def merge_with_regions(scores: np.ndarray, ids: np.ndarray, regions: Dict[int, List[Dict[str, Any]]], k: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Whole-image top hits (n,) merged with region hits: an item's score is the max of both; top k.

    Returns:
        (scores (m,), ids (m,)), m <= k, best first.
    """
    best = {int(i): float(s) for s, i in zip(scores, ids) if i >= 0}
    for i, found in regions.items():
        best[i] = max(best.get(i, -np.inf), found[0]["score"])
    ranked = sorted(best.items(), key=lambda t: -t[1])[:k]
    return np.array([s for _, s in ranked], np.float32), np.array([i for i, _ in ranked], np.int64)
