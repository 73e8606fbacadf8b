"""Weak supervision: a simplified PRM (peak response maps, Zhou et al. 2018) over the QueryDetector's region embeddings.

Training sees image-level labels only: which identities a scene holds, never where. The
response map of a reference r is a * cos(region embedding, r) + b on the head's grid; its
image-level logit is the mean of the map at its local maxima (peak stimulation: only the
peaks receive gradient), trained with binary cross-entropy against every reference.
At inference each of the query's highest peaks is traced back to the head's input
(gradient x input, a simplified peak back-propagation), giving an instance-aware map
whose upsampled region above a fraction of its maximum, connected to the peak, is the
instance's mask; its box is the mask's extent. PRM's full top-down probabilistic
propagation and its proposal retrieval are not implemented.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from metricvision.localization.detector import HeadSteps, QueryDetector


def local_peaks(maps: torch.Tensor) -> torch.Tensor:
    """(..., h, w) maps -> bool mask of their local maxima (3 x 3 neighbourhood)."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return (flat == F.max_pool2d(flat, 3, stride=1, padding=1)).reshape(maps.shape)


def response_maps(detector: QueryDetector, emb: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Region embeddings (N, h, w, D), references (R, D) -> response maps (N, R, h, w) (match logits)."""
    cos = torch.einsum("nhwd,rd->nrhw", emb, F.normalize(refs, dim=1))
    return detector.match[0] * cos + detector.match[1]


def peak_stimulation(maps: torch.Tensor) -> torch.Tensor:
    """(N, R, h, w) response maps -> (N, R) image-level logits: the mean of each map over its local peaks."""
    peaks = local_peaks(maps.detach()).float()
    return (maps * peaks).sum(dim=(-2, -1)) / peaks.sum(dim=(-2, -1))


def weak_losses(detector: QueryDetector, feats: torch.Tensor, image_size: Tuple[int, int],
                present: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], ref_ids: torch.Tensor
                ) -> Tuple[torch.Tensor, dict]:
    """Image-level loss of one batch.

    Args:
        feats: (N, D + C, h, w) from ``detector.features``.
        present: per image, the identities it holds (any order, repeats allowed).
        refs: reference sets, each (R, D), with identities ``ref_ids`` (R,).

    Returns:
        (loss, logs).
    """
    _, _, emb = detector.head(feats, image_size)
    labels = torch.stack([torch.isin(ref_ids, p).float() for p in present])
    pos_weight = torch.tensor(float(len(ref_ids)) / max(float(labels.sum(dim=1).mean()), 1.0))
    loss = torch.stack([F.binary_cross_entropy_with_logits(peak_stimulation(response_maps(detector, emb, r)), labels,
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
               negatives: int = 128, seed: int = 0, log_every: int = 100) -> List[dict]:
    """Train the head's region embeddings from image-level labels (``weak_losses``); returns the mean loss every ``log_every`` steps.

    Args:
        feats: (n, D + C, h, w) frozen features of the scenes (``detector.features``).
        present: per scene, the identities it holds.
        negatives: references drawn per step besides those of the batch's identities.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
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
                              ref_ids[cols])
        head.step(loss, name="weak")
    detector.eval()
    return head.logs
