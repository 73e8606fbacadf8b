"""KnowledgeBase: a folder with an index, a SQLite table of items and the model card.

Layout::

    KB/model_card.json             the model that made the embeddings (checkpoint path relative to KB/)
    KB/model.safetensors           the checkpoint, copied in (its sha256 is checked at open)
    KB/index/CURRENT               the committed version (metricvision.index.IndexStore)
    KB/index/v000002/index.bin     the base vectors (any registered index: Flat, faiss specs)
    KB/index/v000002/items.sqlite  the base's items, metadata and captions (metricvision.kb.items)
    KB/index/v000002/seg-*         delta segments and tombstones (metricvision.kb.versions)
    KB/images/<id>.<ext>           every item's image (copied in: the folder is self-contained)
    KB/text_bank.safetensors       optional: the texts of the hubness correction of text queries (metricvision.kb.hubness)

Every write holds the store's writer lock, starts from the version that is current at that
moment and commits a new IndexStore version (written under a temporary name and renamed),
so concurrent writers never lose an item and a crash at any point leaves the previous
version readable. A small write adds a delta segment and shares the base's files with the
previous version; large writes and ``compact()`` fold everything into a new base. A
KnowledgeBase object reads the version it holds a lease on; ``latest()`` gives the committed one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from metricvision._atomic import atomic_write
from metricvision.data import Sample
from metricvision.index import IndexStore, create_index, filtered_search
from metricvision.index.segmented import SegmentedIndex
from metricvision.index.store import INDEX_FILE, Lease
from metricvision.kb import hubness, versions
from metricvision.kb.items import Row, create_items
from metricvision.kb.model import ImageTextModel, ModelCard, file_sha256
from metricvision.kb.versions import ITEMS, Parts, file_key, segment_names

CARD = "model_card.json"
CHECKPOINT = "model.safetensors"
WRITE_TIMEOUT = 60.0


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename over ``path``."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2).encode())


class KnowledgeBase:
    """Images + text + metadata, searchable by embedding; reads the version it holds a lease on.

    Use ``KnowledgeBase.create(path, model)`` for a new one and ``KnowledgeBase.open(path)``
    for an existing one. With ``writer=True`` the object changes its in-memory base index in
    place when a write compacts the version it holds (no reload: the cost of a compaction does
    not include reading the index); such an object must not be searched from other threads
    while it writes.

    Attributes:
        segment_rows, max_segments, max_tombstones: when a write compacts or merges segments
            (see metricvision.kb.versions).
    """

    def __init__(self, path: Path, card: ModelCard, model: Optional[ImageTextModel], lease: Optional[Lease] = None,
                 writer: bool = False, verify: bool = True, known: Optional[Parts] = None) -> None:
        self.path, self.card, self.writer = path, card, writer
        self._model = model
        self.text_bank = hubness.load_text_bank(path, card.dim)
        self.segment_rows, self.max_segments = versions.SEGMENT_ROWS, versions.MAX_SEGMENTS
        self.max_tombstones = versions.MAX_TOMBSTONES
        self.store = IndexStore(path / "index")
        self._lease = lease or self.store.acquire()
        self._load(verify, known or {})

    def _load(self, verify: bool, known: Parts) -> None:
        """Read the held version, reusing the index objects of ``known`` files."""
        self.manifest = self.store.manifest(self._lease.version)
        self.index, self._items, self.parts = versions.load_version(self.store, self._lease.version, verify, known)

    @classmethod
    def create(cls, path: str | os.PathLike, model: ImageTextModel, index_spec: str = "Flat",
               index_params: Optional[str] = None, text_bank: Optional[torch.Tensor] = None,
               text_bank_k: int = hubness.DEFAULT_K, text_bank_source: str = "") -> "KnowledgeBase":
        """An empty KB at ``path`` (which must not hold one) with an index built by ``create_index(index_spec, params)``.

        The model's checkpoint is copied into the KB, so the folder can be moved. ``text_bank``: (R, D) text
        embeddings in the model's space for the hubness correction of text queries (``metricvision.kb.hubness``),
        with its ``k`` and a note of where it came from.
        """
        path = Path(path)
        if (path / CARD).exists():
            raise FileExistsError(f"{path} already holds a knowledge base; use `kb add` to append")
        index = create_index(index_spec, model.dim, "ip", index_params)
        if text_bank is not None:
            if not model.card.text_model:
                raise ValueError("a text bank needs a text-aligned model (a checkpoint from `kb align`); this one has none")
            text_bank = hubness.check_text_bank(text_bank, text_bank_k, model.dim)
        path.mkdir(parents=True, exist_ok=True)
        if text_bank is not None:
            hubness.save_text_bank(path, text_bank, text_bank_k, text_bank_source)

        def write(folder: Path) -> Dict[str, Any]:
            create_items(folder / ITEMS)
            index.save(folder / INDEX_FILE)
            return versions.manifest_fields(SegmentedIndex(index), 0, index_spec, [])

        IndexStore(path / "index").commit(write)
        card = model.card
        if card.checkpoint:
            with atomic_write(path / CHECKPOINT) as f, open(card.checkpoint, "rb") as src:
                shutil.copyfileobj(src, f)
            card = replace(card, checkpoint=CHECKPOINT)
        write_json_atomic(path / CARD, asdict(card))
        return cls(path, card, model)

    @classmethod
    def open(cls, path: str | os.PathLike, model: Optional[ImageTextModel] = None, writer: bool = False) -> "KnowledgeBase":
        """Open the KB at ``path``; its model is built from the card on first use unless given.

        ``writer``: see the class docstring.

        Raises:
            FileNotFoundError: no KB, or its checkpoint is missing.
            ValueError: the checkpoint is empty or does not match the card's sha256.
        """
        path = Path(path)
        if not (path / CARD).exists():
            raise FileNotFoundError(f"no knowledge base at {path} ({CARD} not found); create one with `kb build`")
        card = ModelCard.from_dict(json.loads((path / CARD).read_text()))
        if model is None:
            verify_checkpoint(path, card)
        return cls(path, card, model, writer=writer)

    @property
    def model(self) -> ImageTextModel:
        """The model of the card (loaded on first use)."""
        if self._model is None:
            ckpt = self.card.checkpoint
            self._model = ImageTextModel(replace(self.card, checkpoint=str(self.path / ckpt) if ckpt else None))
        return self._model

    def __len__(self) -> int:
        return len(self.index)

    @property
    def version(self) -> int:
        """The committed version this object reads."""
        return self._lease.version

    def check(self) -> None:
        """Raise when this version cannot serve: index and items table disagree, or search fails."""
        rows = self._items.count()
        if rows != len(self):
            raise RuntimeError(f"version {self.version}: index holds {len(self)} vectors but the items table {rows} rows")
        self.index.search(np.ones((1, self.index.dim), np.float32), 1)

    def latest(self, verify: bool = True) -> "KnowledgeBase":
        """This KB at the committed version (``self`` when that is the one it reads); shares the model.

        ``verify``: check the version's files against their manifest checksums.
        """
        if self.store.current() == self.version:
            return self
        return KnowledgeBase(self.path, self.card, self.model, self.store.acquire(), verify=verify, known=self.parts)

    def close(self) -> None:
        """Release the version this object reads (it may then be pruned)."""
        self._lease.release()

    def add(self, samples: Sequence[Sample], batch_size: int = 128, image_root: Optional[str | os.PathLike] = None,
            timeout: float = WRITE_TIMEOUT) -> List[int]:
        """Embed and append samples as one new version; returns their ids.

        Images are copied to KB/images/; a path image must lie inside ``image_root`` when it
        is given (symlinks are resolved first).
        """
        if not samples:
            return []
        emb = self.model.encode_images([s.image for s in samples], batch_size).numpy()
        return self.add_embedded(samples, emb, image_root, timeout)

    def add_embedded(self, samples: Sequence[Sample], embeddings: np.ndarray,
                     image_root: Optional[str | os.PathLike] = None, timeout: float = WRITE_TIMEOUT) -> List[int]:
        """Append samples whose (N, D) embeddings are already computed (one new version).

        Raises:
            StoreBusy: another writer kept the KB for ``timeout`` seconds.
        """
        if len(samples) != len(embeddings):
            raise ValueError(f"got {len(samples)} samples but {len(embeddings)} embeddings")
        x = np.asarray(embeddings, dtype=np.float32)
        root = Path(image_root).resolve() if image_root is not None else None
        r = hubness.item_crowding(x, self.text_bank) if self.text_bank is not None and len(x) else None

        def change(_: KnowledgeBase, first: int) -> Tuple[List[Row], np.ndarray]:
            ids = range(first, first + len(samples))
            meta = [_metadata(s) for s in samples]
            if r is not None:
                for m, value in zip(meta, r):
                    m[hubness.CROWDING_KEY] = float(value)
            return [(i, self._store_image(i, s, root), s.caption, int(s.label), m) for i, s, m in zip(ids, samples, meta)], []

        return [r[0] for r in self._write(change, x, timeout)]

    def remove(self, ids: Sequence[int], timeout: float = WRITE_TIMEOUT) -> List[int]:
        """Delete items by id as one new version (tombstones until the next compaction); returns the ids removed.

        Raises:
            KeyError: naming the ids that are not in the KB (nothing is removed then).
        """
        wanted = sorted({int(i) for i in ids})

        def change(current: KnowledgeBase, _: int) -> Tuple[List[Row], List[int]]:
            missing = sorted(set(wanted) - set(current.items(wanted)))
            if missing:
                raise KeyError(f"no items with ids {missing[:10]} in {self.path}")
            return [], wanted

        self._write(change, np.empty((0, self.index.dim), np.float32), timeout)
        return wanted

    def compact(self, timeout: float = WRITE_TIMEOUT) -> int:
        """Fold the segments and tombstones into a new base (one new version); returns the version."""
        self._write(lambda _, __: ([], []), np.empty((0, self.index.dim), np.float32), timeout, compact=True)
        return self.version

    def _write(self, change: Any, x: np.ndarray, timeout: float, compact: bool = False) -> List[Row]:
        """Under the writer lock: ``change(current KB, next id) -> (rows, removed ids)`` for the (n, D)
        vectors ``x`` of the rows, applied to the current version and committed; returns the rows."""
        with self.store.writer(timeout):
            lease = self.store.acquire()
            current = self if lease.version == self.version else KnowledgeBase(
                self.path, self.card, self._model, lease, known=self.parts)
            made: Dict[str, Any] = {}
            try:
                rows, removed = change(current, int(current.manifest["extra"]["next_id"]))
                version = self._commit(current, rows, x, np.asarray(removed, dtype=np.int64), compact, made)
            except BaseException:
                if self.writer and INDEX_FILE in made:  # a compaction may have half-changed the base: read it again
                    self._load(False, {})
                raise
            finally:
                lease.release()
            folder = self.store.path(version)
            known = {**current.parts, **{file_key(folder / name): index for name, index in made.items()}}
            old, self._lease = self._lease, self.store.acquire(version)
            self._load(False, known)  # its files were checksummed as they were written
            old.release()
            self.store.prune(keep=2)
        return rows

    def _commit(self, current: "KnowledgeBase", rows: List[Row], x: np.ndarray, removed: np.ndarray, compact: bool,
                made: Dict[str, Any]) -> int:
        """Commit ``current`` plus ``rows`` / (n, D) ``x`` minus ``removed`` as a new version: a new segment,
        merged segments or a new base (see metricvision.kb.versions); ``made`` receives the indexes written."""
        index, extra = current.index, current.manifest["extra"]
        source = self.store.path(current.version)
        names = segment_names(current.manifest)
        segments = [(seg, source / f"{n}.sqlite") for seg, n in zip(index.segments, names)]
        tombstones = np.union1d(index.tombstones, removed)
        next_id = rows[-1][0] + 1 if rows else int(extra["next_id"])
        spec = extra["index_spec"]
        if (compact or (rows and len(index.base) == 0) or tombstones.size > self.max_tombstones
                or sum(len(s) for s in index.segments) + len(rows) > self.segment_rows):
            # in place only in a writer object (nobody else searches it); else a copy read from disk
            base = index.base if self.writer else self.store.load(current.version, verify=False)

            def write_base(folder: Path) -> Dict[str, Any]:
                made[INDEX_FILE] = base  # set first: a failure past here may leave it half-changed
                versions.write_base(folder, source, base, segments, rows, x, tombstones)
                return versions.manifest_fields(SegmentedIndex(base), next_id, spec, [])

            return self.store.commit(write_base)
        merge = bool(rows) and len(segments) >= self.max_segments
        kept = [] if merge else list(zip(names, index.segments))

        def write_delta(folder: Path) -> Dict[str, Any]:
            parts = list(kept)
            if rows:
                name = f"seg-{rows[0][0]}-{next_id}"
                made[f"{name}.bin"] = versions.write_segment(folder, name, rows, x, index.dim, segments if merge else [])
                parts.append((name, made[f"{name}.bin"]))
            versions.save_tombstones(folder, tombstones)
            view = SegmentedIndex(index.base, [seg for _, seg in parts], tombstones)
            return versions.manifest_fields(view, next_id, spec, [(n, len(seg)) for n, seg in parts])

        keep = [INDEX_FILE, ITEMS, *(f"{n}{ext}" for n, _ in kept for ext in (".bin", ".sqlite"))]
        return self.store.commit(write_delta, keep_from=current.version, keep=keep)

    def _store_image(self, item_id: int, sample: Sample, root: Optional[Path]) -> str:
        images = self.path / "images"
        images.mkdir(exist_ok=True)
        if isinstance(sample.image, (str, os.PathLike)):
            src = Path(sample.image).resolve()
            if root is not None and not src.is_relative_to(root):
                raise ValueError(f"image {sample.image} resolves to {src}, outside the folder {root}")
            if not src.is_file():
                raise FileNotFoundError(f"image {sample.image} not found")
            name = f"{item_id}{src.suffix.lower()}"
            tmp = images / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)  # same file system: no copy
            except OSError:
                shutil.copyfile(src, tmp)
        else:
            name = f"{item_id}.png"
            tmp = images / f".{name}.tmp"
            img = sample.image if isinstance(sample.image, Image.Image) else Image.fromarray(np.asarray(sample.image))
            img.save(tmp, format="PNG")
        os.replace(tmp, images / name)
        return f"images/{name}"

    def get(self, item_id: int) -> Dict[str, Any]:
        """The item with this id as a dict (id, image, caption, label, metadata).

        Raises:
            KeyError: when no item has this id.
        """
        found = self._items.items([int(item_id)])
        if not found:
            raise KeyError(f"no item with id {item_id} (the KB holds {len(self)} items)")
        return found[int(item_id)]

    def items(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        """Items by id (missing ids are left out)."""
        return self._items.items(ids)

    def recent(self, n: int = 8) -> List[Dict[str, Any]]:
        """The ``n`` newest items, newest first."""
        return self._items.recent(n)

    def image_path(self, item_id: int) -> Path:
        """Path of the item's image, inside the KB folder.

        Raises:
            PermissionError: the stored path, symlinks resolved, leaves the KB folder.
        """
        p = Path(self.get(item_id)["image"])
        p = p if p.is_absolute() else self.path / p
        root = self.path.resolve()
        if not p.resolve().is_relative_to(root):
            raise PermissionError(f"image of item {item_id} resolves to a file outside the KB folder {root}; not read")
        return p

    def allowed_ids(self, filters: Dict[str, Any]) -> np.ndarray:
        """Sorted ids of items matching every filter: "label", "caption" or a metadata key -> value (or list of values)."""
        return self._items.allowed_ids(filters)

    def keyword_search(self, text: str, k: int, filters: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """BM25 top-k over captions -> (scores (n,), ids (n,)), n <= k, optionally restricted by ``filters``."""
        return self._items.keyword_search(text, k, self.allowed_ids(filters) if filters else None)

    def search(self, queries: np.ndarray, k: int, filters: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items for (Q, D) query vectors, optionally restricted by ``filters`` -> (scores, ids), -1 padded."""
        if not filters:
            return self.index.search(queries, k)
        return filtered_search(self.index, queries, k, self.allowed_ids(filters))


def verify_checkpoint(path: Path, card: ModelCard) -> None:
    """Check the card's checkpoint (relative to the KB folder ``path``) exists, is not empty and matches its sha256."""
    if not card.checkpoint:
        return
    ckpt = path / card.checkpoint
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} of the knowledge base {path} not found")
    if ckpt.stat().st_size == 0:
        raise ValueError(f"checkpoint {ckpt} of the knowledge base {path} is empty (0 bytes)")
    if card.checkpoint_sha256 and (got := file_sha256(ckpt)) != card.checkpoint_sha256:
        raise ValueError(f"checkpoint {ckpt} has sha256 {got[:16]}..., but {path / CARD} says "
                         f"{card.checkpoint_sha256[:16]}... (a swapped or corrupt file)")


def _metadata(s: Sample) -> Dict[str, Any]:
    meta = {k: v for k, v in s.meta.items() if _jsonable(v)}
    for key in ("instance_id", "camera"):
        if getattr(s, key) != -1:
            meta[key] = getattr(s, key)
    if s.bbox is not None:
        meta["bbox"] = list(s.bbox)
    if s.split:
        meta["split"] = s.split
    return meta


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False

