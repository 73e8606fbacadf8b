"""Priming the second stage of the two-stage localizer: the query modulates how each proposal's crop is embedded.

Rosenfeld et al. ("Priming neural networks", 2018) feed a cue of what is sought into a network's early and middle
layers, so that what it computes is shaped by the cue. The ``CropPrimer`` does this inside the identity model that
embeds the proposals' crops (``query_detector_model_crops``): the query's embedding gives a per-channel scale and
shift (FiLM) of the crop's maps at a middle layer (``at``; for MobileNetV2, layer 13 ends its stride-16 stage), and
copies of the layers after it, of the pooling and of the head, tuned, embed the modulated maps; with ``also_at`` the
query modulates the outputs of later layers too (each its own FiLM map), as the paper primes several layers. The crop's score for
the query is the cosine of that primed embedding with the query. The FiLM map starts at zero, so an untrained primer
is the unprimed image model. It is trained on train scenes (``primer_examples``, ``train_primer``): the crops of
every object, jittered as proposals are, and of background boxes, each paired with its own identity's reference
(another vendor's rendering) and with the references the unprimed model confuses it with most (hard negatives), by
binary cross-entropy on a learned affine map of the cosine, which also makes scores comparable across queries;
optionally some negatives are the other objects of the crop's own scene, and some steps primed by class cues (the
name of the crop's category, the paper's setting) instead of an identity. ``query_detector_primed_crops`` is the
localizer that uses it. Simplified against the paper: the modulated layers are those of the second stage only (the
proposals stay unprimed).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metricvision._atomic import atomic_write
from metricvision.kb.model import ImageTextModel
from metricvision.localization.crops import crop_boxes, jitter_boxes
from metricvision.localization.detector import HeadSteps, _film
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.model_crops import ModelCropDetectorLocalizer
from metricvision.metrics.detection import pairwise_iou
from metricvision.models import Embedder


class CropPrimer(nn.Module):
    """(n, C, h, w) crop maps at layer ``at`` and (n, D) queries -> (n, D) normalized primed crop embeddings.

    Args:
        embedder: the identity model (frozen; no hypercolumn taps, no BNNeck, an ``nn.Sequential`` backbone).
        at: the backbone layer whose output the query modulates; the layers after it are tuned copies.
        also_at: later layers (after ``at``, before the last) whose outputs the query modulates too.
    """

    def __init__(self, embedder: Embedder, at: int = 13, also_at: Sequence[int] = ()) -> None:
        super().__init__()
        backbone = embedder.backbone
        if embedder.taps or embedder.neck is not None:
            raise ValueError("the crop primer needs an image model without hypercolumn taps and without a BNNeck")
        if not isinstance(backbone, nn.Sequential) or not 0 <= at < len(backbone) - 1:
            n = len(backbone) if isinstance(backbone, nn.Sequential) else 0
            raise ValueError(f"at must be a layer index in [0, {n - 2}] of an nn.Sequential backbone, got {at}")
        later = sorted({int(a) for a in also_at})
        if any(not at < a < len(backbone) - 1 for a in later):
            raise ValueError(f"also_at layers must lie between at = {at} and {len(backbone) - 1} (excluded), got {later}")
        self.embedder, self.at, self.also_at = embedder.eval(), at, tuple(later)  # frozen: HeadSteps leaves "embedder." out
        self.top = copy.deepcopy(backbone[at + 1 :])
        self.pool, self.head = copy.deepcopy(embedder.pool), copy.deepcopy(embedder.head)
        for p in [*self.top.parameters(), *self.pool.parameters(), *self.head.parameters()]:
            p.requires_grad_(True)
        x = self.trunk(torch.zeros(1, 3, 32, 32))
        self.film = _zero_linear(embedder.dim, 2 * x.shape[1])  # starts as the unprimed model
        channels = {}
        with torch.no_grad():  # the frozen image model's layers (eval mode) give the later layers' widths
            for i in range(at + 1, len(backbone)):
                x = backbone[i](x)
                channels[i] = x.shape[1]
        self.later = nn.ModuleDict({str(a): _zero_linear(embedder.dim, 2 * channels[a]) for a in later})
        self.calibration = nn.Parameter(torch.tensor([10.0, -5.0]))  # scale and bias of the training logit

    def train(self, mode: bool = True) -> "CropPrimer":
        """Training mode for the FiLM map and the tuned layers; batch norms keep the image model's statistics."""
        super().train(mode)
        self.embedder.eval()
        for m in self.top.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @torch.no_grad()
    def trunk(self, crops: torch.Tensor) -> torch.Tensor:
        """(n, 3, s, s) crops in [0, 1] -> (n, C, h, w) the frozen image model's maps at layer ``at``."""
        return self.embedder.backbone[: self.at + 1](self.embedder.backbone_input(crops))

    def forward(self, maps: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        q = F.normalize(queries, dim=1)
        x = _film(self.film, maps.float(), q)
        for i, layer in enumerate(self.top):
            x = layer(x)
            if str(self.at + 1 + i) in self.later:
                x = _film(self.later[str(self.at + 1 + i)], x, q)
        return F.normalize(self.head(self.pool(x)), dim=1)

    @torch.no_grad()
    def primed(self, maps: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(K, C, h, w) crop maps, (Q, D) queries -> (Q, K, D) the crops' embeddings primed by each query."""
        if not len(queries):
            return maps.new_zeros(0, len(maps), self.film.in_features)
        return torch.stack([self(maps, q.expand(len(maps), -1)) for q in queries])


def _zero_linear(dim: int, out: int) -> nn.Linear:
    """A (dim -> out) linear FiLM map that starts at zero (no modulation)."""
    linear = nn.Linear(dim, out)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def background_boxes(gt: np.ndarray, size: Tuple[int, int], n: int, rng: np.random.Generator,
                     max_iou: float = 0.3) -> np.ndarray:
    """Up to ``n`` (m, 4) square boxes inside an image of ``size`` (H, W), as large as the ground-truth boxes (24 to
    160 px without any), each with IoU < ``max_iou`` with every (k, 4) ground-truth box."""
    h, w = size
    sides = np.sqrt((gt[:, 2:] - gt[:, :2]).prod(1)) if len(gt) else np.array([24.0, 160.0])
    out: List[np.ndarray] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        side = min(float(rng.uniform(sides.min(), sides.max())), h - 1.0, w - 1.0)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = np.array([[x0, y0, x0 + side, y0 + side]])
        if pairwise_iou(box, gt).max(initial=0.0) < max_iou:
            out.append(box[0])
    return np.array(out, np.float64).reshape(-1, 4)


def primer_examples(primer: CropPrimer, images: Sequence[torch.Tensor], boxes: Sequence[np.ndarray],
                    identities: Sequence[np.ndarray], side: int, jitters: int = 2, backgrounds: int = 2,
                    proposals: Optional[Sequence[np.ndarray]] = None, partial_iou: float = 0.1,
                    seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training crops: per object ``jitters`` boxes jittered as proposals are (``jitter_boxes``), per scene
    ``backgrounds`` background boxes and, if given, the scene's (m, 4) ``proposals`` (e.g. a detector's on the train
    scenes, so that the crops are drawn as the localizer will draw them; a simplified form of Fast R-CNN's proposal
    sampling, which labels a proposal by its IoU with the ground truth).

    Each box takes the identity of the object it overlaps most when that IoU reaches ``partial_iou`` (else -1, a
    background). Returns their (N, C, h, w) maps at the primer's layer in half precision, (N,) identities, (N,)
    overlaps (that largest IoU) and (N,) scene indices."""
    if jitters < 1 or backgrounds < 0:
        raise ValueError(f"jitters must be >= 1 and backgrounds >= 0, got {jitters} and {backgrounds}")
    if proposals is not None and len(proposals) != len(images):
        raise ValueError(f"proposals must give one (m, 4) array per scene: {len(proposals)} for {len(images)} scenes")
    rng = np.random.default_rng(seed)
    maps, ids, overlaps, scene = [], [], [], []
    for k, (image, gt, who) in enumerate(tqdm(list(zip(images, boxes, identities)), desc="primer crops", leave=False,
                                              dynamic_ncols=True)):
        parts = [jitter_boxes(gt, rng) for _ in range(jitters)] if len(gt) else []
        parts.append(background_boxes(gt, tuple(image.shape[-2:]), backgrounds, rng))
        if proposals is not None:
            parts.append(np.asarray(proposals[k], np.float64).reshape(-1, 4))
        chosen = np.concatenate(parts)
        if not len(chosen):
            continue
        iou = pairwise_iou(chosen, gt)  # (m, objects), zero columns in a scene without objects
        over, label = iou.max(1, initial=0.0), np.full(len(chosen), -1, np.int64)
        if len(gt):
            on = over >= partial_iou
            label[on] = who[iou.argmax(1)][on]
        maps.append(primer.trunk(crop_boxes(image, torch.from_numpy(chosen).float(), side)).half())
        ids.append(torch.from_numpy(label))
        overlaps.append(torch.from_numpy(over).float())
        scene.append(torch.full((len(chosen),), k))
    if not maps:
        raise ValueError("no boxes in the scenes: nothing to train the primer on")
    return torch.cat(maps), torch.cat(ids).long(), torch.cat(overlaps), torch.cat(scene)


def train_primer(primer: CropPrimer, maps: torch.Tensor, ids: torch.Tensor, ref_ids: torch.Tensor,
                 refs: Sequence[torch.Tensor], steps: int = 1500, batch_size: int = 48, negatives: int = 3,
                 hard: int = 20, lr: float = 3e-4, overlaps: Optional[torch.Tensor] = None, fg_iou: float = 0.5,
                 scenes: Optional[torch.Tensor] = None, scene_negatives: int = 0,
                 categories: Optional[torch.Tensor] = None, category_refs: Optional[torch.Tensor] = None,
                 category_share: float = 0.0, film: bool = True, seed: int = 0, log_every: int = 250) -> List[dict]:
    """Fit the primer; returns the mean loss every ``log_every`` steps.

    Each step draws ``batch_size`` crops; a crop of a known identity is paired with that identity's reference
    (label 1; label 0 when its (N,) ``overlaps`` with the object is under ``fg_iou``: a piece of the object, or a box
    straddling it, is not a detection of it) and ``negatives`` references drawn among the ``hard`` that the unprimed
    model finds closest to it (label 0), a background crop with ``negatives`` + 1 of those. With (N,) ``scenes`` (the
    crop's scene), up to ``scene_negatives`` of those negatives are instead the identities of the other objects of the
    crop's scene, the objects a query names at test time beside it (a near-miss the builder planted included). The
    loss is binary cross-entropy on ``calibration`` = (a, b) applied as a x cos + b, the positives weighted by
    ``negatives``. ``refs``: (R, D) reference embeddings per modality (e.g. other-vendor images, names), one drawn per
    step; ``ref_ids``: (R,).
    A ``category_share`` of the steps is primed by class cues instead, as in Rosenfeld et al.: each crop is paired with
    the (C, D) ``category_refs`` row of its (N,) ``categories`` (-1: a background, no category; label 1 when it is a
    whole object) and ``negatives`` other categories drawn at random (label 0). With ``film=False`` the FiLM maps stay
    at zero: the same layers trained alike, unprimed (the control against which priming's gain is measured).
    The FiLM map and the calibration learn at ``lr``, the copied layers at a tenth of it (AdamW, cosine decay)."""
    if steps < 1 or batch_size < 1 or negatives < 1 or hard < negatives:
        raise ValueError(f"steps, batch_size and negatives must be >= 1 and hard >= negatives, got {steps}, "
                         f"{batch_size}, {negatives}, {hard}")
    if overlaps is not None and overlaps.shape != ids.shape:
        raise ValueError(f"overlaps must have one value per crop: {tuple(overlaps.shape)} for {len(ids)} crops")
    if not 0 <= scene_negatives <= negatives or (scene_negatives and (scenes is None or scenes.shape != ids.shape)):
        raise ValueError(f"scene_negatives must be in [0, negatives = {negatives}] and needs one scene index per crop, "
                         f"got {scene_negatives} with scenes {None if scenes is None else tuple(scenes.shape)}")
    if category_share and not (0.0 < category_share <= 1.0 and categories is not None and category_refs is not None
                               and categories.shape == ids.shape and len(category_refs) > negatives):
        raise ValueError(f"category_share must be in [0, 1] and, above 0, needs one category per crop and more than "
                         f"negatives = {negatives} category references, got {category_share}")
    whole = torch.ones(len(ids), dtype=torch.bool) if overlaps is None else overlaps >= fg_iou
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    row = {int(r): k for k, r in enumerate(ref_ids.tolist())}
    own = torch.tensor([row.get(int(i), -1) for i in ids.tolist()])
    in_scene = _scene_rows(own, scenes) if scene_negatives else None
    hard_rows = []
    for r in refs:  # hard negatives of every crop by the unprimed cosine (the primer's start), own reference excluded
        cos = torch.cat([primer.primed(maps[s : s + 512], r[:1])[0] @ r.T for s in range(0, len(maps), 512)])
        cos[own >= 0, own[own >= 0]] = -2.0
        hard_rows.append(cos.topk(min(hard, cos.shape[1]), dim=1).indices)
    for p in [*primer.film.parameters(), *primer.later.parameters()]:
        p.requires_grad_(film)
    head = HeadSteps(primer, lr, steps, log_every, desc="crop primer", slow=("top.", "pool.", "head."))
    primer.train()
    for _ in range(steps):
        m = int(rng.integers(len(refs)))
        pick = torch.from_numpy(rng.choice(len(maps), size=min(batch_size, len(maps)), replace=False))
        if category_share and rng.random() < category_share:  # a class cue: own category first, then random others
            own_c = categories[pick]
            key = torch.from_numpy(rng.random((len(pick), len(category_refs))))
            key[own_c >= 0, own_c[own_c >= 0]] = -1.0
            rows = key.argsort(1)[:, : negatives + 1]
            labels = torch.zeros_like(rows, dtype=torch.float)
            labels[own_c >= 0, 0] = whole[pick][own_c >= 0].float()
            head.step(_primed_bce(primer, maps[pick], category_refs, rows, labels, negatives), name="bce")
            continue
        cols = torch.from_numpy(rng.random((len(pick), hard_rows[m].shape[1])).argsort(1)[:, : negatives + 1])
        rows = hard_rows[m][pick[:, None], cols]
        known = own[pick] >= 0
        rows[known, 0] = own[pick][known]
        for b, k in enumerate(pick.tolist()) if in_scene is not None else ():
            others = in_scene[int(scenes[k])]
            others = others[others != int(own[k])]
            take = rng.permutation(others)[: min(scene_negatives, rows.shape[1] - 1)]
            rows[b, 1 : 1 + len(take)] = torch.from_numpy(take)
        labels = torch.zeros_like(rows, dtype=torch.float)
        labels[known, 0] = whole[pick][known].float()
        head.step(_primed_bce(primer, maps[pick], refs[m], rows, labels, negatives), name="bce")
    primer.eval()
    return head.logs


def _primed_bce(primer: CropPrimer, maps: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
                negatives: int) -> torch.Tensor:
    """(b, C, h, w) crop maps, each primed by the (b, k) ``rows`` of the (R, D) ``bank``: binary cross-entropy of
    the calibrated cosines against (b, k) ``labels``, the positives weighted by ``negatives``."""
    queries = bank[rows.reshape(-1)]
    cos = (primer(maps.repeat_interleave(rows.shape[1], dim=0), queries) * F.normalize(queries, dim=1)).sum(1)
    logit = primer.calibration[0] * cos + primer.calibration[1]
    return F.binary_cross_entropy_with_logits(logit, labels.reshape(-1), pos_weight=torch.tensor(float(negatives)))


def _scene_rows(own: torch.Tensor, scenes: torch.Tensor) -> Dict[int, np.ndarray]:
    """(N,) reference rows of the crops' identities (-1: none) and (N,) scene indices -> scene index -> (k,) numpy
    array of the distinct reference rows of the identities in that scene."""
    out: Dict[int, set] = {}
    for k, r in zip(scenes.tolist(), own.tolist()):
        out.setdefault(k, set()).update([r] if r >= 0 else [])
    return {k: np.array(sorted(v), np.int64) for k, v in out.items()}


def save_primer(primer: CropPrimer, path: str | Path, side: int, image_model: str = "") -> None:
    """Write the primer's trained parts (not the frozen image model), its layers, crop side and image model."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in primer.state_dict().items() if not k.startswith("embedder.")}
    with atomic_write(path) as f:
        f.write(save(state, metadata={"at": str(primer.at), "also_at": ",".join(map(str, primer.also_at)), "side": str(side), "image_model": image_model}))


def load_primer(path: str | Path, embedder: Embedder, side: Optional[int] = None) -> Tuple[CropPrimer, int]:
    """A primer from ``save_primer``'s file over ``embedder`` (checked against it, and against the crop ``side`` it
    will be used at, if given), and its crop side."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"crop primer {path} not found; train one with `metricvision detector primer`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "at" not in meta or "side" not in meta:
        raise ValueError(f"{path} is not a crop primer (no 'at' / 'side' in its metadata)")
    trained_side = int(meta["side"])
    if side is not None and side != trained_side:
        raise ValueError(f"the crop primer {path} reads {trained_side} px crops, not {side} px: set side={trained_side}")
    primer = CropPrimer(embedder, int(meta["at"]), [int(a) for a in meta.get("also_at", "").split(",") if a])
    state = load_file(str(path))
    expected = {k: v.shape for k, v in primer.state_dict().items() if not k.startswith("embedder.")}
    if set(state) != set(expected) or any(state[k].shape != expected[k] for k in expected):
        raise ValueError(f"{path} does not fit this image model (it was trained on {meta.get('image_model') or 'another model'})")
    primer.load_state_dict(state, strict=False)
    return primer.eval(), trained_side


class PrimedCrops(NamedTuple):
    """A prepared image's crops for ``query_detector_primed_crops``: (K, C, h, w) maps at the primer's layer, their
    (K, D) unprimed embeddings (None when only the primed cosine counts) and, by query, the (K, Q) primed cosines and
    crowding already computed (so that ``fit``'s grid primes each validation crop once per query)."""

    maps: torch.Tensor
    plain: Optional[torch.Tensor]
    primed: Dict[bytes, Tuple[torch.Tensor, torch.Tensor]]


@LOCALIZERS.register("query_detector_primed_crops")
class PrimedCropDetectorLocalizer(ModelCropDetectorLocalizer):
    """``query_detector_model_crops`` with priming in its second stage: each proposal's crop is run once through the
    image model up to the primer's layer; per query, the FiLM of those maps by the query and the primer's tuned layers
    give the crop's primed embedding, scored by its cosine with the query (less the parent's hubness correction, with
    the primed crop's crowding). With ``blend`` < 1 the score is ``blend`` x that primed cosine + (1 - ``blend``) x the
    unprimed crop's (each hubness-corrected), a residual form of priming; ``fit`` chooses ``blend`` in (0.5, 0.75, 1)
    unless it is given. The proposals are the unprimed detector's.

    Args: as ``query_detector_model_crops`` (without ``refiner`` or a crop-embedder ``mix``), plus
        primer: weights from ``metricvision detector primer``, trained on ``model`` at ``side``;
        blend: weight of the primed cosine in [0, 1] (None: ``fit`` chooses it).
    """

    def __init__(self, model: ImageTextModel, weights: str, primer: Optional[str] = None, blend: Optional[float] = None,
                 **kwargs: Any) -> None:
        if not primer:
            raise ValueError("query_detector_primed_crops needs primer=WEIGHTS (from `metricvision detector primer`)")
        if kwargs.get("refiner") or kwargs.pop("mix", None) not in (None, 1.0):
            raise ValueError("query_detector_primed_crops takes no refiner and no crop-embedder mix")
        if blend is not None and not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend (the primed cosine's weight) must be in [0, 1], got {blend}")
        super().__init__(model, weights, mix=1.0, **kwargs)
        if not isinstance(self.embedder, Embedder):
            raise ValueError("a primer modulates one backbone's layers: query_detector_primed_crops takes a single model, "
                             f"not a {type(self.embedder).__name__}")
        self.primer = load_primer(primer, self.embedder, self.side)[0]
        self.choose_blend, self.blend = blend is None, 1.0 if blend is None else blend

    @torch.no_grad()
    def embed_crops(self, image: torch.Tensor, boxes: torch.Tensor, maps: Optional[torch.Tensor] = None) -> PrimedCrops:
        """(3, H, W) image in [0, 1], (n, 4) boxes -> their square crops' maps at the primer's layer and (unless only
        the primed cosine can count) their unprimed embeddings."""
        maps = self.primer.trunk(crop_boxes(image, boxes, self.side))
        plain = None
        if self.choose_blend or self.blend < 1:
            plain = self.embedder.from_features(self.embedder.backbone[self.primer.at + 1 :](maps))
        return PrimedCrops(maps, plain, {})

    def cosines(self, emb: PrimedCrops, queries: torch.Tensor) -> torch.Tensor:
        """Prepared crops, (Q, D) normalized queries -> (K, Q) primed cosines, hubness-corrected, blended with the
        unprimed ones as ``blend`` says."""
        key = queries.detach().cpu().numpy().tobytes()
        if key not in emb.primed:
            primed = self.primer.primed(emb.maps, queries)  # (Q, K, D)
            crowd = None if self.references is None else self.crowding(primed.flatten(0, 1)).reshape(primed.shape[:2]).T
            emb.primed[key] = (torch.einsum("qkd,qd->kq", primed, queries), crowd)
        cos = self.hub_corrected(*emb.primed[key], queries)
        if self.blend == 1:
            return cos
        if emb.plain is None:
            raise ValueError(f"blend {self.blend} needs the unprimed embeddings: prepare the image with that blend set")
        return self.blend * cos + (1 - self.blend) * super().cosines(emb.plain[None], queries)

    def fit_grid(self) -> Dict[str, Sequence[float]]:
        """As ``query_detector_model_crops``, with ``blend`` too unless it was given."""
        return {**super().fit_grid(), **({"blend": (0.5, 0.75, 1.0)} if self.choose_blend else {})}
