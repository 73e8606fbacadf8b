"""Localization from dense similarity: heat maps, peaks, boxes.

The heat map is the cosine similarity between a query embedding and the dense
features of an image (``Embedder.encode_dense``); nothing here is trained. Instances are
local maxima of the map (the peak-finding step of peak response maps, Zhou et al., CVPR
2018, without their peak back-propagation or learned class response maps), each grown
into the connected component (scipy.ndimage.label) of the locations above a fraction of
its peak, whose extent is the box; overlapping boxes are reduced with NMS.
``tune_box_params`` picks these thresholds by box AP on held-out maps.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from metricvision.metrics.detection import detection_ap

MIN_CONTRAST = 1e-3  # maps flatter than this (max - min) show nothing: their peaks are rounding noise


@dataclass
class Box:
    """A detected instance: (x0, y0, x1, y1) in image pixels (x1, y1 exclusive) and its peak score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    def as_list(self) -> List[float]:
        """[x0, y0, x1, y1, score]."""
        return [self.x0, self.y0, self.x1, self.y1, self.score]


def similarity_map(query: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of a (D,) query with (D, h, w) features -> (h, w)."""
    if dense.dim() != 3 or query.dim() != 1 or query.shape[0] != dense.shape[0]:
        raise ValueError(f"expected query (D,) and dense (D, h, w), got {tuple(query.shape)} and {tuple(dense.shape)}")
    return torch.einsum("d,dhw->hw", F.normalize(query.float(), dim=0), F.normalize(dense.float(), dim=0))


def upsample(heat: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) float32 numpy, bilinear, aligned on pixel corners of the feature grid."""
    up = F.interpolate(heat[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def find_peaks(heat: np.ndarray, window: int = 3, min_score: float = -np.inf) -> List[Tuple[int, int, float]]:
    """Local maxima (peak stimulation) of an (H, W) map: (y, x, value), best first.

    A location is a peak when it equals the maximum of its ``window`` x ``window``
    neighbourhood and is at least ``min_score``; plateaus give one peak each.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    local_max = ndimage.maximum_filter(heat, size=window, mode="nearest")
    mask = (heat == local_max) & (heat >= min_score)
    labels, n = ndimage.label(mask)
    peaks = []
    for sl_index, sl in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = np.nonzero(labels[sl] == sl_index)
        y, x = int(ys[0] + sl[0].start), int(xs[0] + sl[1].start)
        peaks.append((y, x, float(heat[y, x])))
    return sorted(peaks, key=lambda p: -p[2])


def nms(boxes: List[Box], iou_threshold: float) -> List[Box]:
    """Greedy non-maximum suppression (torchvision.ops.nms), best first."""
    if not boxes:
        return []
    from torchvision.ops import nms as tv_nms

    xyxy = torch.tensor([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=torch.float32)
    keep = tv_nms(xyxy, torch.tensor([b.score for b in boxes]), iou_threshold)
    return [boxes[i] for i in keep.tolist()]


def boxes_from_map(
    heat: np.ndarray,
    rel_threshold: float = 0.6,
    min_score: float = -1.0,
    window: int = 9,
    iou_threshold: float = 0.3,
    max_boxes: int = 10,
) -> List[Box]:
    """Instance boxes on an (H, W) similarity map.

    Args:
        heat: the map (cosine similarities, in [-1, 1]).
        rel_threshold: a peak's region is its connected component of values >= floor +
            rel_threshold * (peak - floor), floor being the map's median.
        min_score: peaks below this are ignored (default: none; only the contrast of the map counts).
        window: peak neighbourhood (odd, pixels of the map).
        iou_threshold: NMS threshold.
        max_boxes: most boxes returned.

    Returns:
        boxes, best first.
    """
    if not 0.0 < rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    floor = float(np.median(heat))
    boxes: List[Box] = []
    if float(heat.max()) - float(heat.min()) < MIN_CONTRAST:  # a flat map has no instance
        return boxes
    for y, x, v in find_peaks(heat, window, min_score)[: 4 * max_boxes]:
        if v <= floor:
            continue
        labels, _ = ndimage.label(heat >= floor + rel_threshold * (v - floor))
        ys, xs = np.nonzero(labels == labels[y, x])
        boxes.append(Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), v))
    return nms(boxes, iou_threshold)[:max_boxes]


def tune_box_params(
    heats: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray], grid: Mapping[str, Sequence[Any]],
    metric: str = "AP50",
) -> Tuple[Dict[str, Any], float]:
    """Pick the ``boxes_from_map`` arguments with the best box AP on held-out maps.

    Args:
        heats: (H, W) similarity maps of validation images (never the test images).
        gt_boxes: per map, (m, 4) ground-truth boxes (x0, y0, x1, y1).
        grid: argument name -> values to try (their product is searched).
        metric: key of ``detection_ap``'s result to maximise.

    Returns:
        (best arguments, their score); ties go to the first in grid order.
    """
    if len(heats) != len(gt_boxes) or not heats:
        raise ValueError(f"expected as many maps as box lists (at least one), got {len(heats)} and {len(gt_boxes)}")
    best: Tuple[Dict[str, Any], float] = ({}, -np.inf)
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid.keys(), values))
        found = [np.array([b.as_list() for b in boxes_from_map(h, **params)]).reshape(-1, 5) for h in heats]
        score = detection_ap([f[:, :4] for f in found], [f[:, 4] for f in found], gt_boxes)[metric]
        if score > best[1]:
            best = (params, score)
    return best


def box_iou(a: Tuple[float, float, float, float], b: Tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def heatmap_png(heat: np.ndarray, alpha: float = 0.6) -> bytes:
    """(H, W) map -> RGBA PNG bytes (jet colours, opacity growing with the value) to lay over the image."""
    from matplotlib import colormaps
    from PIL import Image

    lo, hi = float(heat.min()), float(heat.max())
    v = (heat - lo) / (hi - lo) if hi - lo >= MIN_CONTRAST else np.zeros_like(heat)
    rgba = colormaps["jet"](v)
    rgba[..., 3] = alpha * v
    buf = io.BytesIO()
    Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()
