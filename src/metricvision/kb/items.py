"""The items table of a KB version (SQLite): rows, metadata filters and caption full-text search.

Tables::

    items(id, image, caption, label, metadata JSON)   one row per item
    meta(key, value, id)                               scalar metadata, indexed for filters
    captions(caption)                                  FTS5 over captions, rowid = item id

KBs written before ``meta`` / ``captions`` existed get them on their next write
(``ensure_schema``); until then filters read the JSON column and keyword search is refused.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

SCHEMA = ("CREATE TABLE items (id INTEGER PRIMARY KEY, image TEXT NOT NULL, caption TEXT NOT NULL DEFAULT '', "
          "label INTEGER NOT NULL DEFAULT -1, metadata TEXT NOT NULL DEFAULT '{}')")
SIDE_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT NOT NULL, value, id INTEGER NOT NULL, PRIMARY KEY (key, value, id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS items_label ON items(label)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS captions USING fts5(caption)",
)
FILTER_COLUMNS = ("label", "caption")
MAX_FILTER_VALUES = 1000
INT64 = 1 << 63
Row = Tuple[int, str, str, int, Dict[str, Any]]


def _scalar(key: str, value: Any) -> Any:
    """A filter / metadata value SQLite can compare: str, finite float, bool or int in int64."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise ValueError(f"filter '{key}': integer {value} is out of the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"filter '{key}': number must be finite, got {value}")
        return value
    if isinstance(value, str):
        return value
    raise ValueError(f"filter '{key}' must be a string, number, boolean or a list of them, got {type(value).__name__}")


def check_filters(filters: Dict[str, Any]) -> Dict[str, List[Any]]:
    """Validate ``{key: value or [values]}`` -> ``{key: [scalar values]}``.

    Raises:
        ValueError: naming the bad key or value (objects, nested lists, huge integers, NaN).
    """
    out: Dict[str, List[Any]] = {}
    for key, value in filters.items():
        if not isinstance(key, str) or not key or not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise ValueError(f"filter key must be alphanumeric (ASCII letters, digits, _), got '{key}'")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise ValueError(f"filter '{key}' needs 1 to {MAX_FILTER_VALUES} values, got {len(values)}")
        out[key] = [_scalar(key, v) for v in values]
    return out


def create_items(path: Path) -> None:
    """An empty items database at ``path``."""
    with closing(sqlite3.connect(path)) as db:
        db.execute(SCHEMA)
        for statement in SIDE_TABLES:
            db.execute(statement)
        db.commit()


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create and fill ``meta`` / ``captions`` in a database written before they existed."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for statement in SIDE_TABLES:
        db.execute(statement)
    if "meta" not in tables:
        rows = db.execute("SELECT id, metadata FROM items").fetchall()
        db.executemany("INSERT OR IGNORE INTO meta (key, value, id) VALUES (?, ?, ?)",
                       [m for i, raw in rows for m in _meta_rows(i, json.loads(raw))])
    if "captions" not in tables:
        db.execute("INSERT INTO captions (rowid, caption) SELECT id, caption FROM items")


def _meta_rows(item_id: int, metadata: Dict[str, Any]) -> Iterable[Tuple[str, Any, int]]:
    for key, value in metadata.items():
        if isinstance(value, (str, float, bool)) or (isinstance(value, int) and -INT64 <= value < INT64):
            yield key, int(value) if isinstance(value, bool) else value, item_id


