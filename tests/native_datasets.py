"""Tiny datasets written in their benchmarks' native layouts, for reader and end-to-end tests.

The pictures are real: renderings of the shipped emoji dataset, one identity per class,
saved as image files where each benchmark keeps them.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from PIL import Image


def touch(path: Path, size=(8, 8)) -> Path:
    """A flat-colour image file at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def write_gnd(root: Path, name: str, gnd, imlist, qimlist) -> None:
    """gnd_<name>.pkl of the revisited Oxford / Paris layout."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"gnd": gnd, "imlist": imlist, "qimlist": qimlist}, f)


def write_plain(tmp_path: Path) -> Path:
    """A pickle of plain data only."""
    p = tmp_path / "plain.pkl"
    p.write_bytes(pickle.dumps({"a": [1, 2.5, "s", (1, 2)], "b": {3}}))
    return p
