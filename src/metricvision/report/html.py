"""report.html of a run: loss curve, Recall@K curve (or a chart of whatever scores the protocol
reports) and a grid of test queries with their top results."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metricvision.data.sample import Sample, load_image  # noqa: E402
from metricvision.index import FlatIndex  # noqa: E402


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def loss_plot(step_loss: Sequence[float], epochs: Sequence[Dict[str, Any]]) -> str:
    """Base64 PNG of the per-step loss with per-epoch means."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(step_loss) + 1), step_loss, lw=0.8, alpha=0.6, label="step")
    if epochs and step_loss:
        per = len(step_loss) / len(epochs)
        ax.plot([per * (i + 1) for i in range(len(epochs))], [e["loss"] for e in epochs], "o-", label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def recall_plot(curves: Dict[str, Dict[str, float]]) -> str:
    """Base64 PNG of Recall@K against K for one or more models."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, metrics in curves.items():
        ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("recall@"))
        ax.plot(ks, [metrics[f"recall@{k}"] for k in ks], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def scores_plot(metrics: Dict[str, Any]) -> str:
    """Base64 PNG bar chart of the numeric metrics with values in [0, 1] (accuracy, mAP, FPR, ...); "" if none."""
    scores = {k: float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1}
    if not scores:
        return ""
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(scores) + 0.8))
    ax.barh(list(scores)[::-1], list(scores.values())[::-1])
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def query_grid(samples: Sequence[Sample], embeddings: torch.Tensor, n_queries: int = 8, k: int = 6, seed: int = 0) -> str:
    """Base64 PNG: each row a query and its top-k results, green border = same label, red = not."""
    n = len(samples)
    if n < 2:
        return ""
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, min(n_queries, n), replace=False)
    index = FlatIndex(embeddings.shape[1])
    index.add(embeddings)
    k = min(k, n - 1)
    _, ids = index.search(embeddings[queries], k + 1)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 1.4 * len(queries)), squeeze=False)
    for row, (q, ranked) in enumerate(zip(queries, ids)):
        ranked = [int(i) for i in ranked if i != q][:k]
        for col, i in enumerate([int(q)] + ranked):
            ax = axes[row, col]
            ax.imshow(load_image(samples[i].image))
            ax.set_xticks([])
            ax.set_yticks([])
            color = "black" if col == 0 else ("green" if samples[i].label == samples[q].label else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(3 if col else 1)
            if col == 0:
                ax.set_title("query", fontsize=8)
    return _png(fig)


def write_report(run_dir: str | Path, title: str, metrics: Dict[str, float], history: Dict[str, List[Any]],
                 recipe: Dict[str, Any], grid_png: str = "", baselines: Dict[str, Dict[str, float]] | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    run_dir = Path(run_dir)
    curves = dict(baselines or {})
    curves[title] = metrics
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}td{padding:2px 12px}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:1em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><h2>Metrics (unseen classes)</h2><table>{rows}</table>",
    ]
    if history.get("step_loss"):
        parts.append(f"<h2>Loss</h2><img alt='loss curve' src='data:image/png;base64,{loss_plot(history['step_loss'], history.get('epochs', []))}'>")
    if any(k.startswith("recall@") for k in metrics):
        parts.append(f"<h2>Recall@K</h2><img alt='recall curve' src='data:image/png;base64,{recall_plot(curves)}'>")
    elif chart := scores_plot(metrics):
        parts.append(f"<h2>Scores</h2><img alt='scores chart' src='data:image/png;base64,{chart}'>")
    if grid_png:
        parts.append(f"<h2>Test queries and their top results</h2><p>green: same identity, red: wrong</p>"
                     f"<img alt='query grid' src='data:image/png;base64,{grid_png}'>")
    parts.append(f"<h2>Recipe</h2><pre>{html.escape(json.dumps(recipe, indent=2))}</pre></body></html>")
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)
    return path
