"""Glyphs: the same character drawn by different font families and styles (Omniglot-style).

A sample is one character rendered by one font file (family x style) with PIL's FreeType;
its label is the character (the class), shared across fonts (the instances). ``meta``
carries the script, the character and the font. Built by `metricvision data fetch glyphs`
from Debian's free font packages. Two deterministic, class-disjoint splits:

- ``glyphs`` (retrieval): characters in script / code point order alternate train / test;
- ``glyphs_fewshot``: characters of background scripts train, of evaluation scripts test
  (N-way K-shot episodes on "test", as Omniglot's background / evaluation alphabets).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from metricvision.data.debian import build_from_packages
from metricvision.data.packfile import cache_dir, load_packed, save_packed
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample

PACKAGES = (
    "fonts-noto-core", "fonts-noto-extra", "fonts-noto-ui-core", "fonts-noto-mono", "fonts-dejavu-core",
    "fonts-freefont-ttf", "fonts-liberation2", "fonts-sil-gentiumplus", "fonts-ebgaramond", "fonts-linuxlibertine",
    "fonts-urw-base35", "fonts-texgyre", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-cantarell",
    "fonts-open-sans", "fonts-roboto-unhinted", "fonts-lato",
)
# script -> (letter ranges, inclusive; background script?)
SCRIPTS: Dict[str, Tuple[Tuple[Tuple[int, int], ...], bool]] = {
    "Latin": (((0x41, 0x5A), (0x61, 0x7A)), True),
    "Greek": (((0x391, 0x3A9), (0x3B1, 0x3C9)), True),
    "Cyrillic": (((0x410, 0x44F),), True),
    "Hebrew": (((0x5D0, 0x5EA),), True),
    "Arabic": (((0x621, 0x64A),), True),
    "Devanagari": (((0x905, 0x939),), True),
    "Bengali": (((0x985, 0x9B9),), True),
    "Gujarati": (((0xA85, 0xAB9),), True),
    "Tamil": (((0xB85, 0xBB9),), True),
    "Thai": (((0xE01, 0xE2E),), True),
    "Georgian": (((0x10D0, 0x10FA),), True),
    "Ethiopic": (((0x1200, 0x1247),), True),
    "Khmer": (((0x1780, 0x17B3),), True),
    "Runic": (((0x16A0, 0x16EA),), True),
    "Tifinagh": (((0x2D30, 0x2D67),), True),
    "Armenian": (((0x531, 0x556), (0x561, 0x586)), False),
    "Syriac": (((0x710, 0x72F),), False),
    "Thaana": (((0x780, 0x7A5),), False),
    "NKo": (((0x7CA, 0x7EA),), False),
    "Gurmukhi": (((0xA05, 0xA39),), False),
    "Oriya": (((0xB05, 0xB39),), False),
    "Telugu": (((0xC05, 0xC39),), False),
    "Kannada": (((0xC85, 0xCB9),), False),
    "Malayalam": (((0xD05, 0xD39),), False),
    "Sinhala": (((0xD85, 0xDC6),), False),
    "Lao": (((0xE81, 0xEAE),), False),
    "Tibetan": (((0xF40, 0xF6C),), False),
    "Myanmar": (((0x1000, 0x102A),), False),
    "Cherokee": (((0x13A0, 0x13F4),), False),
    "Canadian Aboriginal": (((0x1401, 0x1440),), False),
    "Ol Chiki": (((0x1C5A, 0x1C7D),), False),
}
DEFAULT_SIZE = 32
FETCH = "metricvision data fetch glyphs"
_EM = 64  # rendering size in pixels before the resize to ``size``


def font_files(root: Path) -> List[Path]:
    """Every .ttf / .otf font file under ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file())


