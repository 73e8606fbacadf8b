"""Build emoji dataset files (.npz) from the emoji-datasource-<vendor> npm packages.

Each sample is one rendering (vendor x skin tone) of an emoji; its label is the emoji
identity, shared by every vendor and skin tone (instance level).
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from metricvision.data.packfile import save_packed

VERSION = "16.0.0"
LICENSES: Dict[str, str] = {
    "google": "Apache-2.0 (Noto Emoji, Google)",
    "twitter": "CC-BY-4.0 (Twemoji, Twitter/X)",
    "apple": "Apple proprietary: personal/research use only, do not redistribute",
    "facebook": "Facebook proprietary: personal/research use only, do not redistribute",
    "openmoji": "CC-BY-SA-4.0 (OpenMoji); package 'openmoji', SVG",
    "fluentui": "MIT (Microsoft Fluent UI Emoji); package 'fluentui-emoji', SVG",
}
DATASOURCE_VENDORS = ("google", "twitter", "apple", "facebook")


def npm_pack(package: str, dest: Path) -> Path:
    """Fetch ``package`` with `npm pack` into ``dest`` and return the unpacked folder."""
    try:
        out = subprocess.run(["npm", "pack", package, "--silent"], cwd=dest, check=True, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as e:
        raise FileNotFoundError("npm is needed to fetch emoji images (apt-get install npm)") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"npm pack {package} failed: {e.stderr.strip()[-500:]}") from e
    tgz = dest / out.stdout.strip().splitlines()[-1]
    target = dest / package.split("@")[0]
    with tarfile.open(tgz) as tf:
        tf.extractall(target, filter="data")
    tgz.unlink()
    return target / "package"


def png_on_white(png: bytes, size: int) -> np.ndarray:
    """RGBA PNG bytes -> (size, size, 3) uint8 on a white background."""
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(bg, im).convert("RGB").resize((size, size), Image.LANCZOS))


def build(vendor_dirs: Dict[str, Path], size: int, out: Path) -> Dict[str, int]:
    """Write the dataset file ``out`` from unpacked datasource packages, one per vendor.

    Returns:
        counts: images, identities, and images per vendor.
    """
    if not vendor_dirs:
        raise ValueError("no vendors given")
    meta_json = next(iter(vendor_dirs.values())) / "emoji.json"
    if not meta_json.exists():
        raise FileNotFoundError(f"{meta_json} not found (expected an emoji-datasource package folder)")
    entries = sorted(json.loads(meta_json.read_text()), key=lambda e: e["sort_order"])
    images: List[np.ndarray] = []
    labels: List[int] = []
    vendors: List[int] = []
    tones: List[str] = []
    identities = []
    vendor_names = list(vendor_dirs)
    for e in entries:
        renderings = [("", e["image"])] + [(k, v["image"]) for k, v in (e.get("skin_variations") or {}).items()]
        rows = []
        for vi, vendor in enumerate(vendor_names):
            for tone, fname in renderings:
                p = vendor_dirs[vendor] / "img" / vendor / "64" / fname
                if p.exists():
                    rows.append((png_on_white(p.read_bytes(), size), vi, tone))
        if not rows:
            continue
        label = len(identities)
        identities.append({
            "unified": e["unified"], "name": (e.get("name") or e["short_name"]).lower(),
            "short_names": e.get("short_names", []), "category": e.get("category", ""),
            "subcategory": e.get("subcategory", ""), "sort_order": e["sort_order"],
        })
        for img, vi, tone in rows:
            images.append(img)
            labels.append(label)
            vendors.append(vi)
            tones.append(tone)
    save_packed(
        out, np.stack(images), labels=np.array(labels, np.int32), vendors=np.array(vendors, np.int8), tones=np.array(tones),
        vendor_names=np.array(vendor_names), identities=np.array(json.dumps(identities)), size=np.array(size),
    )
    counts = {"images": len(images), "identities": len(identities)}
    counts.update({f"images_{v}": int(np.sum(np.array(vendors) == i)) for i, v in enumerate(vendor_names)})
    return counts


def fetch_and_build(vendors: Sequence[str], size: int, out: Path, workdir: Optional[Path] = None) -> Dict[str, int]:
    """npm-pack each vendor's datasource package and build ``out``; prints each vendor's licence."""
    unknown = [v for v in vendors if v not in DATASOURCE_VENDORS]
    if unknown:
        raise ValueError(
            f"vendors {unknown} are not available as 64 px PNG packages; expected some of {DATASOURCE_VENDORS}"
            " (openmoji and fluentui ship SVG only)"
        )
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        dirs = {}
        for v in vendors:
            print(f"fetching emoji-datasource-{v}@{VERSION}: licence {LICENSES[v]}", flush=True)
            dirs[v] = npm_pack(f"emoji-datasource-{v}@{VERSION}", Path(tmp))
        return build(dirs, size, out)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry of scripts/build_emoji.py."""
    from metricvision.data.emoji import PACKAGED_FILE

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vendors", default="google,twitter")
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--out", type=Path, default=PACKAGED_FILE)
    ap.add_argument("--source", type=Path, default=None, help="folder with unpacked <vendor>/package dirs (skips npm)")
    a = ap.parse_args(argv)
    vendors = a.vendors.split(",")
    if a.source:
        counts = build({v: a.source / v / "package" for v in vendors}, a.size, a.out)
    else:
        counts = fetch_and_build(vendors, a.size, a.out)
    print(json.dumps(counts), f"-> {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")
    return 0
