"""Bulk building: embed a KB's samples with the Ray pipeline, then append them in batches.

``engine.ray_embed`` runs Embedder actors over ray.data and writes Parquet shards; the
embeddings are then added with ``KnowledgeBase.add_embedded``, one version per batch (the
index is appended to, never rebuilt). The actors resize with the eval transform (torchvision)
where a query is resized by PIL, so stored and query embeddings of one image agree closely,
not bit for bit.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from metricvision.data import Sample
from metricvision.kb.store import KnowledgeBase


def add_with_ray(
    kb: KnowledgeBase,
    samples: Sequence[Sample],
    num_workers: int = 2,
    batch: int = 100_000,
    address: Optional[str] = None,
    image_root: Optional[str | os.PathLike] = None,
) -> List[int]:
    """Embed ``samples`` with ``num_workers`` Ray actors and append them to ``kb`` in batches; returns their ids.

    Args:
        kb: the KB (its model's Embedder is shipped to the actors).
        samples: items; path images must be readable from every Ray node.
        num_workers: embedding actors.
        batch: samples per committed version.
        address: Ray cluster address; None starts a local instance.
        image_root: path images must lie inside it (see ``KnowledgeBase.add``).
    """
    from metricvision.engine.ray_embed import ray_embed, read_embeddings

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not samples:
        return []
    with tempfile.TemporaryDirectory(dir=kb.path, prefix=".ray-embed-") as tmp:
        out = Path(tmp) / "embeddings"
        ray_embed(kb.model.embedder, samples, out, image_size=kb.card.image_size, address=address, num_workers=num_workers)
        rows, _, emb = read_embeddings(out)
    ids: List[int] = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        ids += kb.add_embedded([samples[int(r)] for r in part], emb[start : start + batch], image_root)
    return ids
