"""KnowledgeBase: a folder with an index, a SQLite table of items and the model card.

Layout::

    KB/model_card.json             the model that made the embeddings
    KB/index/CURRENT               the committed version (metricvision.index.IndexStore)
    KB/index/v000002/index.bin     the vectors (any registered index: Flat, faiss specs)
    KB/index/v000002/items.sqlite  items(id, image, caption, label, metadata JSON)
    KB/images/<id>.png             images of samples that came as arrays

Every write commits a new IndexStore version (index + items together, written under a
temporary name and renamed) so a crash at any point leaves the previous version readable.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from metricvision._atomic import atomic_write
from metricvision.data import Sample
from metricvision.index import Index, IndexStore, create_index, filtered_search
from metricvision.index.store import registered_name
from metricvision.kb.model import ImageTextModel, ModelCard

CARD = "model_card.json"
ITEMS = "items.sqlite"
SCHEMA = ("CREATE TABLE items (id INTEGER PRIMARY KEY, image TEXT NOT NULL, caption TEXT NOT NULL DEFAULT '', "
          "label INTEGER NOT NULL DEFAULT -1, metadata TEXT NOT NULL DEFAULT '{}')")
FILTER_COLUMNS = ("label", "caption")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename over ``path``."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2).encode())


class KnowledgeBase:
    """Images + text + metadata, searchable by embedding.

    Use ``KnowledgeBase.create(path, model)`` for a new one and ``KnowledgeBase.open(path)``
    for an existing one.
    """

    def __init__(self, path: Path, card: ModelCard, model: Optional[ImageTextModel]) -> None:
        self.path, self.card = path, card
        self._model = model
        self.store = IndexStore(path / "index")
        self.manifest = self.store.manifest()
        self.index: Index = self.store.load()

    @classmethod
    def create(cls, path: str | os.PathLike, model: ImageTextModel, index_spec: str = "Flat") -> "KnowledgeBase":
        """An empty KB at ``path`` (which must not hold one) with an index built by ``create_index(index_spec)``."""
        path = Path(path)
        if (path / CARD).exists():
            raise FileExistsError(f"{path} already holds a knowledge base; use `kb add` to append")
        index = create_index(index_spec, model.dim, "ip")
        path.mkdir(parents=True, exist_ok=True)

        def write(folder: Path) -> Dict[str, Any]:
            with closing(sqlite3.connect(folder / ITEMS)) as db:
                db.execute(SCHEMA)
                db.commit()
            return _version_fields(index, folder, 0, index_spec)

        IndexStore(path / "index").commit(write)
        write_json_atomic(path / CARD, asdict(model.card))
        return cls(path, model.card, model)

    @classmethod
    def open(cls, path: str | os.PathLike, model: Optional[ImageTextModel] = None) -> "KnowledgeBase":
        """Open the KB at ``path``; its model is built from the card on first use unless given."""
        path = Path(path)
        if not (path / CARD).exists():
            raise FileNotFoundError(f"no knowledge base at {path} ({CARD} not found); create one with `kb build`")
        card = ModelCard.from_dict(json.loads((path / CARD).read_text()))
        return cls(path, card, model)

    @property
    def model(self) -> ImageTextModel:
        """The model of the card (loaded on first use)."""
        if self._model is None:
            self._model = ImageTextModel(ModelCard(**asdict(self.card)))
        return self._model

    def __len__(self) -> int:
        return len(self.index)

    @property
    def version(self) -> int:
        """The committed version this object reads."""
        return int(self.manifest["version"])

    def _db(self) -> sqlite3.Connection:
        uri = f"file:{self.store.path(self.version) / ITEMS}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        return db

    def add(self, samples: Sequence[Sample], batch_size: int = 128) -> List[int]:
        """Embed and append samples as one new version; returns their ids.

        Array images are written as PNG under images/; path images are stored as absolute paths.
        """
        if not samples:
            return []
        emb = self.model.encode_images([s.image for s in samples], batch_size).numpy()
        return self.add_embedded(samples, emb)

    def add_embedded(self, samples: Sequence[Sample], embeddings: np.ndarray) -> List[int]:
        """Append samples whose (N, D) embeddings are already computed (one new version)."""
        if len(samples) != len(embeddings):
            raise ValueError(f"got {len(samples)} samples but {len(embeddings)} embeddings")
        first = int(self.manifest["extra"]["next_id"])
        ids = list(range(first, first + len(samples)))
        rows = [(i, self._store_image(i, s), s.caption, int(s.label), json.dumps(_metadata(s))) for i, s in zip(ids, samples)]
        index = self.store.load(self.version)
        x = np.asarray(embeddings, dtype=np.float32)
        if not getattr(index, "is_trained", True):
            index.train(x)
        index.add(x, np.asarray(ids, dtype=np.int64))
        previous = self.store.path(self.version) / ITEMS

        def write(folder: Path) -> Dict[str, Any]:
            shutil.copyfile(previous, folder / ITEMS)
            with closing(sqlite3.connect(folder / ITEMS)) as db:
                db.executemany("INSERT INTO items (id, image, caption, label, metadata) VALUES (?, ?, ?, ?, ?)", rows)
                db.commit()
            return _version_fields(index, folder, ids[-1] + 1, self.manifest["extra"]["index_spec"])

        version = self.store.commit(write)
        # the previous version stays so that a reader holding it keeps working
        self.store.prune(keep=2)
        self.manifest, self.index = self.store.manifest(version), index
        return ids

    def _store_image(self, item_id: int, sample: Sample) -> str:
        if isinstance(sample.image, (str, os.PathLike)):
            return str(Path(sample.image).resolve())
        rel = Path("images") / f"{item_id}.png"
        (self.path / "images").mkdir(exist_ok=True)
        tmp = self.path / "images" / f".{item_id}.png.tmp"
        img = sample.image if isinstance(sample.image, Image.Image) else Image.fromarray(np.asarray(sample.image))
        img.save(tmp, format="PNG")
        os.replace(tmp, self.path / rel)
        return str(rel)

    def get(self, item_id: int) -> Dict[str, Any]:
        """The item with this id as a dict (id, image, caption, label, metadata).

        Raises:
            KeyError: when no item has this id.
        """
        with closing(self._db()) as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            raise KeyError(f"no item with id {item_id} (the KB holds {len(self)} items)")
        return _row(row)

    def items(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        """Items by id (missing ids are left out)."""
        if not ids:
            return {}
        with closing(self._db()) as db:
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT * FROM items WHERE id IN ({marks})", [int(i) for i in ids]).fetchall()
        return {r["id"]: _row(r) for r in rows}

    def image_path(self, item_id: int) -> Path:
        """Absolute path of the item's image."""
        p = Path(self.get(item_id)["image"])
        return p if p.is_absolute() else self.path / p

    def allowed_ids(self, filters: Dict[str, Any]) -> np.ndarray:
        """Ids of items matching every filter: "label", "caption" or a metadata key -> value (or list of values)."""
        clauses, params = [], []
        for key, value in filters.items():
            if not key.replace("_", "").isalnum():
                raise ValueError(f"filter key must be alphanumeric, got '{key}'")
            column = key if key in FILTER_COLUMNS else f"json_extract(metadata, '$.{key}')"
            values = value if isinstance(value, (list, tuple)) else [value]
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params += values
        where = " AND ".join(clauses) or "1"
        with closing(self._db()) as db:
            return np.array([r[0] for r in db.execute(f"SELECT id FROM items WHERE {where}", params)], dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, filters: Optional[Dict[str, Any]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top-k items for (Q, D) query vectors, optionally restricted by ``filters`` -> (scores, ids), -1 padded."""
        if not filters:
            return self.index.search(queries, k)
        return filtered_search(self.index, queries, k, self.allowed_ids(filters))


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


def _row(row: sqlite3.Row) -> Dict[str, Any]:
    return {"id": row["id"], "image": row["image"], "caption": row["caption"], "label": row["label"],
            "metadata": json.loads(row["metadata"])}
