"""KnowledgeBase: a folder with an index, a SQLite table of items and the model card.

Layout::

    KB/model_card.json             the model that made the embeddings (checkpoint path relative to KB/)
    KB/model.safetensors           the checkpoint, copied in (its sha256 is checked at open)
    KB/index/CURRENT               the committed version (metricvision.index.IndexStore)
    KB/index/v000002/index.bin     the vectors (any registered index: Flat, faiss specs)
    KB/index/v000002/items.sqlite  items, metadata and captions (metricvision.kb.items)
    KB/images/<id>.<ext>           every item's image (copied in: the folder is self-contained)

Every write holds the store's writer lock, starts from the version that is current at that
moment and commits a new IndexStore version (index + items together, written under a
temporary name and renamed), so concurrent writers never lose an item and a crash at any
point leaves the previous version readable. A KnowledgeBase object reads the version it
holds a lease on; ``latest()`` gives the committed one.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from metricvision._atomic import atomic_write
from metricvision.data import Sample
from metricvision.index import Index, IndexStore, create_index, filtered_search
from metricvision.index.store import Lease, registered_name
from metricvision.kb.items import ItemsReader, create_items, write_items
from metricvision.kb.model import ImageTextModel, ModelCard, file_sha256

CARD = "model_card.json"
ITEMS = "items.sqlite"
CHECKPOINT = "model.safetensors"
WRITE_TIMEOUT = 60.0


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename over ``path``."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2).encode())


class KnowledgeBase:
    """Images + text + metadata, searchable by embedding; reads the version it holds a lease on.

    Use ``KnowledgeBase.create(path, model)`` for a new one and ``KnowledgeBase.open(path)``
    for an existing one. With ``writer=True`` the object changes its in-memory index in place
    when it writes on top of the version it holds (no reload: the cost of a write no longer
    includes reading the index); such an object must not be searched from other threads
    while it writes.
    """

    def __init__(self, path: Path, card: ModelCard, model: Optional[ImageTextModel], lease: Optional[Lease] = None,
                 writer: bool = False, verify: bool = True) -> None:
        self.path, self.card, self.writer = path, card, writer
        self._model = model
        self.store = IndexStore(path / "index")
        self._lease = lease or self.store.acquire()
        self.manifest = self.store.manifest(self._lease.version)
        self.index: Index = self.store.load(self._lease.version, verify=verify)
        self._items = ItemsReader(self.store.path(self._lease.version) / ITEMS)

    @classmethod
    def create(cls, path: str | os.PathLike, model: ImageTextModel, index_spec: str = "Flat",
               index_params: Optional[str] = None) -> "KnowledgeBase":
        """An empty KB at ``path`` (which must not hold one) with an index built by ``create_index(index_spec, params)``.

        The model's checkpoint is copied into the KB, so the folder can be moved.
        """
        path = Path(path)
        if (path / CARD).exists():
            raise FileExistsError(f"{path} already holds a knowledge base; use `kb add` to append")
        index = create_index(index_spec, model.dim, "ip", index_params)
        path.mkdir(parents=True, exist_ok=True)

        def write(folder: Path) -> Dict[str, Any]:
            create_items(folder / ITEMS)
            return _version_fields(index, folder, 0, index_spec)

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
        return KnowledgeBase(self.path, self.card, self.model, self.store.acquire(), verify=verify)

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

        def change(index: Index, first: int, _: ItemsReader) -> Tuple[list, list, int]:
            ids = list(range(first, first + len(samples)))
            rows = [(i, self._store_image(i, s, root), s.caption, int(s.label), _metadata(s)) for i, s in zip(ids, samples)]
            if not getattr(index, "is_trained", True):
                index.train(x)
            index.add(x, np.asarray(ids, dtype=np.int64))
            return rows, [], first + len(samples)

        return [r[0] for r in self._write(change, timeout)]

    def remove(self, ids: Sequence[int], timeout: float = WRITE_TIMEOUT) -> List[int]:
        """Delete items by id as one new version; returns the ids removed.

        Raises:
            KeyError: naming the ids that are not in the KB (nothing is removed then).
        """
        wanted = sorted({int(i) for i in ids})

        def change(index: Index, first: int, items: ItemsReader) -> Tuple[list, list, int]:
            missing = sorted(set(wanted) - set(items.items(wanted)))
            if missing:
                raise KeyError(f"no items with ids {missing[:10]} in {self.path}")
            index.remove(np.asarray(wanted, dtype=np.int64))
            return [], wanted, first

        self._write(change, timeout)
        return wanted

    def _write(self, change: Any, timeout: float) -> list:
        """Under the writer lock: apply ``change(index, next_id, items) -> (rows, removed, next_id)``
        to the current version and commit the result; returns the rows added."""
        with self.store.writer(timeout):
            base = self.store.acquire()
            manifest = self.store.manifest(base.version)
            in_place = self.writer and base.version == self.version
            index = self.index if in_place else self.store.load(base.version)
            previous = self.store.path(base.version) / ITEMS

            def write(folder: Path) -> Dict[str, Any]:
                shutil.copyfile(previous, folder / ITEMS)
                with closing(sqlite3.connect(folder / ITEMS)) as db:
                    write_items(db, rows, removed)
                return _version_fields(index, folder, next_id, manifest["extra"]["index_spec"])

            try:
                rows, removed, next_id = change(index, int(manifest["extra"]["next_id"]), ItemsReader(previous))
                version = self.store.commit(write)
            except BaseException:
                if in_place:  # the index may be half-changed: read the held version again
                    self.index = self.store.load(self.version)
                raise
            old, self._lease = self._lease, self.store.acquire(version)
            self.manifest, self.index = self.store.manifest(version), index
            self._items = ItemsReader(self.store.path(version) / ITEMS)
            old.release()
            base.release()
            self.store.prune(keep=2)
        return rows

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


def _version_fields(index: Index, folder: Path, next_id: int, index_spec: str) -> Dict[str, Any]:
    index.save(folder / "index.bin")
    return {"kind": registered_name(index), "dim": index.dim, "ntotal": len(index),
            "extra": {"next_id": next_id, "index_spec": index_spec}}


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