def write_items(db: sqlite3.Connection, rows: Sequence[Row], remove: Sequence[int] = ()) -> None:
    """Insert ``rows`` (id, image, caption, label, metadata) and delete ids ``remove`` in all tables."""
    ensure_schema(db)
    if remove:
        gone = [(int(i),) for i in remove]
        for statement in ("DELETE FROM items WHERE id = ?", "DELETE FROM captions WHERE rowid = ?"):
            db.executemany(statement, gone)
        db.executemany("DELETE FROM meta WHERE id = ?", gone)
    db.executemany("INSERT INTO items (id, image, caption, label, metadata) VALUES (?, ?, ?, ?, ?)",
                   [(i, im, c, lab, json.dumps(m)) for i, im, c, lab, m in rows])
    db.executemany("INSERT INTO captions (rowid, caption) VALUES (?, ?)", [(r[0], r[2]) for r in rows])
    db.executemany("INSERT OR IGNORE INTO meta (key, value, id) VALUES (?, ?, ?)",
                   [m for r in rows for m in _meta_rows(r[0], r[4])])
    db.commit()


class ItemsReader:
    """Read-only queries on one version's items database.

    Args:
        path: the items.sqlite file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()  # one connection per thread, opened on first use
        self.tables = {r[0] for r in self._db().execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            yield db
        finally:
            db.rollback()  # ends the read transaction (and drops temp tables' rows)

    def count(self) -> int:
        """Number of rows."""
        with self._cursor() as db:
            return int(db.execute("SELECT count(*) FROM items").fetchone()[0])

    def recent(self, n: int) -> List[Dict[str, Any]]:
        """The ``n`` items with the largest ids (the newest), newest first."""
        with self._cursor() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM items ORDER BY id DESC LIMIT ?", (int(n),))]
        found = self.items(ids)
        return [found[i] for i in ids]

    def items(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        """Items by id (missing ids are left out)."""
        if not len(ids):
            return {}
        with self._cursor() as db:
            marks = ",".join("?" * len(ids))
            rows = db.execute(f"SELECT * FROM items WHERE id IN ({marks})", [int(i) for i in ids]).fetchall()
        return {r["id"]: {"id": r["id"], "image": r["image"], "caption": r["caption"], "label": r["label"],
                          "metadata": json.loads(r["metadata"])} for r in rows}

    def allowed_ids(self, filters: Dict[str, Any]) -> np.ndarray:
        """Sorted (n,) int64 ids of items matching every filter ("label", "caption" or a metadata key)."""
        clauses, params = [], []
        for key, values in check_filters(filters).items():
            marks = ",".join("?" * len(values))
            if key in FILTER_COLUMNS:
                clauses.append(f"id IN (SELECT id FROM items WHERE {key} IN ({marks}))")
            elif "meta" in self.tables:
                clauses.append(f"id IN (SELECT id FROM meta WHERE key = ? AND value IN ({marks}))")
                params.append(key)
            else:
                clauses.append(f"id IN (SELECT id FROM items WHERE json_extract(metadata, '$.{key}') IN ({marks}))")
            params += values
        where = " AND ".join(clauses) or "1"
        with self._cursor() as db:
            ids = np.array([r[0] for r in db.execute(f"SELECT id FROM items WHERE {where}", params)], dtype=np.int64)
        return np.sort(ids)

    def keyword_search(self, text: str, k: int, allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """BM25 top-k of captions matching any word of ``text`` -> (scores (n,), ids (n,)), best first, n <= k.

        Scores are SQLite's bm25 negated (larger is better). Words are quoted, so FTS5 operators
        in the text are plain words.
        """
        if "captions" not in self.tables:
            raise ValueError("this KB version has no caption index (written before keyword search existed); "
                             "any `kb add` or write adds it")
        words = re.findall(r"\w+", text)
        if not words:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words[:32])
        sql, params = "SELECT rowid, bm25(captions) FROM captions WHERE captions MATCH ?", [match]
        if allowed is not None:
            # a temp table keeps large allowed sets out of the SQL text
            sql += " AND rowid IN (SELECT id FROM allowed)"
        sql += " ORDER BY bm25(captions) LIMIT ?"
        with self._cursor() as db:
            if allowed is not None:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS allowed (id INTEGER PRIMARY KEY)")
                db.execute("DELETE FROM allowed")
                db.executemany("INSERT INTO allowed VALUES (?)", [(int(i),) for i in allowed])
            rows = db.execute(sql, params + [int(k)]).fetchall()
        return (np.array([-r[1] for r in rows], dtype=np.float32), np.array([r[0] for r in rows], dtype=np.int64))


def merge_items(db: sqlite3.Connection, sources: Sequence[Path]) -> None:
    """Copy every row of the items databases ``sources`` (rows, metadata, captions) into ``db``."""
    ensure_schema(db)
    for n, src in enumerate(sources):
        db.execute(f"ATTACH DATABASE ? AS src{n}", (str(src),))
        db.execute(f"INSERT INTO items SELECT id, image, caption, label, metadata FROM src{n}.items")
        db.execute(f"INSERT INTO captions (rowid, caption) SELECT id, caption FROM src{n}.items")
        db.execute(f"INSERT OR IGNORE INTO meta SELECT key, value, id FROM src{n}.meta")
        db.commit()
        db.execute(f"DETACH DATABASE src{n}")


class ItemsView:
    """The items of a base database and its segments' databases, minus tombstoned ids, read as one.

    Args:
        paths: items.sqlite of the base, then of each segment (disjoint ids).
        tombstones: (T,) sorted ids that are deleted.
        ranges: (lowest, highest) id of each segment; the base holds only ids below them all,
            so lookups by id go to the one part that can hold it. None: ask every part.
    """

    def __init__(self, paths: Sequence[Path], tombstones: np.ndarray,
                 ranges: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        self.parts = [ItemsReader(p) for p in paths]
        self.tombstones = tombstones
        self.ranges = None if ranges is None else np.asarray(ranges, dtype=np.int64).reshape(-1, 2)

    def _live(self, ids: np.ndarray) -> np.ndarray:
        return ids[~np.isin(ids, self.tombstones)] if self.tombstones.size else ids

    def count(self) -> int:
        """Number of live rows."""
        return sum(p.count() for p in self.parts) - int(self.tombstones.size)

    def recent(self, n: int) -> List[Dict[str, Any]]:
        """The ``n`` live items with the largest ids, newest first."""
        newest = [it for p in self.parts for it in p.recent(n + int(self.tombstones.size))]
        live = set(self._live(np.array([it["id"] for it in newest], dtype=np.int64)).tolist())
        return sorted((it for it in newest if it["id"] in live), key=lambda it: -it["id"])[:n]

    def items(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        """Live items by id (missing ids are left out)."""
        wanted = self._live(np.asarray([int(i) for i in ids], dtype=np.int64))
        if self.ranges is None:
            picks = [np.ones(wanted.shape, dtype=bool)] * len(self.parts)
        else:
            below = wanted < self.ranges[:, 0].min() if len(self.ranges) else np.ones(wanted.shape, dtype=bool)
            picks = [below, *((wanted >= lo) & (wanted <= hi) for lo, hi in self.ranges)]
        found: Dict[int, Dict[str, Any]] = {}
        for part, pick in zip(self.parts, picks):
            if pick.any():
                found.update(part.items(wanted[pick].tolist()))
        return found

    def allowed_ids(self, filters: Dict[str, Any]) -> np.ndarray:
        """Sorted (n,) int64 live ids matching every filter."""
        return self._live(np.sort(np.concatenate([p.allowed_ids(filters) for p in self.parts])))

    def keyword_search(self, text: str, k: int, allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """BM25 top-k over every part (each part scored with its own statistics), tombstones dropped,
        merged by score -> (scores (n,), ids (n,)), best first, n <= k."""
        scores, ids = [], []
        for p in self.parts:
            s, i = p.keyword_search(text, k + int(self.tombstones.size), allowed)
            keep = ~np.isin(i, self.tombstones)
            scores.append(s[keep])
            ids.append(i[keep])
        s, i = np.concatenate(scores), np.concatenate(ids)
        order = np.argsort(-s, kind="stable")[:k]
        return s[order], i[order]
