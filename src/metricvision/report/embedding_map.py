"""A 2-D map of the test embeddings for report.html: t-SNE (scikit-learn), coloured by category,
the image and its name shown on hover. Self-contained SVG + a few lines of script."""
from __future__ import annotations

import base64
import html
import io
import json
from typing import List, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex

from metricvision.data.sample import Sample, load_image

WIDTH, HEIGHT, PAD = 640, 460, 12


def display_name(sample: Sample) -> str:
    """A sample's class as a person reads it: its caption, else its name, else ``class <label>``."""
    return sample.caption or str(sample.meta.get("name", "")) or f"class {sample.label}"


def _category(sample: Sample) -> str:
    return str(sample.meta.get("category") or sample.meta.get("class") or sample.label)


def _thumbnail(sample: Sample, size: int = 40) -> str:
    buf = io.BytesIO()
    load_image(sample.image).resize((size, size)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tsne_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE coordinates scaled to [0, 1] (perplexity capped for small N)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(embeddings)
    if n < 3:
        return np.full((n, 2), 0.5)
    # one thread: for a few hundred points, OpenMP threads cost far more than they save (10x on a busy 2-core machine)
    with threadpool_limits(1):
        xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", max_iter=500, random_state=seed).fit_transform(embeddings)
    span = np.ptp(xy, axis=0)
    return (xy - xy.min(axis=0)) / np.where(span > 0, span, 1)


def embedding_map(samples: Sequence[Sample], embeddings: torch.Tensor | np.ndarray, max_points: int = 500,
                  seed: int = 0) -> str:
    """HTML of the map: at most ``max_points`` test samples (a seeded random subset).

    Args:
        samples: (N,) test samples.
        embeddings: (N, D) their embeddings.
    """
    n = len(samples)
    if n < 2:
        return ""
    keep = np.sort(np.random.default_rng(seed).choice(n, min(n, max_points), replace=False))
    xy = tsne_2d(np.asarray(embeddings, dtype=np.float32)[keep], seed)
    cats = [_category(samples[i]) for i in keep]
    order = [c for c, _ in sorted(((c, -cats.count(c)) for c in set(cats)), key=lambda t: (t[1], t[0]))]
    palette = colormaps["tab20"]
    colour = {c: to_hex(palette(j % 20)) if j < 20 else "#999999" for j, c in enumerate(order)}
    points: List[str] = []
    for j, i in enumerate(keep):
        x, y = PAD + xy[j, 0] * (WIDTH - 2 * PAD), PAD + (1 - xy[j, 1]) * (HEIGHT - 2 * PAD)
        title = html.escape(f"{display_name(samples[i])} ({cats[j]})")
        points.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{colour[cats[j]]}' data-i='{j}'><title>{title}</title></circle>")
    legend = "".join(f"<span class='key'><i style='background:{colour[c]}'></i>{html.escape(c)}</span>" for c in order[:20])
    if len(order) > 20:
        legend += f"<span class='key'><i style='background:#999999'></i>{len(order) - 20} more categories</span>"
    thumbs = json.dumps([_thumbnail(samples[i]) for i in keep])
    return (
        f"<div id='map' style='position:relative'><svg width='{WIDTH}' height='{HEIGHT}' style='border:1px solid #ddd'>"
        + "".join(points) + "</svg><img id='map-hover' alt='' style='position:absolute;display:none;width:64px;"
        "height:64px;image-rendering:pixelated;border:1px solid #333;background:#fff;pointer-events:none'>"
        f"<div class='legend'>{legend}</div></div>"
        f"<script>(function(){{const t={thumbs};const img=document.getElementById('map-hover');"
        "document.querySelectorAll('#map circle').forEach(c=>{c.addEventListener('mouseenter',()=>{"
        "img.src=t[c.dataset.i];img.style.left=(+c.getAttribute('cx')+10)+'px';img.style.top=(+c.getAttribute('cy')+10)+'px';"
        "img.style.display='block';});c.addEventListener('mouseleave',()=>{img.style.display='none';});});})();</script>"
    )
