"""Box refinement for the two-stage localizer: class-agnostic box regression on each proposal's crop.

As Fast R-CNN's second stage (Girshick, ICCV 2015) regresses a proposal's box from its pooled features, the
``BoxRefiner`` reads the identity model's own backbone maps of a proposal's square crop (the maps that
``query_detector_model_crops`` pools into the crop's embedding, so refining costs a small head, not another
backbone pass) and predicts where the object's corners are, in units of the crop's side. It is trained on the
ground-truth boxes of train scenes jittered widely (centres moved up to ``shift`` of the side, sides scaled by up
to 1 +- ``scale`` on each axis), the image model frozen and its crop maps computed once (``refiner_examples``).
Simplified against Fast R-CNN: jittered ground truth instead of the detector's own proposals, corner offsets
instead of centre / log-size deltas, one class-agnostic regressor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metricvision._atomic import atomic_write
from metricvision.localization.crops import crop_boxes, jitter_boxes, square_boxes
from metricvision.localization.detector import HeadSteps
from metricvision.models import Embedder


class BoxRefiner(nn.Module):
    """(n, C, h, w) crop maps -> (n, 4) corner offsets (x0, y0, x1, y1) in units of the square crop's side.

    Args:
        channels: C of the image model's backbone maps.
        mid: channels after the 1 x 1 reduction.
        hidden: width of the hidden layer.
        grid: the maps are average-pooled to grid x grid before the fully connected layers.
    """

    def __init__(self, channels: int, mid: int = 128, hidden: int = 256, grid: int = 3) -> None:
        super().__init__()
        if min(channels, mid, hidden, grid) < 1:
            raise ValueError(f"channels, mid, hidden and grid must be >= 1, got {channels}, {mid}, {hidden}, {grid}")
        self.shape = {"channels": channels, "mid": mid, "hidden": hidden, "grid": grid}
        self.net = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                                 nn.Linear(mid * grid * grid, hidden), nn.ReLU(), nn.Linear(hidden, 4))
        nn.init.zeros_(self.net[-1].weight)  # starts as "keep the box"
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps)

    @torch.no_grad()
    def refine(self, boxes: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """(n, 4) boxes and the (n, C, h, w) maps of their square crops -> (n, 4) refined boxes."""
        return apply_offsets(boxes, self(maps.float()))


def crop_side(boxes: torch.Tensor) -> torch.Tensor:
    """(n, 4) boxes -> (n, 1) side of their square crops (``square_boxes``, no padding)."""
    sq = square_boxes(boxes)
    return sq[:, 2:3] - sq[:, 0:1]


def corner_offsets(boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, 4) boxes, (n, 4) target boxes -> (n, 4) the targets' corners less the boxes', over the crop side."""
    return (targets - boxes) / crop_side(boxes).clamp_min(1e-6)


