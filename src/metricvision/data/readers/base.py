"""Shared pieces of the dataset readers: file checks, safe pickle loading, boxes."""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

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


def read_text(path: Path, expected: str) -> str:
    """The UTF-8 text of ``path``; a binary file raises DatasetFormatError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path} is not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                                 f"expected {expected}") from None


def read_rows(path: Path, ncols: int, expected: str, skip: int = 0, sep: str | None = None) -> List[List[str]]:
    """Non-empty lines split on whitespace (or ``sep``), each with at least ``ncols`` fields."""
    require(path, expected)
    rows = []
    for n, line in enumerate(read_text(path, expected).splitlines()[skip:], start=skip + 1):
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


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Stands in for ``_codecs.encode``, which protocol 2 uses to write bytes (numpy array
    data among them): a str to latin-1 bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got ({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _safe_globals() -> Dict[Tuple[str, str], Any]:
    """The globals a plain-data pickle may name: numpy array, dtype and scalar reconstruction
    (under numpy 1 and 2 module names), sets, slices, OrderedDict, protocol 2's bytes."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
        ("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _latin1_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _PlainUnpickler(pickle.Unpickler):
    """Builds only containers, numbers, strings, sets and numpy arrays / dtypes / scalars, from
    pickles of any protocol (Python 2's module names included); no other global."""

    ALLOWED = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (__builtin__.set, copy_reg...) as Unpickler.find_class maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return self.ALLOWED[(module, name)]


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
