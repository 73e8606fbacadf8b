"""Shared pieces of the dataset readers: file checks, safe pickle loading, boxes."""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import numpy as np



class DatasetFormatError(ValueError):
    """A dataset file exists but does not follow its native format."""


def find_root(root: str | Path, marker: str, subdirs: Sequence[str] = ()) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of ``subdirs`` under it."""
    root = Path(root)
    for d in ("", *subdirs):
        if (root / d / marker).exists():
            return root / d
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} not found")
    return root


def require(path: Path, expected: str) -> Path:
    """``path`` if it exists, else FileNotFoundError naming it and its expected format."""
    if not path.exists():
        raise FileNotFoundError(f"{path.name} not found under {path.parent}; expected {expected}")
    return path


def read_rows(path: Path, ncols: int, expected: str, skip: int = 0, sep: str | None = None) -> List[List[str]]:
    """Non-empty lines split on whitespace (or ``sep``), each with at least ``ncols`` fields."""
    require(path, expected)
    rows = []
    for n, line in enumerate(path.read_text().splitlines()[skip:], start=skip + 1):
        if not line.strip():
            continue
        fields = line.strip().split(sep)
        if len(fields) < ncols:
            raise DatasetFormatError(f"{path} line {n}: expected {expected}, got '{line.strip()}'")
        rows.append([f.strip() for f in fields])
    return rows


def as_int(value: str, path: Path, expected: str) -> int:
    """int(value), or a DatasetFormatError naming the file and the expected format."""
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(f"{path}: expected {expected}, got non-integer '{value}'") from None


class _PlainUnpickler(pickle.Unpickler):
    """Builds only containers, numbers, strings and numpy arrays; no other global."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return getattr(np, name) if module == "numpy" else super().find_class(module, name)


def load_plain_pickle(path: Path, expected: str) -> Any:
    """Unpickle ``path`` accepting only plain data (see _PlainUnpickler)."""
    data = require(path, expected).read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure means the file is not what we expect
        raise DatasetFormatError(f"{path}: not a plain-data pickle ({e}); expected {expected}") from e


def label_ids(names: Iterable[str]) -> Dict[str, int]:
    """Sorted distinct class names -> 0..C-1."""
    return {n: i for i, n in enumerate(sorted(set(names)))}
