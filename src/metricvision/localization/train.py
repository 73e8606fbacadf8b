"""Training a QueryDetector on scenes written by ``metricvision.data.scenes.build_scenes``.

The Embedder is frozen, so its features are computed once per scene and the head is
trained on them (``train_detector``). ``identity_references`` gives the reference
embeddings the region embeddings are trained against: each identity's rendering by
another vendor than the scenes', and its name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from metricvision._atomic import atomic_write
from metricvision.localization.crops import CropEmbedder
from metricvision.localization.detector import QueryDetector, HeadSteps, detection_losses
from metricvision.losses import LOSSES

PRIME_TARGETS = ("query", "all")


@dataclass
class SceneSet:
    """Scenes read from a COCO file: image paths, per image boxes (m, 4) x0 y0 x1 y1, identities (m,), categories (m,), mask areas (m,), queries, RLE masks."""

    images: List[Path]
    boxes: List[np.ndarray]
    identities: List[np.ndarray]
    categories: List[np.ndarray]
    areas: List[np.ndarray]
    queries: List[dict]
    category_names: Dict[int, str]
    segmentations: List[List[dict]]


def read_scenes(annotations: str | Path, limit: int = 0) -> SceneSet:
    """A SceneSet from an annotations.json written by ``build_scenes`` (file names relative to its folder); ``limit`` > 0 keeps the first scenes."""
    path = Path(annotations)
    if path.is_dir():
        path = path / "annotations.json"
    if not path.exists():
        raise FileNotFoundError(f"scene annotations {path} not found; write them with `metricvision scenes build`")
    data = json.loads(path.read_text())
    by_image: Dict[int, list] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = SceneSet([], [], [], [], [], [], {c["id"]: c["name"] for c in data["categories"]}, [])
    for im in data["images"][: limit or None]:
        anns = by_image[im["id"]]
        out.images.append(path.parent / im["file_name"])
        out.boxes.append(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                   for a in anns], np.float64).reshape(-1, 4))
        out.identities.append(np.array([a["identity"] for a in anns], np.int64))
        out.categories.append(np.array([a["category_id"] for a in anns], np.int64))
        out.areas.append(np.array([a["area"] for a in anns], np.float64))
        out.segmentations.append([a["segmentation"] for a in anns])
        out.queries.append({**im["query"], "file_name": str(path.parent / im["query"]["file_name"])})
    return out


def image_tensor(path: str | Path) -> torch.Tensor:
    """An image file -> (3, H, W) floats in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)


def identity_references(model, split: str, vendor: str = "google") -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Identities of an emoji split and their reference embeddings: (R,) ids, [(R, D) other-vendor images, (R, D) names].

    ``model`` is a :class:`metricvision.kb.model.ImageTextModel`; names are used only when it has a text model.
    """
    from metricvision.data.emoji import load_emoji

    chosen: Dict[int, Tuple[np.ndarray, str]] = {}
    for s in load_emoji(split):
        if s.meta["tone"] == "" and s.meta["vendor"] != vendor and s.label not in chosen:
            chosen[s.label] = (s.image, s.caption)
    ids = sorted(chosen)
    refs = [model.encode_images([chosen[i][0] for i in ids])]
    if model.card.text_model:
        refs.append(model.encode_text([chosen[i][1] for i in ids]))
    return torch.tensor(ids), refs


def scene_features(detector: QueryDetector, scenes: SceneSet) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Frozen ``detector.features`` of every scene, computed once and kept in half precision, and the scene size."""
    feats = []
    for s in tqdm(range(0, len(scenes.images), 16), desc="scene features", leave=False, dynamic_ncols=True):
        batch = torch.stack([image_tensor(p) for p in scenes.images[s : s + 16]])
        feats.append(detector.features(batch).half())
    return torch.cat(feats), tuple(image_tensor(scenes.images[0]).shape[-2:])