def render_glyph(font: ImageFont.FreeTypeFont, char: str, size: int) -> Optional[np.ndarray]:
    """``char`` in black on white, centred on the font's em box: (size, size) uint8, None when blank.

    Glyphs keep their size relative to the em (x-height vs cap height), so 'o' and 'O' differ.
    """
    canvas = Image.new("L", (_EM * 5 // 4, _EM * 5 // 4), 255)
    ImageDraw.Draw(canvas).text((canvas.width // 2, canvas.height // 2), char, font=font, fill=0, anchor="mm")
    img = np.asarray(canvas.resize((size, size), Image.LANCZOS))
    return img if img.min() < 128 else None


def build(fonts_root: Path, out: Path, size: int = DEFAULT_SIZE, min_fonts: int = 2, max_fonts: int = 40,
          licences: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """Write the dataset file ``out`` from the font files under ``fonts_root``.

    Args:
        min_fonts: keep characters drawn by at least this many fonts (after removing identical renderings).
        max_fonts: at most this many fonts per character, spread evenly over the sorted font files.
        licences: package -> licence, recorded in the file.

    Returns:
        counts: images, identities (characters), fonts, scripts, and characters of background / evaluation scripts.
    """
    from fontTools.ttLib import TTFont

    files = font_files(fonts_root)
    if not files:
        raise FileNotFoundError(f"no .ttf / .otf font under {fonts_root}")
    cmaps: List[set] = []
    for f in files:
        try:
            with TTFont(f, lazy=True, fontNumber=0) as tt:
                cmaps.append(set(tt.getBestCmap() or {}))
        except Exception:  # a font fontTools cannot parse is one instance fewer, not a failed build
            cmaps.append(set())
    loaded: Dict[int, ImageFont.FreeTypeFont] = {}
    images, labels, font_ids, identities = [], [], [], []
    for script, (ranges, background) in SCRIPTS.items():
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                covering = [i for i, c in enumerate(cmaps) if cp in c]
                if len(covering) > max_fonts:
                    covering = [covering[int(round(j))] for j in np.linspace(0, len(covering) - 1, max_fonts)]
                rows, seen = [], set()
                for i in covering:
                    if i not in loaded:
                        loaded[i] = ImageFont.truetype(str(files[i]), _EM)
                    img = render_glyph(loaded[i], chr(cp), size)
                    if img is not None and img.tobytes() not in seen:
                        seen.add(img.tobytes())
                        rows.append((img, i))
                if len(rows) < min_fonts:
                    continue
                label = len(identities)
                identities.append({"char": chr(cp), "codepoint": cp, "script": script, "background": background})
                for img, i in rows:
                    images.append(img)
                    labels.append(label)
                    font_ids.append(i)
    if not images:
        raise ValueError(f"no character of {list(SCRIPTS)} is drawn by >= {min_fonts} fonts under {fonts_root}")
    used = sorted(set(font_ids))
    remap = {i: k for k, i in enumerate(used)}
    fonts = [{"name": " ".join(loaded[i].getname()), "file": files[i].name} for i in used]
    save_packed(out, np.stack(images), {"identities": identities, "fonts": fonts, "licences": licences or {}},
                labels=np.array(labels, np.int32), fonts=np.array([remap[i] for i in font_ids], np.int32))
    return {
        "images": len(images), "identities": len(identities), "fonts": len(fonts),
        "scripts": len({i["script"] for i in identities}),
        "identities_background": sum(i["background"] for i in identities),
        "identities_evaluation": sum(not i["background"] for i in identities),
    }


def default_path(size: int = DEFAULT_SIZE) -> Path:
    """Where `metricvision data fetch glyphs --size SIZE` writes its file."""
    return cache_dir("glyphs") / f"glyphs_{size}.npz"


def fetch_and_build(size: int = DEFAULT_SIZE, out: Optional[Path] = None) -> Dict[str, int]:
    """Download and unpack the font packages into a temporary folder, print their licences, build."""
    return build_from_packages(PACKAGES, lambda root, licences: build(
        root / "usr" / "share" / "fonts", out or default_path(size), size, licences=licences))


def load_glyphs(path: Optional[str | Path], train: Sequence[bool]) -> Splits:
    """Samples of a glyphs file split by ``train[label]`` (True: "train", False: "test")."""
    z = load_packed(str(path or default_path()), FETCH)
    identities, fonts = z["meta"]["identities"], z["meta"]["fonts"]
    out: Splits = {"train": [], "test": []}
    for img, label, fi in zip(z["images"], z["labels"].tolist(), z["fonts"].tolist()):
        ident, split = identities[label], "train" if train[label] else "test"
        out[split].append(Sample(
            image=img, label=label, caption=ident["char"], split=split,
            meta={"script": ident["script"], "char": ident["char"], "codepoint": ident["codepoint"],
                  "font": fonts[fi]["name"], "font_file": fonts[fi]["file"]},
        ))
    return out


_LICENCE = "OFL-1.1 (Noto, most fonts), GPL + font exception, GUST, Apache-2.0 (see NOTICE); built locally, not shipped"


@register_dataset(
    "glyphs", protocol="retrieval", licence=_LICENCE, fetch="glyphs",
    description="1,545 characters of 31 scripts x 1,013 free fonts, 46,044 images (`data fetch glyphs`); "
                "characters alternate train / test",
)
def glyphs_splits(path: Optional[str] = None) -> Splits:
    """{"train": [...], "test": [...]} of the glyphs file (default: the fetched 32 px one); retrieval split."""
    n = len(load_packed(str(path or default_path()), FETCH)["meta"]["identities"])
    return load_glyphs(path, [label % 2 == 0 for label in range(n)])


@register_dataset(
    "glyphs_fewshot", protocol="fewshot", licence=_LICENCE, fetch="glyphs",
    description="glyphs, Omniglot-style: 758 characters of 15 background scripts train, 787 of 16 evaluation scripts test",
)
def glyphs_fewshot_splits(path: Optional[str] = None) -> Splits:
    """{"train": background scripts, "test": evaluation scripts} of the glyphs file."""
    identities = load_packed(str(path or default_path()), FETCH)["meta"]["identities"]
    return load_glyphs(path, [i["background"] for i in identities])