def apply_offsets(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Inverse of ``corner_offsets``: (n, 4) boxes moved by (n, 4) offsets (corners kept in order)."""
    out = boxes + offsets * crop_side(boxes)
    lo, hi = torch.minimum(out[:, :2], out[:, 2:]), torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi + 1e-3 * (hi == lo)], dim=1)


@torch.no_grad()
def crop_maps(embedder: Embedder, image: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """(3, H, W) image in [0, 1], (n, 4) boxes -> (n, C, h, w) backbone maps of their square ``side`` px crops."""
    return embedder.features(crop_boxes(image, boxes, side))


def refiner_examples(embedder: Embedder, images: Sequence[torch.Tensor], boxes: Sequence[np.ndarray], side: int,
                     jitters: int = 4, shift: float = 0.25, scale: float = 0.5, seed: int = 0
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training examples: per ground-truth box, ``jitters`` jittered boxes -> their crop maps (N, C, h, w) in half
    precision, the corner offsets to the ground truth (N, 4), the jittered boxes (N, 4) and the ground truth (N, 4)."""
    if jitters < 1:
        raise ValueError(f"jitters must be >= 1, got {jitters}")
    rng = np.random.default_rng(seed)
    maps, jittered, truth = [], [], []
    for image, gt in tqdm(list(zip(images, boxes)), desc="refiner crops", leave=False, dynamic_ncols=True):
        if not len(gt):
            continue
        for _ in range(jitters):
            jb = torch.from_numpy(jitter_boxes(gt, rng, shift=shift, scale=scale)).float()
            maps.append(crop_maps(embedder, image, jb, side).half())
            jittered.append(jb)
            truth.append(torch.from_numpy(gt).float())
    if not maps:
        raise ValueError("no ground-truth boxes in the scenes: nothing to train the refiner on")
    jb, gt = torch.cat(jittered), torch.cat(truth)
    return torch.cat(maps), corner_offsets(jb, gt), jb, gt


def train_refiner(refiner: BoxRefiner, maps: torch.Tensor, offsets: torch.Tensor, steps: int = 3000,
                  batch_size: int = 256, lr: float = 1e-3, seed: int = 0, log_every: int = 500) -> List[dict]:
    """Fit the refiner (L1 on the corner offsets; AdamW, cosine decay); returns the mean loss every ``log_every`` steps."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    torch.manual_seed(seed)
    head = HeadSteps(refiner, lr, steps, log_every, desc="box refiner")
    refiner.train()
    for _ in range(steps):
        pick = torch.randint(len(maps), (min(batch_size, len(maps)),))
        head.step(F.l1_loss(refiner(maps[pick].float()), offsets[pick]), name="l1")
    refiner.eval()
    return head.logs


@torch.no_grad()
def refined_iou(refiner: BoxRefiner, maps: torch.Tensor, boxes: torch.Tensor, truth: torch.Tensor) -> Dict[str, float]:
    """Mean IoU with the ground truth, and the share at IoU >= 0.5, of (N, 4) boxes before and after refinement."""
    after = torch.cat([refiner.refine(boxes[s : s + 1024], maps[s : s + 1024]) for s in range(0, len(boxes), 1024)])
    out = {}
    for name, b in (("before", boxes), ("after", after)):
        iou = paired_iou(b, truth)
        out.update({f"iou_{name}": round(float(iou.mean()), 4), f"iou50_{name}": round(float((iou >= 0.5).float().mean()), 4)})
    return out


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each (n, 4) box of ``a`` with the box of ``b`` in the same row -> (n,)."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return inter / union.clamp_min(1e-12)


def save_refiner(refiner: BoxRefiner, path: str | Path, side: int, image_model: str = "") -> None:
    """Write the refiner's weights, its shape, the crop side and the image model it reads, as safetensors."""
    from safetensors.torch import save

    meta = {**{k: str(v) for k, v in refiner.shape.items()}, "side": str(side), "image_model": image_model}
    with atomic_write(path) as f:
        f.write(save({k: v.contiguous() for k, v in refiner.state_dict().items()}, metadata=meta))


def load_refiner(path: str | Path, embedder: Embedder, side: Optional[int] = None) -> Tuple[BoxRefiner, int]:
    """A refiner from ``save_refiner``'s file, checked against ``embedder``'s maps (and, if given, the crop ``side``
    it will be used at), and its crop side."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"box refiner {path} not found; train one with `metricvision detector refiner`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "side" not in meta:
        raise ValueError(f"{path} is not a box refiner (no 'side' in its metadata)")
    trained_side = int(meta["side"])
    if side is not None and side != trained_side:
        raise ValueError(f"the box refiner {path} reads {trained_side} px crops, not {side} px: set side={trained_side} "
                         f"where the crops are cut, or train a refiner at {side} px")
    with torch.no_grad():
        channels = embedder.eval().features(torch.zeros(1, 3, trained_side, trained_side)).shape[1]
    if int(meta["channels"]) != channels:
        raise ValueError(f"{path} reads maps of {meta['channels']} channels; this image model's have {channels} "
                         f"(the refiner was trained on {meta.get('image_model') or 'another model'})")
    refiner = BoxRefiner(channels, int(meta["mid"]), int(meta["hidden"]), int(meta["grid"]))
    refiner.load_state_dict(load_file(str(path)))
    return refiner.eval(), trained_side
