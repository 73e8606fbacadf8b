"""Querying a knowledge base with an image, a text, or both, with optional heat maps and boxes."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from metricvision.data import load_image
from metricvision.kb.compose import Combiner, weighted_sum
from metricvision.kb.localize import boxes_from_map, heatmap_png, similarity_map, upsample
from metricvision.kb.store import KnowledgeBase

COMBINER_FILE = "combiner.safetensors"


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
) -> torch.Tensor:
    """(D,) normalized query: the image's or the text's embedding, or both composed.

    Args:
        kb: the knowledge base (its model encodes the query).
        image: path, array or PIL image.
        text: the text.
        text_weight: weight of the text in the weighted sum (composed queries without combiner).
        combiner: a trained Combiner; used for composed queries when given.
    """
    text = text.strip() if text else None
    if image is None and not text:
        raise ValueError("a query needs an image, a text, or both")
    img = kb.model.encode_images([image]) if image is not None else None
    txt = kb.model.encode_text([text]) if text else None
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


def search(
    kb: KnowledgeBase,
    image: Any = None,
    text: Optional[str] = None,
    k: int = 10,
    filters: Optional[Dict[str, Any]] = None,
    with_heatmap: bool = False,
    text_weight: float = 0.5,
    combiner: Optional[Combiner] = None,
) -> List[Dict[str, Any]]:
    """Top-k items for a query.

    Returns:
        hits, best first: the item's fields (id, image, caption, label, metadata) plus
        score, and with ``with_heatmap`` the boxes [x0, y0, x1, y1, score] in pixels of the
        image (``size`` = [width, height]) and the heat map as base64 PNG (``heatmap``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = embed_query(kb, image, text, text_weight, combiner)
    scores, ids = kb.search(q[None].numpy(), k, filters)
    valid = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
    items = kb.items([i for _, i in valid])
    hits = []
    for score, i in valid:
        hit = {**items[i], "score": score}
        if with_heatmap:
            loc = localize_in_image(kb, q, kb.image_path(i))
            hit["boxes"], hit["size"] = loc["boxes"], [loc["width"], loc["height"]]
            hit["heatmap"] = base64.b64encode(loc["heatmap_png"]).decode("ascii")
        hits.append(hit)
    return hits
