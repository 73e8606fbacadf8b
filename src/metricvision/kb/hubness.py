"""The hubness correction of a KB's text queries: a bank of texts stored with the KB, each item's crowding among them.

A text query's nearest images are often hubs: images close to many texts, which rank high for every query. The
correction is a simplified CSLS on the gallery side (Conneau et al., ICLR 2018, take an item's neighbourhood among
the queries; here among a fixed bank of texts, e.g. the names of the classes the model was trained on): an item
scores 2 cos(query, item) - r, r = the item's mean cosine to its ``k`` nearest bank texts. The bank is set when the
KB is created (``KnowledgeBase.create(..., text_bank=)``, `kb build --text-bank SPEC`) and stored in
``KB/text_bank.safetensors``; r is computed once per item when it is added and kept in its metadata
(``text_crowding``), so it follows the item through every version, segment and compaction. A text query then takes
the ``SHORTLIST`` best items by cosine and re-ranks them by the corrected score (exact whenever the corrected top k
lies inside that shortlist).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from metricvision._atomic import atomic_write
from metricvision.similarity import crowding

TEXT_BANK = "text_bank.safetensors"
CROWDING_KEY = "text_crowding"
SHORTLIST = 200
DEFAULT_K = 10


def check_text_bank(bank: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """(R, D) bank -> float32, L2-normalized; refuses a bank of another width, an empty one, or k outside [1, R]."""
    bank = torch.as_tensor(bank, dtype=torch.float32)
    if bank.ndim != 2 or bank.shape[1] != dim or len(bank) == 0:
        raise ValueError(f"text bank must be (R >= 1, {dim}) embeddings in the model's space, got shape {tuple(bank.shape)}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"text bank k must be in [1, {len(bank)}] (the bank's size), got {k}")
    return torch.nn.functional.normalize(bank, dim=1)


def save_text_bank(kb_path: Path, bank: torch.Tensor, k: int, source: str = "") -> None:
    """Write the (R, D) normalized bank and its k to ``KB/text_bank.safetensors`` (temporary name, then renamed)."""
    with atomic_write(Path(kb_path) / TEXT_BANK) as f:
        f.write(save({"bank": bank.contiguous()}, metadata={"k": str(k), "source": source}))


def load_text_bank(kb_path: Path, dim: int) -> Optional[Tuple[torch.Tensor, int]]:
    """The KB's (R, dim) bank and k, or None when it has none (read once per file: every version of a KB shares it).

    Raises:
        ValueError: the file is unreadable, or its bank or k does not fit the KB's model (naming the file).
    """
    path = Path(kb_path) / TEXT_BANK
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    try:
        return _read_bank(str(path.resolve()), stat.st_mtime_ns, stat.st_size, dim)
    except Exception as e:
        raise ValueError(f"text bank {path} is unusable ({e}); remove the file to rank text queries by the plain "
                         f"cosine") from None


@functools.lru_cache(maxsize=8)
def _read_bank(path: str, mtime_ns: int, size: int, dim: int) -> Tuple[torch.Tensor, int]:
    """The file's checked bank and k (cached per file version: a KB object per version shares one read)."""
    with safe_open(path, framework="pt") as f:
        bank, k = f.get_tensor("bank"), int((f.metadata() or {}).get("k", DEFAULT_K))
    return check_text_bank(bank, k, dim), k


def item_crowding(embeddings: np.ndarray, bank: Tuple[torch.Tensor, int]) -> np.ndarray:
    """(N, D) item embeddings -> (N,) float32 r: each item's mean cosine to its k nearest bank texts."""
    x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings, np.float32)), dim=1)
    return crowding(x, bank[0], bank[1]).numpy()


def rerank(scores: np.ndarray, ids: np.ndarray, items: Dict[int, Dict[str, Any]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(n,) cosines and ids of a shortlist (-1 padded), ``items`` by id -> the k best by 2 cos - r, best first, ties
    by id (so the order does not depend on the shortlist's length). Items without a stored r (none in a KB created
    with its bank) keep r = 0."""
    keep = ids >= 0
    r = np.array([items.get(int(i), {}).get("metadata", {}).get(CROWDING_KEY, 0.0) for i in ids[keep]], np.float32)
    corrected, kept = 2 * scores[keep] - r, ids[keep]
    order = np.lexsort((kept, -corrected))[:k]
    return corrected[order], kept[order]
