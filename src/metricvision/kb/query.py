"""Querying a knowledge base with an image, a text, or both, with optional heat maps and boxes."""
from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from metricvision.data import load_image
from metricvision.kb.compose import Combiner, weighted_sum
from metricvision.kb.hubness import SHORTLIST, rerank
from metricvision.kb.localize import boxes_from_map, heatmap_png, similarity_map, upsample
from metricvision.kb.model import ImageTextModel
from metricvision.kb.regions import best_regions, has_regions, load_regions, merge_with_regions
from metricvision.kb.store import KnowledgeBase
from metricvision.kb.views import encode_object_queries

COMBINER_FILE = "combiner.safetensors"
MODES = ("vector", "keyword", "hybrid")
RRF_C = 60
TEXT_CACHE = 4096


CacheInfo = namedtuple("CacheInfo", "hits misses maxsize currsize")


class TextEmbeddingCache:
    """``cache(model, text)`` -> (1, D) embedding of ``text`` by ``model``, the last ``maxsize`` pairs kept.

    A server sees the same queries again, and text encoding is serialized by the model's lock.
    Unlike ``functools.lru_cache`` it can be asked whether a text is cached without encoding it
    (``peek``): the server answers such queries without a hop to a worker thread.

    Args:
        maxsize: (model, text) pairs kept, least recently used dropped first.
    """

    def __init__(self, maxsize: int = TEXT_CACHE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize, self.hits, self.misses = maxsize, 0, 0
        self._items: "OrderedDict[Tuple[ImageTextModel, str], torch.Tensor]" = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, model: ImageTextModel, text: str) -> Optional[torch.Tensor]:
        """The cached (1, D) embedding (counted as a hit), None when it is not cached."""
        with self._lock:
            emb = self._items.get((model, text))
            if emb is not None:
                self._items.move_to_end((model, text))
                self.hits += 1
            return emb

    def cached(self, model: ImageTextModel, text: str) -> bool:
        """Whether the embedding of ``text`` by ``model`` is cached (nothing is counted or moved)."""
        return (model, text) in self._items

    def __call__(self, model: ImageTextModel, text: str) -> torch.Tensor:
        emb = self.peek(model, text)
        if emb is not None:
            return emb
        emb = model.encode_text([text])  # outside the lock: the model serializes encoding itself
        with self._lock:
            self.misses += 1
            self._items[(model, text)] = emb
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return emb

    def cache_info(self) -> CacheInfo:
        """hits, misses, maxsize and currsize, as ``functools.lru_cache`` reports them."""
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self._items))

    def cache_clear(self) -> None:
        """Forget every embedding."""
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


encode_text_cached = TextEmbeddingCache()


def load_combiner(kb: KnowledgeBase) -> Optional[Combiner]:
    """The KB's trained combiner (KB/combiner.safetensors), None when there is none."""
    path = Path(kb.path) / COMBINER_FILE
    return Combiner.load(path) if path.exists() else None


def embed_query(
    kb: KnowledgeBase,
    image: Any = None,
    text: Optional[str] = None,
    text_weight: float = 0.5,
    combiner: Optional[Combiner] = None,
    object_views: bool = False,
) -> torch.Tensor:
    """(D,) normalized query: the image's or the text's embedding, or both composed.

    Args:
        kb: the knowledge base (its model encodes the query).
        image: path, array or PIL image.
        text: the text.
        text_weight: weight of the text in the weighted sum (composed queries without combiner).
        combiner: a trained Combiner; used for composed queries when given.
        object_views: embed the image as the mean over its ``kb.views.object_views``.
    """
    text = text.strip() if text else None
    if image is None and not text:
        raise ValueError("a query needs an image, a text, or both")
    img = encode_object_queries(kb.model, [image], views=object_views) if image is not None else None
    txt = encode_text_cached(kb.model, text) if text else None
    if img is None:
        return txt[0]
    if txt is None:
        return img[0]
    with torch.no_grad():
        q = combiner(img, txt) if combiner is not None else weighted_sum(img, txt, text_weight)
    return q[0]


def localize_in_image(kb: KnowledgeBase, query: torch.Tensor, image: Any, **box_kwargs: Any) -> Dict[str, Any]:
    """Heat map (PNG bytes, image size) and boxes of ``query`` in one image."""
    im = load_image(image)
    heat = upsample(similarity_map(query, kb.model.encode_dense(im)), (im.height, im.width))
    boxes = boxes_from_map(heat, **box_kwargs)
    return {"heatmap_png": heatmap_png(heat), "boxes": [b.as_list() for b in boxes], "width": im.width, "height": im.height}