def train_detector(detector: QueryDetector, scenes: SceneSet, ref_ids: torch.Tensor, refs: Sequence[torch.Tensor],
                   steps: int = 2000, batch_size: int = 8, lr: float = 1e-3, loss: str = "infonce", seed: int = 0,
                   log_every: int = 100, prime_targets: str = "query") -> List[dict]:
    """Train the detector head (AdamW, cosine schedule) on the scenes; returns the logs every ``log_every`` steps.

    Objects whose identity has no reference (id -1) are still objects (objectness, box);
    they have no positive reference in the metric losses. A primed detector is primed, per
    scene and step, by the reference (from one of ``refs``, drawn at random) of one identity:
    half the time the scene's query target (which may be absent), otherwise an identity drawn
    among those in the scene that have a reference; scenes whose target has no reference are
    left out. With ``prime_targets="query"`` its targets are that identity's objects only; with
    "all", every object, as unprimed (the prime then serves the region embeddings' match).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if prime_targets not in PRIME_TARGETS:
        raise ValueError(f"prime_targets must be one of {PRIME_TARGETS}, got '{prime_targets}'")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats_all, size = scene_features(detector, scenes)
    known = set(ref_ids.tolist())
    boxes = [torch.from_numpy(b).float() for b in scenes.boxes]
    ids = [torch.tensor([i if i in known else -1 for i in x.tolist()], dtype=torch.long) for x in scenes.identities]
    primed = detector.primed
    row = {int(r): k for k, r in enumerate(ref_ids.tolist())}
    targets = [row.get(int(q["identity"]), -1) for q in scenes.queries]
    usable = np.array([k for k, t in enumerate(targets) if t >= 0 or not primed])
    present = [sorted(row[i] for i in set(x.tolist()) if i >= 0) for x in ids]  # reference rows in each scene
    metric = LOSSES.create(loss)
    head = HeadSteps(detector, lr, steps, log_every, desc="detector")
    detector.train()
    for _ in range(steps):
        pick = rng.choice(usable, size=min(batch_size, len(usable)), replace=False)
        b, x, primes = [boxes[i] for i in pick], [ids[i] for i in pick], None
        if primed:  # one identity per scene: its reference the prime, its objects the targets ("query")
            rows = [targets[i] if rng.random() < 0.5 or not present[i] else present[i][int(rng.integers(len(present[i])))]
                    for i in pick]
            if prime_targets == "query":
                b, x = [bb[xx == ref_ids[r]] for bb, xx, r in zip(b, x, rows)], [xx[xx == ref_ids[r]] for xx, r in zip(x, rows)]
            primes = torch.stack([refs[int(rng.integers(len(refs)))][r] for r in rows])
        total, info = detection_losses(detector, feats_all[pick].float(), size, b, x, refs, ref_ids, metric, primes=primes)
        head.step(total, **info)
    detector.eval()
    return head.logs


def save_detector(detector: QueryDetector, path: str | Path, image_model: Optional[str] = None,
                  crop: Optional[CropEmbedder] = None) -> None:
    """Write the head's weights and those of the crop embedder, if any (not the frozen Embedder) as safetensors."""
    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in detector.state_dict().items() if not k.startswith("embedder.")}
    meta = {"image_model": image_model or "", "hidden": str(detector.trunk[0].out_channels), "radius": str(detector.radius),
            "prime": str(int(detector.primed)), "prime_at": ",".join(map(str, detector.prime_at))}
    if crop is not None:
        state.update({f"crop.{k}": v.contiguous() for k, v in crop.state_dict().items() if not k.startswith("embedder.")})
        meta.update({"crop_split": str(crop.split), "crop_side": str(crop.side), "crop_pad": str(crop.pad)})
    with atomic_write(path) as f:
        f.write(save(state, metadata=meta))


def init_head(detector: QueryDetector, path: str | Path) -> None:
    """Start ``detector``'s head (trunk, objectness, boxes, residual, match) from the weights of another detector,
    e.g. an unprimed one that is to be primed; its FiLM maps, if any, keep their identity start."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"detector weights {path} not found; train them with `metricvision detector train`")
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(("crop.", "film.", "films."))}
    own = {k for k in detector.state_dict() if not k.startswith(("embedder.", "film.", "films."))}
    if set(state) != own or any(state[k].shape != detector.state_dict()[k].shape for k in own):
        raise ValueError(f"{path} does not hold a head of this detector's shape (hidden {detector.trunk[0].out_channels})")
    detector.load_state_dict(state, strict=False)


def load_detector(path: str | Path, embedder) -> Tuple[QueryDetector, Optional[CropEmbedder]]:
    """A QueryDetector over ``embedder`` with the head weights of ``path``, and its CropEmbedder if ``path`` has one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"detector weights {path} not found; train them with `metricvision detector train`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    det = QueryDetector(embedder, hidden=int(meta.get("hidden", 128)), radius=float(meta.get("radius", 1.5)),
                        prime=meta.get("prime", "0") == "1",
                        prime_at=[int(k) for k in meta.get("prime_at", "").split(",") if k])
    state = load_file(str(path))
    _load_part(det, {k: v for k, v in state.items() if not k.startswith("crop.")}, path)
    crop = None
    if "crop_split" in meta:
        crop = CropEmbedder(embedder, split=int(meta["crop_split"]), side=int(meta["crop_side"]), pad=float(meta["crop_pad"]))
        _load_part(crop, {k[5:]: v for k, v in state.items() if k.startswith("crop.")}, path)
        crop.eval()
    return det.eval(), crop


def _load_part(module: torch.nn.Module, state: Dict[str, torch.Tensor], path: str | Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("embedder.")] + list(unexpected)
    if bad:
        raise ValueError(f"{path} does not match the {type(module).__name__}: keys {bad[:5]}")
