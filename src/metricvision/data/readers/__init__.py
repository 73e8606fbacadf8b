"""Readers for benchmarks' native on-disk layouts; each returns {split name: [Sample]}.

``READERS.get(name)(root)`` reads a dataset; ``check_dataset(kind, path)`` reads it, checks
that every referenced image exists and summarizes it. Readers never download.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from metricvision.data.readers import category, classification, generic, instance, pairs  # noqa: F401 (registration)
from metricvision.data.readers.base import READERS, DatasetFormatError, Splits, crop_to_box, load_plain_pickle, summarize


def check_dataset(kind: str, path: str | Path) -> Dict[str, Any]:
    """Read dataset ``kind`` at ``path`` and summarize it (samples and classes per split).

    Raises:
        KeyError: unknown kind (the message lists the readers).
        FileNotFoundError: a missing list file or image, named with its expected format.
        DatasetFormatError: a malformed file, named with its expected format.
    """
    splits = READERS.get(kind)(path)
    images = {Path(s.image) for samples in splits.values() for s in samples if isinstance(s.image, (str, Path))}
    missing = sorted(p for p in images if not p.exists())
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(images)} images of {kind} are missing, e.g. {missing[0]}")
    return {"kind": kind, "path": str(path), "images": len(images), **summarize(splits)}


__all__ = ["READERS", "DatasetFormatError", "Splits", "check_dataset", "crop_to_box", "load_plain_pickle", "summarize"]
