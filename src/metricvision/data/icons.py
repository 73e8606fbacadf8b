"""Icons: one freedesktop icon name drawn by different icon themes (instance level, across styles).

A sample is one drawing of an icon name by one theme at one design size; its label is the
icon name (the identity), shared across themes and sizes. ``meta`` carries the category
(the freedesktop context: apps, actions, devices, mimetypes, places, status), the theme and
the design size (0 for scalable). Built by `metricvision data fetch icons` from Debian's icon
theme packages: SVGs rasterized with cairosvg, PNGs used as they are, both composited on white.
The split is class-disjoint and deterministic: names in sorted order alternate train / test.
"""
from __future__ import annotations

import configparser
import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from metricvision.data.debian import build_from_packages
from metricvision.data.emoji_build import png_on_white
from metricvision.data.packfile import cache_dir, load_packed, save_packed
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample

# Debian package -> the theme folder under usr/share/icons (its light, main variant)
PACKAGES: Dict[str, str] = {
    "adwaita-icon-theme": "Adwaita", "breeze-icon-theme": "breeze", "papirus-icon-theme": "Papirus",
    "elementary-xfce-icon-theme": "elementary-xfce", "oxygen-icon-theme": "oxygen",
    "tango-icon-theme": "Tango", "numix-icon-theme": "Numix", "mate-icon-theme": "mate", "gnome-icon-theme": "gnome",
    "moka-icon-theme": "Moka", "faba-icon-theme": "Faba", "paper-icon-theme": "Paper", "yaru-theme-icon": "Yaru",
    "deepin-icon-theme": "bloom", "obsidian-icon-theme": "Obsidian",
}
CONTEXTS: Dict[str, str] = {
    "Actions": "actions", "Applications": "apps", "Devices": "devices", "MimeTypes": "mimetypes",
    "Places": "places", "Status": "status",
}
DEFAULT_SIZE = 48
DESIGN_SIZES = (22, 24, 32, 48, 64)
FETCH = "metricvision data fetch icons"
Source = Tuple[int, str, Path]  # (design size, 0 = scalable; category or "" when the context says none; file)


def theme_sources(theme_dir: Path, design_sizes: Tuple[int, ...] = DESIGN_SIZES) -> Dict[str, List[Source]]:
    """Icon files of one theme per icon name, read through its index.theme, largest design first.

    Kept: directories of scale 1 under scalable/ or of a size in ``design_sizes``; regular
    files only (a symlink is an alias of another name or size); no symbolic (monochrome) icons;
    a drawing whose bytes another name already has is skipped. Directories of the "Legacy"
    context (Adwaita's full-colour icons) are kept with category "" (taken from other themes).
    """
    index = theme_dir / "index.theme"
    if not index.exists():
        raise FileNotFoundError(f"{index} not found (expected an icon theme folder)")
    cfg = configparser.RawConfigParser(strict=False, interpolation=None)
    cfg.read(index, encoding="utf-8")
    out: Dict[str, List[Source]] = {}
    seen: set = set()
    for d in cfg.get("Icon Theme", "Directories", fallback="").split(","):
        d = d.strip()
        if not d or not cfg.has_section(d) or "symbolic" in d or cfg.get(d, "Scale", fallback="1") != "1":
            continue
        context = cfg.get(d, "Context", fallback="")
        if context not in CONTEXTS and context != "Legacy":
            continue
        scalable = d.split("/")[0] == "scalable"
        size = int(cfg.get(d, "Size", fallback="0"))
        if not scalable and size not in design_sizes:
            continue
        folder = theme_dir / d
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        for f in files:
            if f.suffix not in (".svg", ".png") or f.is_symlink() or "symbolic" in f.name:
                continue
            digest = hashlib.sha1(f.read_bytes()).digest()
            if digest in seen:
                continue
            seen.add(digest)
            out.setdefault(f.name[: -len(f.suffix)], []).append((0 if scalable else size, CONTEXTS.get(context, ""), f))
    for sources in out.values():
        sources.sort(key=lambda s: (-(s[0] or 10_000), str(s[2])))
    return out


def rasterize(path: Path, size: int) -> Optional[np.ndarray]:
    """An SVG (cairosvg) or PNG icon -> (size, size, 3) uint8 on a white background; None if unreadable."""
    try:
        if path.suffix == ".svg":
            import cairosvg

            # unsafe: Illustrator exports declare XML entities; these files come from signed Debian packages
            png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size, unsafe=True)
        else:
            png = path.read_bytes()
        return png_on_white(png, size)
    except Exception:  # one broken drawing is one image fewer, not a failed build
        return None


