"""Weak supervision: a simplified PRM (peak response maps, Zhou et al. 2018) over the QueryDetector's region embeddings.

Training sees image-level labels only: which identities a scene holds, never where. The
response map of a reference r is a * cos(region embedding, r) + b on the head's grid; its
image-level logit is the mean of the map at its local maxima not below its median (peak stimulation:
only the peaks receive gradient), trained with binary cross-entropy against every reference.
At inference each of the query's highest peaks is traced back to the head's input
(gradient x input, a simplified peak back-propagation), giving an instance-aware map
whose upsampled region above a fraction of its maximum, connected to the peak, is the
instance's mask; its box is the mask's extent. PRM's full top-down probabilistic
propagation and its proposal retrieval are not implemented.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from metricvision.data.scenes import rle_decode
from metricvision.kb.model import ImageTextModel
from metricvision.localization.detector import HeadSteps, QueryDetector
from metricvision.localization.localizers import LOCALIZERS, DetectorLocalizer
from metricvision.localization.refine import crop_maps
from metricvision.localization.train import SceneSet
from metricvision.metrics.detection import pointing_game


def local_peaks(maps: torch.Tensor) -> torch.Tensor:
    """(..., h, w) maps -> bool mask of their local maxima (3 x 3 neighbourhood)."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return (flat == F.max_pool2d(flat, 3, stride=1, padding=1)).reshape(maps.shape)


