"""The files of one KB version: a base (index + items), delta segments and tombstones.

Layout of ``KB/index/v000007/``::

    index.bin, items.sqlite          the base: any registered index and its items
    seg-<first>-<next>.bin/.sqlite   a delta segment: an exact FlatIndex and its items (ids first..next-1)
    tombstones.npy                   (T,) ids deleted since the base was written
    manifest.json                    extra: next_id, index_spec, segments [{name, rows}], tombstones

A small write adds a segment and hard-links every other file from the previous version
(``IndexStore.commit(keep=...)``), so its cost does not grow with the KB; a deletion only
writes tombstones. When the segments pass ``segment_rows`` rows or the tombstones
``max_tombstones`` ids, the write compacts: segments and tombstones are folded into a new
base. Past ``max_segments`` segments, they are merged into one (cheap: segments are small).
A reader loads a version reusing every index object it already holds for the same file
(same device and inode: files are never changed once written), so a version that only adds
a segment loads and checks only that segment.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from metricvision.index import INDEXES, Index, IndexStore
from metricvision.index.flat import FlatIndex
from metricvision.index.segmented import SegmentedIndex
from metricvision.index.store import INDEX_FILE, registered_name
from metricvision.kb.items import ItemsView, Row, create_items, merge_items, write_items

ITEMS = "items.sqlite"
TOMBSTONES = "tombstones.npy"
SEGMENT_ROWS = 50_000
MAX_SEGMENTS = 8
MAX_TOMBSTONES = 1024
FileKey = Tuple[int, int]
Parts = Dict[FileKey, Optional[Index]]  # every file of a version -> its loaded index (None: not an index)


def file_key(path: Path) -> FileKey:
    """(device, inode) of ``path``: the identity of an immutable version file."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def segment_names(manifest: Dict[str, Any]) -> List[str]:
    """Names of the version's segments (without suffix), oldest first."""
    return [s["name"] for s in manifest["extra"].get("segments", [])]


def load_version(store: IndexStore, version: int, verify: bool, known: Parts) -> Tuple[SegmentedIndex, ItemsView, Parts]:
    """Open ``version``: its index (base + segments - tombstones), its items, and its files' parts.

    Args:
        store: the KB's IndexStore.
        version: the version (the caller holds a lease on it).
        verify: check the sha256 of every file not in ``known``.
        known: parts of a version loaded before; index objects of the same files are reused.
    """
    folder, manifest = store.path(version), store.manifest(version)
    keys = {name: file_key(folder / name) for name in manifest["files"]}
    if verify:
        store.verify(version, [name for name, key in keys.items() if key not in known])
    parts: Parts = {key: None for key in keys.values()}

    def load(name: str, cls: Any) -> Index:
        index = known.get(keys[name])
        index = cls.load(folder / name) if index is None else index
        parts[keys[name]] = index
        return index

    names = segment_names(manifest)
    base = load(INDEX_FILE, INDEXES.get(manifest["kind"]))
    segments = [load(f"{n}.bin", FlatIndex) for n in names]
    tombstones = np.load(folder / TOMBSTONES) if TOMBSTONES in keys else np.empty(0, np.int64)
    ranges = [(int(s.ids.min()), int(s.ids.max())) for s in segments if len(s)]
    items = ItemsView([folder / ITEMS, *(folder / f"{n}.sqlite" for n in names)], tombstones,
                      ranges if len(ranges) == len(segments) else None)
    return SegmentedIndex(base, segments, tombstones), items, parts


def write_segment(folder: Path, name: str, rows: Sequence[Row], x: np.ndarray, dim: int,
                  merged: Sequence[Tuple[FlatIndex, Path]] = ()) -> FlatIndex:
    """Write segment ``name`` into ``folder``: the rows of ``merged`` segments (index, items path) then ``rows``."""
    index = FlatIndex(dim)
    for seg, _ in merged:
        index.add(seg.vectors, seg.ids)
    index.add(x, np.asarray([r[0] for r in rows], dtype=np.int64))
    index.save(folder / f"{name}.bin")
    create_items(folder / f"{name}.sqlite")
    with closing(sqlite3.connect(folder / f"{name}.sqlite")) as db:
        merge_items(db, [p for _, p in merged])
        write_items(db, rows)
    return index


def write_base(folder: Path, previous: Path, base: Index, segments: Sequence[Tuple[FlatIndex, Path]],
               rows: Sequence[Row], x: np.ndarray, removed: np.ndarray) -> Index:
    """Fold ``segments``, new ``rows`` / (n, D) ``x`` and the ``removed`` ids into ``base`` (changed in place)
    and write it with its items (copied from the ``previous`` version folder) into ``folder``."""
    for seg, _ in segments:
        base.add(seg.vectors, seg.ids)
    if rows:
        if not getattr(base, "is_trained", True):
            base.train(x)
        base.add(x, np.asarray([r[0] for r in rows], dtype=np.int64))
    if removed.size:
        base.remove(removed)
    shutil.copyfile(previous / ITEMS, folder / ITEMS)  # a copy: the previous version's file is shared, never written
    with closing(sqlite3.connect(folder / ITEMS)) as db:
        merge_items(db, [p for _, p in segments])
        write_items(db, rows, removed.tolist())
    base.save(folder / INDEX_FILE)
    return base


def manifest_fields(index: SegmentedIndex, next_id: int, index_spec: str, segments: Sequence[Tuple[str, int]]) -> Dict[str, Any]:
    """The manifest fields of a version holding ``index`` with segments [(name, rows)]."""
    return {"kind": registered_name(index.base), "dim": index.dim, "ntotal": len(index),
            "extra": {"next_id": next_id, "index_spec": index_spec, "tombstones": int(index.tombstones.size),
                      "segments": [{"name": n, "rows": r} for n, r in segments]}}


def save_tombstones(folder: Path, tombstones: np.ndarray) -> None:
    """Write the (T,) tombstone ids (nothing when there are none)."""
    if tombstones.size:
        with open(folder / TOMBSTONES, "wb") as f:
            np.save(f, np.asarray(tombstones, dtype=np.int64))