def build(icons_root: Path, out: Path, size: int = DEFAULT_SIZE, themes: Optional[List[str]] = None,
          min_themes: int = 2, per_theme: int = 2, licences: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """Write the dataset file ``out`` from unpacked themes under ``icons_root`` (usr/share/icons).

    Args:
        themes: theme folder names (default: those of PACKAGES found there).
        min_themes: keep icon names drawn by at least this many themes.
        per_theme: at most this many design sizes of one name per theme (largest first).
        licences: package -> licence, recorded in the file.

    Returns:
        counts: images, identities, themes, unreadable files (skipped), and identities per category.
    """
    themes = themes or [t for t in PACKAGES.values() if (icons_root / t).is_dir()]
    if not themes:
        raise FileNotFoundError(f"no icon theme of {sorted(PACKAGES.values())} under {icons_root}")
    per = {t: theme_sources(icons_root / t) for t in themes}
    names = sorted(n for n in set().union(*per.values()) if sum(n in p for p in per.values()) >= min_themes)
    images, labels, theme_ids, sizes, identities, unreadable = [], [], [], [], [], 0
    for name in names:
        categories = [c for t in themes for _, c, _ in per[t].get(name, []) if c]
        if not categories:
            continue
        rows = [(ti, design, rasterize(f, size))
                for ti, t in enumerate(themes) for design, _, f in per[t].get(name, [])[:per_theme]]
        unreadable += sum(img is None for _, _, img in rows)
        rows = [r for r in rows if r[2] is not None]
        if len({ti for ti, _, _ in rows}) < min_themes:
            continue
        label = len(identities)
        category = max(sorted(set(categories)), key=categories.count)  # a tie: the first by name
        identities.append({"name": name, "category": category})
        for ti, design, img in rows:
            images.append(img)
            labels.append(label)
            theme_ids.append(ti)
            sizes.append(design)
    if not images:
        raise ValueError(f"no icon name is drawn by >= {min_themes} of the themes {themes} under {icons_root}")
    save_packed(out, np.stack(images), {"identities": identities, "themes": themes, "licences": licences or {}},
                labels=np.array(labels, np.int32), themes=np.array(theme_ids, np.int8), sizes=np.array(sizes, np.int16))
    counts = {"images": len(images), "identities": len(identities), "themes": len(themes), "unreadable_files": unreadable}
    for c in CONTEXTS.values():
        counts[f"identities_{c}"] = sum(i["category"] == c for i in identities)
    return counts


def default_path(size: int = DEFAULT_SIZE) -> Path:
    """Where `metricvision data fetch icons --size SIZE` writes its file."""
    return cache_dir("icons") / f"icons_{size}.npz"


def fetch_and_build(size: int = DEFAULT_SIZE, out: Optional[Path] = None) -> Dict[str, int]:
    """Download and unpack the icon theme packages into a temporary folder, print their licences, build."""
    return build_from_packages(PACKAGES, lambda root, licences: build(
        root / "usr" / "share" / "icons", out or default_path(size), size, licences=licences))


@register_dataset(
    "icons", protocol="retrieval", fetch="icons",
    licence="GPL / LGPL / CC-BY-SA / public domain per theme (see NOTICE); built locally, not shipped",
    description="3,790 icon names drawn by 15 Debian icon themes, 23,372 images (`data fetch icons`); "
                "names alternate train / test",
)
def icons_splits(path: Optional[str] = None) -> Splits:
    """{"train": [...], "test": [...]} of the icons dataset file (default: the fetched 48 px one)."""
    z = load_packed(str(path or default_path()), FETCH)
    identities, themes = z["meta"]["identities"], z["meta"]["themes"]
    out: Splits = {"train": [], "test": []}
    for img, label, ti, design in zip(z["images"], z["labels"].tolist(), z["themes"].tolist(), z["sizes"].tolist()):
        ident, split = identities[label], "train" if label % 2 == 0 else "test"
        out[split].append(Sample(
            image=img, label=label, caption=ident["name"], split=split,
            meta={"category": ident["category"], "theme": themes[ti], "size": design, "name": ident["name"]},
        ))
    return out
