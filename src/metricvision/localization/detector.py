"""One-shot, query-conditioned detection with metric learning: a simplified FCOS on a frozen Embedder.

The frozen Embedder gives, per image, its dense embeddings (D channels, the backbone's
last stride) upsampled 2x and concatenated with the backbone's features at half that
stride. A small convolutional head predicts at every location of that grid an
objectness logit (class-agnostic, focal loss), a box as distances to its four sides
(FCOS, Tian et al. 2019, with centre sampling; GIoU loss) and a region embedding in the
Embedder's metric space (the dense embedding plus a learned residual). Region embeddings
of locations inside an object are trained with a metric loss of the package (``infonce``
by default) against reference embeddings of the objects' identities, e.g. another
vendor's rendering or the name, so that an identity never seen in training is found
from one query embedding. A location's score for a query is
sigmoid(objectness) * sigmoid(a * cos(region, query) + b), with a and b learned (BCE).

With ``prime=True`` the query primes the detector: a linear map of the query embedding gives
a per-channel scale and shift (FiLM) of the frozen features at the head's input (the
backbone's stride-16 and final features), so objectness and boxes are the query's. With
``prime_at`` (backbone layer indices) the FiLM modulates the outputs of those backbone layers
instead, early and middle ones, and the frozen layers after them run on the modulated
features, as priming in Rosenfeld et al. 2018 modulates the backbone's own layers (here with
the backbone's weights frozen: only the FiLM maps and the head learn, the gradient passing
through the frozen layers; the features up to the first primed layer are computed once per
image). A primed detector is trained with one identity's reference (another vendor's rendering
or the name) as the prime of each scene (``train.train_detector``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from metricvision.models import Embedder


class QueryDetector(nn.Module):
    """Detection head over a frozen Embedder whose backbone is an ``nn.Sequential``.

    Args:
        embedder: the (frozen) Embedder whose space the queries live in.
        hidden: channels of the head.
        radius: centre-sampling radius in grid cells (FCOS uses 1.5).
        prime: modulate the head's input features by the query (FiLM), see the module doc.
        prime_at: backbone layers whose outputs the query modulates (FiLM) instead; the first must not
            come after the head's stride-16 tap.
    """

    def __init__(self, embedder: Embedder, hidden: int = 128, radius: float = 1.5, prime: bool = False,
                 prime_at: Sequence[int] = ()) -> None:
        super().__init__()
        if not isinstance(embedder.backbone, nn.Sequential):
            raise ValueError(f"QueryDetector needs an nn.Sequential backbone, got {type(embedder.backbone).__name__}")
        if embedder.taps:
            raise ValueError(f"QueryDetector needs an embedder without taps (a hypercolumn), got taps {list(embedder.taps)}")
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.embedder = embedder.eval().requires_grad_(False)
        self.radius = radius
        with torch.no_grad():  # the tap: the last backbone layer at (at least) twice the final resolution
            outs: List[torch.Tensor] = []
            hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o)) for layer in embedder.backbone]
            embedder.features(torch.zeros(1, 3, 64, 64))
            for h in hooks:
                h.remove()
        self.tap_index = max((k for k, o in enumerate(outs) if o.shape[-1] >= 2 * outs[-1].shape[-1]), default=0)
        self.tap_channels = outs[self.tap_index].shape[1]
        self.prime_at = tuple(sorted(set(int(k) for k in prime_at)))
        if self.prime_at and (self.prime_at[0] < 0 or self.prime_at[0] > self.tap_index or self.prime_at[-1] >= len(outs)):
            raise ValueError(f"prime_at must be backbone layers in [0, {len(outs) - 1}], the first <= {self.tap_index} "
                             f"(the stride-16 tap), got {list(prime_at)}")
        d = embedder.dim
        self.trunk = nn.Sequential(nn.Conv2d(d + self.tap_channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.objectness = nn.Conv2d(hidden, 1, 1)
        self.box = nn.Conv2d(hidden, 4, 1)
        self.residual = nn.Conv2d(hidden, d, 1)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        nn.init.constant_(self.objectness.bias, -4.0)  # focal-loss prior: most locations are background
        self.match = nn.Parameter(torch.tensor([10.0, -5.0]))  # a, b of the match logit a * cos + b
        self.film = nn.Linear(d, 2 * (d + self.tap_channels)) if prime and not self.prime_at else None
        self.films = nn.ModuleDict({str(k): nn.Linear(d, 2 * outs[k].shape[1]) for k in self.prime_at})
        for film in [self.film, *self.films.values()]:  # each starts as the identity: the unprimed detector
            if film is not None:
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)

    @property
    def primed(self) -> bool:
        """Whether the query modulates features (at the head's input or in the backbone)."""
        return self.film is not None or bool(self.prime_at)

    def train(self, mode: bool = True) -> "QueryDetector":
        super().train(mode)
        self.embedder.eval()  # frozen, batch norm statistics included
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D + C, h, w) frozen features on the head's grid; with ``prime_at``, the
        query-independent part: the output of the first primed backbone layer, before its modulation."""
        x = self.embedder.backbone_input(images)
        if self.prime_at:
            return self.embedder.backbone[: self.prime_at[0] + 1](x)
        mid = x
        for k, layer in enumerate(self.embedder.backbone):
            x = layer(x)
            if k == self.tap_index:
                mid = x
        return self._grid_features(self.embedder.dense_from_features(x), mid)

    @staticmethod
    def _grid_features(dense: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
        """Dense embeddings (N, D, h', w') upsampled to the tap's grid and concatenated with it: (N, D + C, h, w)."""
        dense = F.interpolate(dense, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([dense, mid], dim=1).contiguous()

    def primed_features(self, stem: torch.Tensor, primes: torch.Tensor) -> torch.Tensor:
        """``prime_at``: the first primed layer's output (N, C0, h0, w0) and one query per image (N, D) -> the head's
        input (N, D + C, h, w), every primed layer's output modulated by the query (FiLM), the frozen layers between."""
        q = F.normalize(primes, dim=1)
        x, mid = stem, None
        for k in range(self.prime_at[0], len(self.embedder.backbone)):
            if k > self.prime_at[0]:
                x = self.embedder.backbone[k](x)
            if str(k) in self.films:
                x = _film(self.films[str(k)], x, q)
            if k == self.tap_index:
                mid = x
        return self._grid_features(self.embedder.dense_from_features(x), mid)

    def head(self, feats: torch.Tensor, image_size: Tuple[int, int], primes: Optional[torch.Tensor] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features`` (N, D + C, h, w) -> objectness logits (N, h, w), boxes (N, h, w, 4) in pixels, region embeddings
        (N, h, w, D).

        ``primes`` (N, D): the query embedding of each image, required when the detector is primed.
        """
        d = self.embedder.dim
        if self.primed and (primes is None or primes.shape != (feats.shape[0], d)):
            raise ValueError(f"a primed detector needs one (D={d}) query per image, got "
                             f"{None if primes is None else tuple(primes.shape)} for {feats.shape[0]} images")
        if self.prime_at:
            feats = self.primed_features(feats, primes)
        elif self.film is not None:
            feats = _film(self.film, feats, F.normalize(primes, dim=1))
        t = self.trunk(feats)
        h, w = feats.shape[-2:]
        sy, sx = image_size[0] / h, image_size[1] / w
        cy = (torch.arange(h, dtype=feats.dtype) + 0.5) * sy
        cx = (torch.arange(w, dtype=feats.dtype) + 0.5) * sx
        dist = self.box(t).clamp(max=8.0).exp().permute(0, 2, 3, 1) * torch.tensor([sx, sy, sx, sy], dtype=feats.dtype)
        boxes = torch.stack([cx[None, None, :] - dist[..., 0], cy[None, :, None] - dist[..., 1],
                             cx[None, None, :] + dist[..., 2], cy[None, :, None] + dist[..., 3]], dim=-1)
        emb = F.normalize(feats[:, :d] + self.residual(t), dim=1).permute(0, 2, 3, 1)
        return self.objectness(t)[:, 0], boxes, emb

    def scores(self, objectness: torch.Tensor, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Objectness (N, h, w), embeddings (N, h, w, D), queries (Q, D) -> scores (N, Q, h, w) in [0, 1]."""
        cos = torch.einsum("nhwd,qd->nqhw", emb, F.normalize(queries, dim=1))
        return torch.sigmoid(objectness)[:, None] * torch.sigmoid(self.match[0] * cos + self.match[1])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> the query-independent part: objectness (N, h, w), boxes (N, h, w, 4), embeddings (N, h, w, D)."""
        self.eval()
        return self.head(self.features(images), tuple(images.shape[-2:]))

    @torch.no_grad()
    def select(self, predicted: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], queries: torch.Tensor,
               max_boxes: int = 20, nms_iou: float = 0.5, candidates: int = 200) -> List[List[np.ndarray]]:
        """Boxes for each query in each image of a ``predict`` output.

        Args:
            predicted: output of ``predict``.
            queries: (Q, D) query embeddings (image or text, in the Embedder's space).
            max_boxes: boxes kept per image and query, best first.
            nms_iou: NMS IoU threshold.
            candidates: best locations considered before NMS.

        Returns:
            [image][query] -> (n, 5) float arrays of x0, y0, x1, y1, score.
        """
        from torchvision.ops import nms

        obj, boxes, emb = predicted
        s = self.scores(obj, emb, queries)
        out = []
        for i in range(obj.shape[0]):
            per_query = []
            flat_boxes = boxes[i].reshape(-1, 4)
            for q in range(queries.shape[0]):
                sc = s[i, q].reshape(-1)
                top = sc.topk(min(candidates, sc.numel())).indices
                keep = top[nms(flat_boxes[top], sc[top], nms_iou)][:max_boxes]
                per_query.append(torch.cat([flat_boxes[keep], sc[keep, None]], dim=1).numpy().astype(np.float64))
            out.append(per_query)
        return out

    @torch.no_grad()
    def select_primed(self, feats: torch.Tensor, image_size: Tuple[int, int], queries: torch.Tensor,
                      max_boxes: int = 20, nms_iou: float = 0.5) -> List[np.ndarray]:
        """A primed detector's boxes: (1, D + C, h, w) ``features`` of one image, (Q, D) queries -> per query (n, 5) boxes."""
        self.eval()
        out = []
        for q in queries:
            predicted = self.head(feats, image_size, primes=q[None])
            out.append(self.select(predicted, q[None], max_boxes=max_boxes, nms_iou=nms_iou)[0][0])
        return out

    def detect(self, images: torch.Tensor, queries: torch.Tensor, max_boxes: int = 20, nms_iou: float = 0.5
               ) -> List[List[np.ndarray]]:
        """(N, 3, H, W) images, (Q, D) queries -> [image][query] (n, 5) boxes with scores (``predict`` then ``select``)."""
        if self.primed:
            feats = self.features(images)
            return [self.select_primed(feats[i : i + 1], tuple(images.shape[-2:]), queries, max_boxes, nms_iou)
                    for i in range(len(images))]
        return self.select(self.predict(images), queries, max_boxes=max_boxes, nms_iou=nms_iou)


class Predictor(nn.Module):
    """An unprimed QueryDetector's query-independent outputs as one module (what ``models.runtime`` exports):
    (N, 3, H, W) in [0, 1] -> objectness logits (N, h, w), boxes (N, h, w, 4), region embeddings (N, h, w, D)."""

    def __init__(self, detector: QueryDetector) -> None:
        super().__init__()
        if detector.primed:
            raise ValueError("a primed detector's outputs depend on the query: it has no query-independent predictor")
        self.detector = detector

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.detector.head(self.detector.features(images), tuple(images.shape[-2:]))


def _film(linear: nn.Linear, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """FiLM: (N, C, h, w) features scaled by 1 + and shifted by the two halves of ``linear`` of the (N, D) queries."""
    scale, shift = linear(q).chunk(2, dim=1)
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def assign_targets(boxes: torch.Tensor, grid: Tuple[int, int], image_size: Tuple[int, int], radius: float
                   ) -> torch.Tensor:
    """FCOS assignment with centre sampling: (m, 4) boxes -> (h, w) index of the object per location, -1 for background.

    A location is positive for an object when its centre lies inside the box and within
    ``radius`` cells of the box centre; the location nearest the centre always is; a
    location claimed by several objects goes to the smallest.
    """
    h, w = grid
    sy, sx = image_size[0] / h, image_size[1] / w
    cy = (torch.arange(h, dtype=torch.float32) + 0.5) * sy
    cx = (torch.arange(w, dtype=torch.float32) + 0.5) * sx
    assigned = -torch.ones(h, w, dtype=torch.long)
    best_area = torch.full((h, w), float("inf"))
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        inside = ((cx[None, :] > x0) & (cx[None, :] < x1) & (cy[:, None] > y0) & (cy[:, None] < y1)
                  & ((cx[None, :] - mx).abs() <= radius * sx) & ((cy[:, None] - my).abs() <= radius * sy))
        inside[min(int(my / sy), h - 1), min(int(mx / sx), w - 1)] = True
        area = (x1 - x0) * (y1 - y0)
        take = inside & (area < best_area)
        assigned[take] = k
        best_area[take] = area
    return assigned


def detection_losses(detector: QueryDetector, feats: torch.Tensor, image_size: Tuple[int, int],
                     gt_boxes: Sequence[torch.Tensor], gt_ids: Sequence[torch.Tensor],
                     ref_embeddings: Sequence[torch.Tensor], ref_ids: torch.Tensor, metric_loss: nn.Module,
                     primes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, dict]:
    """Losses of one batch.

    Args:
        feats: (N, D + C, h, w) from ``detector.features``.
        gt_boxes: per image, (m, 4) boxes in pixels; gt_ids: per image, (m,) identities.
        ref_embeddings: reference sets, each (R, D) (e.g. other-vendor images, names) with ids ``ref_ids`` (R,).
        metric_loss: a package loss called as ``loss(emb, ids, ref_embeddings=..., ref_labels=...)``.
        primes: (N, D) query per image for a primed detector (then ``gt_boxes`` holds only its targets).

    Returns:
        (total loss, logs).
    """
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

    obj, boxes, emb = detector.head(feats, image_size, primes=primes)
    n, h, w = obj.shape
    assigned = torch.stack([assign_targets(b, (h, w), image_size, detector.radius) for b in gt_boxes])
    pos = assigned >= 0
    n_pos = max(int(pos.sum()), 1)
    loss_obj = sigmoid_focal_loss(obj, pos.float(), reduction="sum") / n_pos
    target_boxes = torch.cat([b[a[p]] for b, a, p in zip(gt_boxes, assigned, pos)]).reshape(-1, 4)
    target_ids = torch.cat([i[a[p]] for i, a, p in zip(gt_ids, assigned, pos)])
    loss_box = generalized_box_iou_loss(boxes[pos], target_boxes, reduction="mean") if pos.any() else boxes.sum() * 0
    pos_emb = emb[pos]
    if not pos.any():  # e.g. a primed batch whose scenes all lack their target
        return loss_obj, {"objectness": loss_obj.item(), "box": 0.0, "metric": 0.0, "match": 0.0, "positives": 0}
    loss_metric = torch.stack([metric_loss(pos_emb, target_ids, ref_embeddings=r, ref_labels=ref_ids).value
                               for r in ref_embeddings]).mean()
    # calibration of the match logit: each positive location against every reference
    cos = torch.cat([pos_emb @ F.normalize(r, dim=1).T for r in ref_embeddings], dim=1)
    same = (target_ids[:, None] == ref_ids.repeat(len(ref_embeddings))[None, :]).float()
    logit = detector.match[0] * cos + detector.match[1]
    loss_match = F.binary_cross_entropy_with_logits(logit, same, pos_weight=torch.tensor(float(len(ref_ids))))
    total = loss_obj + loss_box + loss_metric + loss_match
    return total, {"objectness": loss_obj.item(), "box": loss_box.item(), "metric": loss_metric.item(),
                   "match": loss_match.item(), "positives": int(pos.sum())}


class HeadSteps:
    """AdamW over ``module``'s parameters outside its frozen ``embedder`` (those named with a ``slow`` prefix at
    ``slow_factor`` x ``lr``), a cosine decay over ``steps``,
    ``logs``: the mean of each logged value every ``log_every`` steps (the last step included), and a
    progress bar on stderr named ``desc``."""

    def __init__(self, module: torch.nn.Module, lr: float, steps: int, log_every: int, desc: str = "training",
                 slow: Sequence[str] = (), slow_factor: float = 0.1) -> None:
        named = [(n, p) for n, p in module.named_parameters() if not n.startswith("embedder.")]
        groups = [{"params": [p for n, p in named if not n.startswith(tuple(slow))], "lr": lr},
                  {"params": [p for n, p in named if slow and n.startswith(tuple(slow))], "lr": lr * slow_factor}]
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        self.steps, self.log_every, self.done = steps, log_every, 0
        self.logs: List[dict] = []
        self._running: List[dict] = []
        self.bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)

    def step(self, loss: torch.Tensor, name: str = "loss", **info: float) -> None:
        """One optimizer step on the scalar ``loss``; logs it as ``name`` beside ``info``."""
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.done += 1
        self._running.append({name: loss.item(), **info})
        self.bar.update()
        self.bar.set_postfix({name: f"{loss.item():.3f}"}, refresh=False)
        if self.done == self.steps:
            self.bar.close()
        if self.done % self.log_every == 0 or self.done == self.steps:
            self.logs.append({"step": self.done, **{k: float(np.mean([r[k] for r in self._running])) for k in self._running[0]}})
            self._running = []
