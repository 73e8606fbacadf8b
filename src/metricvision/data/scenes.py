"""Scenes for detection and one-shot localization: emoji pasted onto photographs.

Each scene pastes 0-3 instances of a target emoji identity and 2-8 distractors (half of
them, where possible, near-misses from the target's subcategory), all rendered by one
vendor, onto a background photograph, at 24-160 px, rotated up to 30 degrees, with
brightness changes and blur; later objects may hide up to 40% of earlier ones. The
query is the target rendered by another vendor, or its name. Train scenes use training
identities and backgrounds, validation scenes other training identities, test scenes
the unseen test identities and held-out backgrounds. ``build_scenes`` writes images plus
COCO-format annotations (visible boxes and masks from the pasted alpha, uncompressed
RLE), deterministically, so any detector can be scored.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from metricvision._atomic import atomic_write
from metricvision.data.emoji import load_emoji

SCENE_SPLITS = ("train", "val", "test")
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class SceneConfig:
    """How scenes are drawn (all ranges inclusive).

    Attributes:
        size: scene side in pixels.
        sides: object side range (px, before rotation), drawn log-uniformly.
        max_rotation: largest rotation in degrees (either way).
        max_occlusion: largest hidden fraction of an object's pixels.
        targets: range of target instances.
        distractors: range of distractors.
        near_miss: probability that a distractor comes from the target's subcategory.
        blur: probability that an object is blurred (Gaussian, radius 0.5-1.5 px).
        scene_vendor: vendor of the pasted renderings; the query image is another vendor's.
    """

    size: int = 512
    sides: Tuple[int, int] = (24, 160)
    max_rotation: float = 30.0
    max_occlusion: float = 0.4
    targets: Tuple[int, int] = (0, 3)
    distractors: Tuple[int, int] = (2, 8)
    near_miss: float = 0.5
    blur: float = 0.3
    scene_vendor: str = "google"


def emoji_alpha(image: np.ndarray, tolerance: int = 12) -> np.ndarray:
    """(H, W, 3) emoji on white -> (H, W) float alpha: near-white pixels connected to the border are transparent."""
    white = (image.astype(np.int16) >= 255 - tolerance).all(axis=2)
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (~np.isin(labels, border[border > 0])).astype(np.float32)


def rle_encode(mask: np.ndarray) -> Dict[str, Any]:
    """(H, W) bool -> COCO uncompressed RLE (column-major run lengths, starting with zeros)."""
    flat = np.asarray(mask, np.int8).flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if len(counts) > 1 and counts[-1] == 0:  # the mask ends inside a run of ones
        counts.pop()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Dict[str, Any]) -> np.ndarray:
    """COCO uncompressed RLE -> (H, W) bool."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape((w, h)).T if h * w else np.zeros((h, w), bool)