def fuse_rrf(ranked: List[np.ndarray], k: int, c: int = RRF_C) -> Tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion (Cormack et al. 2009): score(id) = sum over lists of 1 / (c + rank).

    Args:
        ranked: (n_i,) id arrays, best first (-1 entries are ignored).
        k: results kept.

    Returns:
        (scores (n,), ids (n,)), best first, n <= k; ties keep first-seen order.
    """
    fused: Dict[int, float] = {}
    for ids in ranked:
        for rank, i in enumerate(int(i) for i in ids if i >= 0):
            fused[i] = fused.get(i, 0.0) + 1.0 / (c + rank + 1)
    best = sorted(fused.items(), key=lambda t: -t[1])[:k]
    return np.array([s for _, s in best], np.float32), np.array([i for i, _ in best], np.int64)


def search(
    kb: KnowledgeBase,
    image: Any = None,
    text: Optional[str] = None,
    k: int = 10,
    filters: Optional[Dict[str, Any]] = None,
    with_heatmap: bool = False,
    text_weight: float = 0.5,
    combiner: Optional[Combiner] = None,
    mode: str = "vector",
    heatmap_top: Optional[int] = None,
    deadline: Optional[float] = None,
    object_views: bool = False,
    hub_correction: bool = True,
) -> List[Dict[str, Any]]:
    """Top-k items for a query.

    Args:
        object_views: embed the query image as the mean over its views (``embed_query``).
        hub_correction: in a KB with a text bank (``metricvision.kb.hubness``) and without regions, rank the items
            of a text-only query by the hubness-corrected score 2 cos - r (its hits' ``score``); False: plain cosine.
        mode: "vector" (embeddings), "keyword" (BM25 over captions, needs a text) or "hybrid"
            (both ranked lists fused by reciprocal rank fusion; the score is the fused one).
        heatmap_top: heat maps only for the first this many hits (default: all k).
        deadline: ``time.monotonic()`` after which no further heat map is computed.

    Returns:
        hits, best first: the item's fields (id, image, caption, label, metadata) plus
        score, and with ``with_heatmap`` the boxes [x0, y0, x1, y1, score] in pixels of the
        image (``size`` = [width, height]) and the heat map as base64 PNG (``heatmap``);
        a hit whose map could not be made carries ``heatmap_error`` instead. In a KB with
        regions (``kb.regions``) an item scores the max of its whole-image and best region
        similarities, and its hit carries ``regions``: [{"box": [x0, y0, x1, y1], "score"}], best first.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
    if mode != "vector" and not (text and text.strip()):
        raise ValueError(f"mode '{mode}' needs a text")
    q = embed_query(kb, image, text, text_weight, combiner, object_views) if mode != "keyword" or with_heatmap else None
    regions: Dict[int, List[Dict[str, Any]]] = {}
    with_regions = has_regions(kb.path)
    hub = hub_correction and image is None and kb.text_bank is not None and not with_regions
    shortlisted: Dict[int, Dict[str, Any]] = {}  # the items read to re-rank, reused for the hits
    if mode == "keyword":
        scores, ids = kb.keyword_search(text, k, filters)
    else:
        fetch = k if mode == "vector" else max(k, 50)
        vs, vi = kb.search(q[None].numpy(), max(fetch, SHORTLIST) if hub else fetch, filters)
        if hub:
            shortlisted = kb.items([int(i) for i in vi[0] if i >= 0])
            vs, vi = (x[None] for x in rerank(vs[0], vi[0], shortlisted, fetch))
        if with_regions:
            allowed = kb.allowed_ids(filters) if filters else None
            regions = best_regions(load_regions(kb.path), q.numpy(), allowed, max_items=fetch)
            vs, vi = (x[None] for x in merge_with_regions(vs[0], vi[0], regions, fetch))
        scores, ids = (vs[0], vi[0]) if mode == "vector" else fuse_rrf([vi[0], kb.keyword_search(text, fetch, filters)[1]], k)
    valid = [(float(s), int(i)) for s, i in zip(scores, ids) if i >= 0]
    wanted = [i for _, i in valid]
    items = shortlisted if all(i in shortlisted for i in wanted) else kb.items(wanted)
    hits = []
    for rank, (score, i) in enumerate(v for v in valid if v[1] in items):
        hit = {**items[i], "score": score}
        if regions.get(i):
            hit["regions"] = regions[i]
        if with_heatmap and rank < (k if heatmap_top is None else heatmap_top):
            if deadline is not None and time.monotonic() > deadline:
                hit["heatmap_error"] = "skipped: the request's time budget is spent"
            else:
                try:
                    loc = localize_in_image(kb, q, kb.image_path(i))
                    hit["boxes"], hit["size"] = loc["boxes"], [loc["width"], loc["height"]]
                    hit["heatmap"] = base64.b64encode(loc["heatmap_png"]).decode("ascii")
                except (OSError, ValueError) as e:  # image file gone or unreadable: the hit stays
                    hit["heatmap_error"] = str(e)
        hits.append(hit)
    return hits