def response_maps(detector: QueryDetector, emb: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Region embeddings (N, h, w, D), references (R, D) -> response maps (N, R, h, w) (match logits)."""
    cos = torch.einsum("nhwd,rd->nrhw", emb, F.normalize(refs, dim=1))
    return detector.match[0] * cos + detector.match[1]


def peak_stimulation(maps: torch.Tensor) -> torch.Tensor:
    """(N, R, h, w) response maps -> (N, R) image-level logits: the mean of each map over its local peaks that are not
    below its median (PRM's peak filter)."""
    m = maps.detach()
    peaks = (local_peaks(m) & (m >= m.flatten(-2).median(dim=-1).values[..., None, None])).float()
    return (maps * peaks).sum(dim=(-2, -1)) / peaks.sum(dim=(-2, -1))


def map_maxima(maps: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """(..., h, w) maps over an image of ``image_size`` (H, W) px -> (..., 2) the (x, y) pixel centre of each map's
    highest cell (the point a response map gives for the pointing game)."""
    (h, w), flat = maps.shape[-2:], maps.flatten(-2).argmax(dim=-1)
    return torch.stack([(flat % w + 0.5) * image_size[1] / w, (flat // w + 0.5) * image_size[0] / h], dim=-1)


@torch.no_grad()
def response_pointing(detector: QueryDetector, feats: torch.Tensor, image_size: Tuple[int, int], scenes: SceneSet,
                      ref_ids: torch.Tensor, refs: torch.Tensor, tolerances: Sequence[float] = (0.0, 15.0)
                      ) -> Dict[float, float]:
    """Pointing game (``pointing_game``) of the response maps' maxima, one trial per (scene, identity it holds).

    Args:
        feats: (n, D + C, h, w) ``detector.features`` of the scenes, of ``image_size`` (H, W) px.
        refs: (R, D) reference embeddings of the identities ``ref_ids`` (R,); each identity's first is its query.
        tolerances: px from a target pixel at which a point still hits.

    Returns:
        tolerance -> share of the trials whose maximum falls on (or that near) one of the identity's instances.
    """
    _, _, emb = detector.head(feats.float(), image_size)
    points, masks = [], []
    for i, ids in enumerate(scenes.identities):
        present = sorted(set(ids.tolist()))
        maps = response_maps(detector, emb[i : i + 1], torch.stack([refs[ref_ids == lab][0] for lab in present]))[0]
        points += [tuple(p) for p in map_maxima(maps, image_size).tolist()]
        decoded = np.array([rle_decode(r) for r in scenes.segmentations[i]], bool)
        masks += [decoded[ids == lab] for lab in present]
    return {t: pointing_game(points, masks, t)["pointing"] for t in tolerances}


WEAK_POOLS = ("peaks", "max")  # image-level logit from a response map: PRM's peak stimulation, or its maximum (MIL)


def image_logits(maps: torch.Tensor, pool: str = "peaks") -> torch.Tensor:
    """(N, R, h, w) response maps -> (N, R) image-level logits: the mean over local peaks (``peak_stimulation``) or the
    maximum (multiple-instance learning by max pooling, as ProNet's proposal network is trained)."""
    if pool not in WEAK_POOLS:
        raise ValueError(f"pool must be one of {WEAK_POOLS}, got {pool!r}")
    return peak_stimulation(maps) if pool == "peaks" else maps.flatten(2).max(dim=2).values


def weak_losses(detector: QueryDetector, feats: torch.Tensor, image_size: Tuple[int, int],
                present: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], ref_ids: torch.Tensor,
                pool: str = "peaks") -> Tuple[torch.Tensor, dict]:
    """Image-level loss of one batch.

    Args:
        feats: (N, D + C, h, w) from ``detector.features``.
        present: per image, the identities it holds (any order, repeats allowed).
        refs: reference sets, each (R, D), with identities ``ref_ids`` (R,).
        pool: how a response map gives the image-level logit (``image_logits``).

    Returns:
        (loss, logs).
    """
    _, _, emb = detector.head(feats, image_size)
    labels = torch.stack([torch.isin(ref_ids, p).float() for p in present])
    pos_weight = torch.tensor(float(len(ref_ids)) / max(float(labels.sum(dim=1).mean()), 1.0))
    loss = torch.stack([F.binary_cross_entropy_with_logits(image_logits(response_maps(detector, emb, r), pool), labels,
                                                           pos_weight=pos_weight) for r in refs]).mean()
    return loss, {"weak": loss.item()}


def peak_instances(detector: QueryDetector, feats: torch.Tensor, image_size: Tuple[int, int], query: torch.Tensor,
                   max_peaks: int = 20, rel_threshold: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """Instances of one query in one image from its response map's peaks.

    Args:
        feats: (1, D + C, h, w) from ``detector.features``.
        query: (D,) query embedding.
        max_peaks: highest peaks traced back.
        rel_threshold: a pixel belongs to a peak's mask when its back-propagated response
            exceeds this fraction of the maximum.

    Returns:
        masks (n, H, W) bool and (n, 5) boxes x0 y0 x1 y1 score, best first.
    """
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        _, _, emb = detector.head(feats, image_size)
        m = response_maps(detector, emb, query[None])[0, 0]
        h, w = m.shape
        flat = torch.where(local_peaks(m.detach()), m.detach(), torch.tensor(-torch.inf)).reshape(-1)
        top = flat.topk(min(max_peaks, int(torch.isfinite(flat).sum()))).indices
        masks, boxes = [], []
        for k, p in enumerate(top.tolist()):
            (grad,) = torch.autograd.grad(m.reshape(-1)[p], feats, retain_graph=k + 1 < len(top))
            saliency = (grad * feats).sum(dim=1, keepdim=True).clamp(min=0).detach()
            up = F.interpolate(saliency, size=image_size, mode="bilinear", align_corners=False)[0, 0].numpy()
            if up.max() <= 0:
                continue
            labels, _ = ndimage.label(up > rel_threshold * up.max())
            py, px = int((p // w + 0.5) * image_size[0] / h), int((p % w + 0.5) * image_size[1] / w)
            lab = labels[py, px] if labels[py, px] else labels.flat[int(up.argmax())]
            mask = labels == lab
            ys, xs = np.nonzero(mask)
            masks.append(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, float(torch.sigmoid(m.detach().reshape(-1)[p]))])
    if not masks:
        return np.zeros((0, *image_size), bool), np.zeros((0, 5))
    return np.stack(masks), np.array(boxes, np.float64)


def train_weak(detector: QueryDetector, feats: torch.Tensor, present: Sequence[torch.Tensor], refs: Sequence[torch.Tensor],
               ref_ids: torch.Tensor, image_size: Tuple[int, int], steps: int = 600, batch_size: int = 8, lr: float = 1e-3,
               negatives: int = 128, seed: int = 0, log_every: int = 100, pool: str = "peaks") -> List[dict]:
    """Train the head's region embeddings from image-level labels (``weak_losses``); returns the mean loss every ``log_every`` steps.

    Args:
        feats: (n, D + C, h, w) frozen features of the scenes (``detector.features``).
        present: per scene, the identities it holds.
        negatives: references drawn per step besides those of the batch's identities.
        pool: how a response map gives the image-level logit (``image_logits``).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if pool not in WEAK_POOLS:
        raise ValueError(f"pool must be one of {WEAK_POOLS}, got {pool!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = HeadSteps(detector, lr, steps, log_every, desc="peak response")
    detector.train()
    for _ in range(steps):
        pick = rng.choice(len(feats), size=min(batch_size, len(feats)), replace=False)
        held = torch.isin(ref_ids, torch.cat([present[i] for i in pick]))
        cols = torch.nonzero(held | torch.isin(torch.arange(len(ref_ids)), torch.from_numpy(
            rng.choice(len(ref_ids), size=min(negatives, len(ref_ids)), replace=False)))).flatten()
        loss, _ = weak_losses(detector, feats[pick].float(), image_size, [present[i] for i in pick], [r[cols] for r in refs],
                              ref_ids[cols], pool)
        head.step(loss, name="weak")
    detector.eval()
    return head.logs


PEAK_SIDES = (24, 40, 64, 104, 168)  # box sides tried around each peak, px (the scenes' objects are 24-160 px)


@LOCALIZERS.register("peak_crops")
class PeakCropLocalizer(DetectorLocalizer):
    """Weakly supervised, two stages, in the spirit of ProNet (Sun et al., CVPR 2016; simplified): the query's response
    map from a head trained on image-level labels only (``detector train --weak``) proposes its ``peaks`` highest local
    maxima; around each, square boxes of ``sides`` px are cut and embedded by the image model whole (as
    ``query_detector_model_crops`` embeds proposals); the side whose crop matches the query best is then shifted by
    ``shift`` x its side in each of 8 directions (the peaks lie on a stride-16 grid). A box scores
    sigmoid(peak logit) ** ``gamma`` x exp(``temperature`` (cos - 1)). No box was seen in training: the crops' cosine
    with the query chooses each box's size and place, as ProNet's cascade scores boxes of several sizes around its heat
    map's peaks (its learned cascade and box sampling are not implemented). Masks are the filled boxes.

    Args:
        model: the image(-text) model the head was trained on; it also embeds the crops.
        weights: weights from ``metricvision detector train --weak``.
        max_boxes: boxes per query; nms_iou: NMS threshold (``fit`` chooses it with ``gamma``).
        peaks: local maxima of the response map kept per query; sides: box sides tried around each, px.
        shift: step of the second search, a fraction of the chosen side (0: no second search).
        side: crop side in pixels (default: the model card's image size).
    """

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, nms_iou: float = 0.3, peaks: int = 8,
                 sides: Sequence[float] = PEAK_SIDES, shift: float = 0.25, gamma: float = 1.0, temperature: float = 10.0,
                 side: Optional[int] = None) -> None:
        super().__init__(model, weights, max_boxes=max_boxes, nms_iou=nms_iou)
        if peaks < 1 or not sides or min(sides) <= 0 or not 0 <= shift < 1:
            raise ValueError(f"need peaks >= 1, positive sides and shift in [0, 1), got {peaks}, {sides} and {shift}")
        self.embedder, self.side = model.embedder.eval(), side or model.card.image_size
        self.peaks, self.sides, self.shift = peaks, tuple(float(s) for s in sides), shift
        self.gamma, self.temperature = gamma, temperature

    @torch.no_grad()
    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Dict[bytes, Tuple[torch.Tensor, ...]]]:
        """(3, H, W) image in [0, 1] -> its region embeddings (h, w, D) on the head's grid, the image, and a cache of
        each query's scored candidates (``candidates``; ``fit`` tries its settings on them)."""
        _, _, emb = self.detector.head(self.detector.features(image[None]), tuple(image.shape[-2:]))
        return emb[0], image, {}

    def square(self, cx: torch.Tensor, cy: torch.Tensor, sides: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Centres (n,), sides (n,) -> (n, 4) squares clipped to the image."""
        height, width = image.shape[-2:]
        boxes = torch.stack([cx - sides / 2, cy - sides / 2, cx + sides / 2, cy + sides / 2], dim=-1)
        return boxes.clamp(min=torch.zeros(4), max=torch.tensor([width, height, width, height], dtype=boxes.dtype))

    def cosines(self, image: torch.Tensor, boxes: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(n, 4) boxes, (D,) normalized query -> (n,) cosines of their crops' embeddings with the query."""
        return self.embedder.from_features(crop_maps(self.embedder, image, boxes, self.side)) @ query

    @torch.no_grad()
    def candidates(self, emb: torch.Tensor, image: torch.Tensor, query: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One (D,) normalized query -> its candidate boxes (n, 4), their peaks' logits (n,) and crop cosines (n,):
        per peak the ``sides`` squares, then 8 shifts of the best one."""
        m = response_maps(self.detector, emb[None], query[None])[0, 0]
        (h, w), (height, width) = m.shape, image.shape[-2:]
        flat = torch.where(local_peaks(m), m, torch.tensor(-torch.inf)).reshape(-1)
        top = flat.topk(min(self.peaks, int(torch.isfinite(flat).sum())))
        p, s = len(top.indices), len(self.sides)
        cx = ((top.indices % w + 0.5) * width / w).repeat_interleave(s)
        cy = ((top.indices // w + 0.5) * height / h).repeat_interleave(s)
        sides = torch.tensor(self.sides).repeat(p)
        boxes = self.square(cx, cy, sides, image)
        cos = self.cosines(image, boxes, query)
        logits = top.values.repeat_interleave(s)
        if self.shift > 0:
            best = cos.reshape(p, s).argmax(dim=1) + torch.arange(p) * s
            dx, dy = torch.meshgrid(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0]), indexing="ij")
            moves = torch.stack([dx.flatten(), dy.flatten()], dim=1)[[0, 1, 2, 3, 5, 6, 7, 8]]  # (8, 2), no (0, 0)
            step = (self.shift * sides[best])[:, None, None] * moves[None]  # (p, 8, 2)
            shifted = self.square((cx[best][:, None] + step[..., 0]).flatten(), (cy[best][:, None] + step[..., 1]).flatten(),
                                  sides[best].repeat_interleave(8), image)
            boxes = torch.cat([boxes, shifted])
            cos = torch.cat([cos, self.cosines(image, shifted, query)])
            logits = torch.cat([logits, top.values.repeat_interleave(8)])
        return boxes, logits, cos

    def boxes(self, prepared: Tuple[torch.Tensor, torch.Tensor, Dict[bytes, Tuple[torch.Tensor, ...]]],
              queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        from torchvision.ops import nms

        emb, image, cache = prepared
        out = []
        for q in F.normalize(queries, dim=1):
            key = q.numpy().tobytes()
            if key not in cache:
                cache[key] = self.candidates(emb, image, q)
            boxes, logits, cos = cache[key]
            scores = torch.exp(self.gamma * F.logsigmoid(logits) + self.temperature * (cos - 1))
            keep = nms(boxes, scores, self.nms_iou)[: self.max_boxes]
            out.append(torch.cat([boxes[keep], scores[keep, None]], dim=1).numpy().astype(np.float64))
        return out

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose ``gamma`` and the NMS threshold by AP50 on prepared validation images, one (D,) query row each."""
        return self._grid(prepared, queries, gt_boxes, {"gamma": (0.0, 0.5, 1.0, 2.0), "nms_iou": (0.3, 0.5)})