def generated_backgrounds(n: int, size: int, seed: int = 0) -> List[Image.Image]:
    """``n`` synthetic backgrounds (colour gradients, noise, rectangles) for tests and a quick look."""
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size] / size
    for _ in range(n):
        a, b = rng.uniform(0, 255, (2, 3))
        img = a * (1 - xx[..., None]) + b * yy[..., None] + rng.normal(0, 12, (size, size, 3))
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.integers(0, size, 2)
            img[y0 : y0 + int(rng.integers(8, size // 2)), x0 : x0 + int(rng.integers(8, size // 2))] = rng.uniform(0, 255, 3)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def background_files(dirs: Sequence[str | Path]) -> List[Path]:
    """Image files under ``dirs`` (recursively), sorted."""
    files = sorted({p for d in dirs for p in Path(d).rglob("*") if p.suffix.lower() in BACKGROUND_SUFFIXES})
    if not files:
        raise FileNotFoundError(f"no background images ({', '.join(BACKGROUND_SUFFIXES)}) under {list(map(str, dirs))}")
    return files


def split_backgrounds(items: Sequence[Any], split: str) -> List[Any]:
    """Every 4th background (sorted) is held out for test scenes; train and val use the rest."""
    if split not in SCENE_SPLITS:
        raise ValueError(f"split must be one of {SCENE_SPLITS}, got '{split}'")
    held = [x for i, x in enumerate(items) if i % 4 == 0]
    rest = [x for i, x in enumerate(items) if i % 4]
    chosen = held if split == "test" else rest
    if not chosen:
        raise ValueError(f"{len(items)} backgrounds leave none for split '{split}'; give at least 2")
    return chosen


def _identities(split: str, vendor: str) -> Tuple[Dict[int, Dict[str, Any]], Dict[int, Dict[str, np.ndarray]]]:
    """Identity -> meta, and identity -> vendor -> image, for default-tone renderings of a scene split."""
    samples = load_emoji("test" if split == "test" else "train")
    meta: Dict[int, Dict[str, Any]] = {}
    images: Dict[int, Dict[str, np.ndarray]] = {}
    for s in samples:
        if s.meta["tone"] == "":
            meta[s.label] = {"name": s.caption, "category": s.meta["category"], "subcategory": s.meta["subcategory"]}
            images.setdefault(s.label, {})[s.meta["vendor"]] = s.image
    keep = sorted(lab for lab, v in images.items() if vendor in v and len(v) >= 2)
    if split != "test":  # every 5th training identity is kept for validation scenes
        val = val_identities(samples, vendor)
        keep = [lab for lab in keep if (lab in val) == (split == "val")]
    return {lab: meta[lab] for lab in keep}, {lab: images[lab] for lab in keep}


def val_identities(samples: Sequence[Any], vendor: str = SceneConfig.scene_vendor) -> set:
    """The labels of the training-split ``samples`` (emoji) that validation scenes are built from (every 5th identity
    with a default-tone ``vendor`` rendering and another vendor's): an identity model that should meet them unseen,
    as the test scenes' identities are, leaves them out (emoji dataset option ``hold_out: scene_val``)."""
    vendors: Dict[int, set] = {}
    for s in samples:
        if s.meta["tone"] == "":
            vendors.setdefault(s.label, set()).add(s.meta["vendor"])
    keep = sorted(lab for lab, v in vendors.items() if vendor in v and len(v) >= 2)
    return {lab for i, lab in enumerate(keep) if i % 5 == 0}


def paste_object(image: np.ndarray, cfg: SceneConfig, rng: np.random.Generator) -> Tuple[Image.Image, np.ndarray]:
    """Resize, rotate, recolour and blur one emoji -> (RGB image, alpha in [0, 1]) of the same (h, w)."""
    side = int(round(math.exp(rng.uniform(math.log(cfg.sides[0]), math.log(cfg.sides[1])))))
    rgba = np.dstack([image, (emoji_alpha(image) * 255).astype(np.uint8)])
    obj = Image.fromarray(rgba, "RGBA").resize((side, side), Image.BILINEAR)
    obj = obj.rotate(float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)), resample=Image.BILINEAR, expand=True)
    rgb, alpha = obj.convert("RGB"), obj.getchannel("A")
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < cfg.blur:
        radius = float(rng.uniform(0.5, 1.5))
        rgb, alpha = rgb.filter(ImageFilter.GaussianBlur(radius)), alpha.filter(ImageFilter.GaussianBlur(radius))
    return rgb, np.asarray(alpha, np.float32) / 255.0


def make_scene(background: Image.Image, objects: Sequence[np.ndarray], cfg: SceneConfig, rng: np.random.Generator
               ) -> Tuple[np.ndarray, List[Optional[np.ndarray]]]:
    """Paste ``objects`` in order onto the background -> ((S, S, 3) uint8, per object its visible (S, S) mask or None).

    An object is placed where it hides at most ``cfg.max_occlusion`` of every earlier
    object (30 tries); an object that finds no such place is left out (None).
    """
    s = cfg.size
    canvas = np.asarray(background.convert("RGB").resize((s, s), Image.BILINEAR), np.float32)
    owner = -np.ones((s, s), np.int64)  # which object a pixel shows (alpha >= 0.5)
    full_area: List[int] = []
    for n, image in enumerate(objects):
        rgb, alpha = paste_object(image, cfg, rng)
        h, w = alpha.shape
        placed = False
        for _ in range(30):
            x, y = int(rng.integers(0, max(1, s - w + 1))), int(rng.integers(0, max(1, s - h + 1)))
            cover = np.zeros((s, s), bool)
            cover[y : y + h, x : x + w] = alpha[: s - y, : s - x] >= 0.5
            left = np.bincount(owner[~cover & (owner >= 0)], minlength=n)  # what earlier objects would still show
            if all(left[k] >= (1 - cfg.max_occlusion) * full_area[k] for k in range(n) if full_area[k]):
                placed = True
                break
        if not placed:
            full_area.append(0)
            continue
        a = alpha[: s - y, : s - x, None]
        region = canvas[y : y + h, x : x + w]
        region[:] = a * np.asarray(rgb, np.float32)[: s - y, : s - x] + (1 - a) * region
        owner[cover] = n
        full_area.append(int(cover.sum()))
    masks = [(owner == n) if full_area[n] else None for n in range(len(objects))]
    return np.clip(canvas, 0, 255).astype(np.uint8), masks


def build_scenes(out: str | Path, split: str, n: int, seed: int = 0, backgrounds: Optional[Sequence[str | Path]] = None,
                 cfg: Optional[SceneConfig] = None) -> Path:
    """Write ``n`` scenes of a split to ``out``: images/, queries/ and annotations.json (COCO).

    Args:
        out: output folder.
        split: "train", "val" or "test" (identities and backgrounds as in the module doc).
        n: number of scenes.
        seed: random seed; the same arguments give the same files.
        backgrounds: folders of photographs (default: generated backgrounds).
        cfg: scene parameters.

    Returns:
        Path of annotations.json. Each image record carries its ``query`` (identity, name,
        query image file); each annotation its ``identity``, ``target`` flag, box, mask
        (RLE of the visible pasted alpha) and mask area; category ids are emoji categories.
    """
    cfg = cfg or SceneConfig()
    rng = np.random.default_rng([seed, SCENE_SPLITS.index(split) if split in SCENE_SPLITS else -1])
    bgs: List[Any] = split_backgrounds(background_files(backgrounds) if backgrounds else generated_backgrounds(8, 128, seed), split)
    meta, images = _identities(split, cfg.scene_vendor)
    labels = sorted(meta)
    categories = sorted({m["category"] for m in meta.values()})
    by_sub: Dict[str, List[int]] = {}
    for lab in labels:
        by_sub.setdefault(meta[lab]["subcategory"], []).append(lab)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(exist_ok=True)
    coco: Dict[str, Any] = {"info": {"split": split, "seed": seed, "config": asdict(cfg)}, "images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(categories)]}
    for i in range(n):
        target = int(rng.choice(labels))
        kinds = [True] * int(rng.integers(cfg.targets[0], cfg.targets[1] + 1))
        pool_near = [lab for lab in by_sub[meta[target]["subcategory"]] if lab != target]
        for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
            near = pool_near and rng.random() < cfg.near_miss
            lab = int(rng.choice(pool_near)) if near else target
            while lab == target:
                lab = int(rng.choice(labels))
            kinds.append(lab)
        order = rng.permutation(len(kinds))
        objs = [target if kinds[k] is True else kinds[k] for k in order]
        bg = bgs[int(rng.integers(len(bgs)))]
        scene, masks = make_scene(bg if isinstance(bg, Image.Image) else Image.open(bg), [images[o][cfg.scene_vendor] for o in objs], cfg, rng)
        name = f"{i:06d}.jpg"
        with atomic_write(out / "images" / name) as f:
            Image.fromarray(scene).save(f, format="JPEG", quality=92)
        qvendor = sorted(v for v in images[target] if v != cfg.scene_vendor)[0]
        qfile = f"queries/{target}_{qvendor}.png"
        if not (out / qfile).exists():
            with atomic_write(out / qfile) as f:
                Image.fromarray(images[target][qvendor]).save(f, format="PNG")
        coco["images"].append({"id": i + 1, "file_name": f"images/{name}", "width": cfg.size, "height": cfg.size,
                               "background": str(bg) if not isinstance(bg, Image.Image) else "generated",
                               "query": {"identity": target, "name": meta[target]["name"], "file_name": qfile,
                                         "category_id": categories.index(meta[target]["category"]) + 1}})
        for obj, mask in zip(objs, masks):
            if mask is None:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "iscrowd": 0,
                "category_id": categories.index(meta[obj]["category"]) + 1, "identity": obj, "name": meta[obj]["name"],
                "target": obj == target, "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "area": int(mask.sum()), "segmentation": rle_encode(mask)})
    path = out / "annotations.json"
    with atomic_write(path) as f:
        f.write(json.dumps(coco).encode())
    return path
