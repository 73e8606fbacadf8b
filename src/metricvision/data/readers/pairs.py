"""Verification benchmarks given as pairs: LFW faces, Brown / UBC patches, HPatches.

Pair splits come as two aligned lists "left" and "right"; sample i of each forms pair i,
with meta "same" (bool) and, for LFW, "fold" (0-9).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PIL import Image

from metricvision.data.readers.base import DatasetFormatError, as_int, find_root, label_ids, read_rows, require
from metricvision.data.registry import Splits, register_dataset
from metricvision.data.sample import Sample

LFW_FORMAT = "a header '<folds> <pairs per fold>' then, per fold, that many '<name> <i> <j>' and '<name> <i> <name> <j>' lines"


@register_dataset(
    "lfw", splits=("left", "right"), train_split=None, protocol="lfw", licence="research use (news photographs)",
    description="LFW view 2: pairs.txt and <name>/<name>_NNNN.jpg; 10-fold pair verification, evaluation only",
)
def read_lfw(root: str | Path) -> Splits:
    """LFW view 2: pairs.txt and images <name>/<name>_<i:04d>.jpg under lfw/ (or the root)."""
    root = find_root(root, "pairs.txt", ["lfw"])
    path = root / "pairs.txt"
    rows = read_rows(path, 2, LFW_FORMAT)
    folds, per_fold = as_int(rows[0][0], path, LFW_FORMAT), as_int(rows[0][1], path, LFW_FORMAT)
    if len(rows) - 1 != 2 * folds * per_fold:
        raise DatasetFormatError(f"{path}: header announces {folds} x 2 x {per_fold} pairs, found {len(rows) - 1}; expected {LFW_FORMAT}")
    images = next((root / d for d in ("lfw", "lfw-deepfunneled", "lfw_funneled") if (root / d).is_dir()), root)
    ids = label_ids([r[0] for r in rows[1:]] + [r[2] for r in rows[1:] if len(r) == 4])

    def sample(name: str, i: str, fold: int, same: bool) -> Sample:
        number = as_int(i, path, LFW_FORMAT)
        return Sample(images / name / f"{name}_{number:04d}.jpg", label=ids[name], split="pairs", meta={"fold": fold, "same": same})

    left, right = [], []
    for n, r in enumerate(rows[1:]):
        fold, same = n // (2 * per_fold), (n % (2 * per_fold)) < per_fold
        if len(r) != (3 if same else 4):
            raise DatasetFormatError(f"{path} line {n + 2}: expected a {'matched' if same else 'mismatched'} pair, got '{' '.join(r)}'")
        left.append(sample(r[0], r[1], fold, same))
        right.append(sample(r[0], r[2], fold, same) if same else sample(r[2], r[3], fold, same))
    return {"left": left, "right": right}


BROWN_PATCH, BROWN_PER_SIDE = 64, 16


def _brown_patch(root: Path, index: int, point: int) -> Sample:
    per_file = BROWN_PER_SIDE * BROWN_PER_SIDE
    row, col = divmod(index % per_file, BROWN_PER_SIDE)
    box = (col * BROWN_PATCH, row * BROWN_PATCH, (col + 1) * BROWN_PATCH, (row + 1) * BROWN_PATCH)
    return Sample(root / f"patches{index // per_file:04d}.bmp", label=point, bbox=box, meta={"patch": index})


@register_dataset(
    "brown", splits=("patches", "left", "right"), train_split="patches", protocol="brown", licence="research use",
    description="Brown / UBC patches (liberty, notredame, yosemite): info.txt, m50_*.txt, patchesNNNN.bmp; train on one subset, evaluate on another",
)
def read_brown(root: str | Path, pairs: Optional[str] = None) -> Splits:
    """Brown / UBC (liberty, notredame, yosemite): info.txt, m50_*.txt pairs, patchesNNNN.bmp.

    Each bmp holds 16 x 16 patches of 64 x 64 pixels, row-major; line i of info.txt gives
    patch i's 3D point id. ``pairs`` names the m50 file (default: m50_100000_100000_0.txt,
    else the largest present). Splits: "patches" (all, label = 3D point) and "left"/"right".
    """
    root = find_root(root, "info.txt")
    info = root / "info.txt"
    points = [as_int(r[0], info, "lines '<3D point id> <unused>'") for r in read_rows(info, 1, "lines '<3D point id> <unused>'")]
    if pairs is None:
        found = sorted(root.glob("m50_*_*_0.txt"), key=lambda p: int(p.name.split("_")[1]))
        default = root / "m50_100000_100000_0.txt"
        if not found:
            raise FileNotFoundError(f"no m50_*.txt pair file under {root}; expected lines '<patch> <point> 0 <patch> <point> 0 0'")
        pairs = default.name if default.exists() else found[-1].name
    pair_file = root / pairs
    expected = "lines '<patch id> <3D point id> <unused> <patch id> <3D point id> <unused> <unused>'"
    left, right = [], []
    for r in read_rows(pair_file, 5, expected):
        a, b = as_int(r[0], pair_file, expected), as_int(r[3], pair_file, expected)
        if not (0 <= a < len(points) and 0 <= b < len(points)):
            raise DatasetFormatError(f"{pair_file}: patch {max(a, b)} is outside info.txt ({len(points)} patches)")
        same = as_int(r[1], pair_file, expected) == as_int(r[4], pair_file, expected)
        for side, i in ((left, a), (right, b)):
            s = _brown_patch(root, i, points[i])
            s.meta["same"], s.split = same, "pairs"
            side.append(s)
    return {"patches": [_brown_patch(root, i, p) for i, p in enumerate(points)], "left": left, "right": right}


HPATCH = 65
HPATCHES_IMAGES = ["ref"] + [f"{t}{i}" for t in "eht" for i in range(1, 6)]


@register_dataset(
    "hpatches", splits=("test",), train_split=None, protocol="hpatches",
    licence="research use (see the HPatches release)",
    description="HPatches release: i_* / v_* sequences of 65 x 65 patch columns; evaluation only",
)
def read_hpatches(root: str | Path) -> Splits:
    """HPatches release: one folder per sequence (i_* / v_*) with ref.png, e1-5, h1-5, t1-5.png.

    Each png stacks that image's patches (65 x 65) vertically; patch j of every image of a
    sequence shows the same 3D point, so label = (sequence, j). Split: "test".
    """
    root = Path(root)
    root = root / "hpatches-release" if (root / "hpatches-release").is_dir() else root
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches folder {root} not found")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_"))
    if not seqs:
        raise FileNotFoundError(f"no i_* / v_* sequence folder under {root}; expected the HPatches release layout")
    samples, base = [], 0
    for seq in seqs:
        count = None
        for name in HPATCHES_IMAGES:
            png = seq / f"{name}.png"
            if not png.exists():
                continue
            with Image.open(png) as im:
                w, h = im.size
            if w != HPATCH or h % HPATCH:
                raise DatasetFormatError(f"{png}: expected a {HPATCH}-pixel-wide column of {HPATCH} x {HPATCH} patches, got {w} x {h}")
            count = h // HPATCH if count is None else count
            if h // HPATCH != count:
                raise DatasetFormatError(f"{png}: {h // HPATCH} patches, but the sequence's other images have {count}")
            samples += [Sample(png, label=base + j, bbox=(0, j * HPATCH, HPATCH, (j + 1) * HPATCH), split="test",
                               meta={"sequence": seq.name, "image": name, "patch": j}) for j in range(count)]
        require(seq / "ref.png", "ref.png, e1-5.png, h1-5.png, t1-5.png patch columns")
        base += count or 0
    return {"test": samples}
