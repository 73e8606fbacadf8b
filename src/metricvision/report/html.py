"""report.html of a run: warnings, metrics, loss and Recall@K curves (or a chart of whatever scores the
protocol reports), a grid of test queries with their top results, the precision-recall curve, the
classes that fail most and a 2-D map of the test set."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metricvision.data.sample import Sample, load_image  # noqa: E402
from metricvision.index import FlatIndex  # noqa: E402
from metricvision.report.analysis import failing_classes, neighbours, precision_recall  # noqa: E402
from metricvision.report.embedding_map import display_name, embedding_map  # noqa: E402

NEIGHBOURS = 100  # ranked list length behind the precision-recall curve and the failing classes


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


SHOT_GROUPS = ("many", "medium", "few")


def shot_bars(metrics: Dict[str, Any]) -> Dict[str, List[float]]:
    """Per classifier, its many / medium / few-shot accuracies: the protocol's (``*_shot``, "nearest class mean")
    and each ``PREFIX_few_shot`` one (OLTR's ``oltr_``)."""
    prefixes = [k[: -len("few_shot")] for k in metrics if k.endswith("few_shot") and isinstance(metrics[k], (int, float))]
    return {p.rstrip("_") or "nearest class mean": [float(metrics.get(f"{p}{g}_shot", float("nan"))) for g in SHOT_GROUPS]
            for p in prefixes}


def shot_plot(metrics: Dict[str, Any]) -> str:
    """Base64 PNG of accuracy by class frequency, grouped bars of ``shot_bars``; "" without ``*few_shot``."""
    bars = shot_bars(metrics)
    if not bars:
        return ""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        ax.bar(np.arange(3) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, [f"{g}-shot" for g in SHOT_GROUPS])
    ax.set_ylabel("per-class accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def _short(text: str, width: int = 15) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def task_accuracy_plot(metrics: Dict[str, Any]) -> str:
    """Base64 PNG, one panel per ``*_task_accuracy`` metric ((T, T): accuracy on task j after task t):
    each task's accuracy over time; "" if there is none."""
    mats = {k[: -len("_task_accuracy")]: np.array(v, dtype=float) for k, v in metrics.items() if k.endswith("_task_accuracy")}
    if not mats:
        return ""
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.2), squeeze=False)
    for ax, (name, acc) in zip(axes[0], mats.items()):
        steps = np.arange(1, acc.shape[0] + 1)
        for j in range(acc.shape[1]):
            ax.plot(steps[j:], acc[j:, j], "o-", label=f"task {j + 1}")
        ax.set_title(name)
        ax.set_xlabel("after task")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return _png(fig)


def query_grid(samples: Sequence[Sample], embeddings: torch.Tensor, n_queries: int = 8, k: int = 6, seed: int = 0) -> str:
    """Base64 PNG: each row a query and its top-k results with their names and cosine scores,
    green border = same label, red = not."""
    n = len(samples)
    if n < 2:
        return ""
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, min(n_queries, n), replace=False)
    index = FlatIndex(embeddings.shape[1])
    index.add(embeddings)
    k = min(k, n - 1)
    scores, ids = index.search(embeddings[queries], k + 1)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.5 * (k + 1), 1.75 * len(queries)), squeeze=False)
    for row, (q, ranked, sc) in enumerate(zip(queries, ids, scores)):
        score = {int(i): float(v) for i, v in zip(ranked, sc)}
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
            label = "query" if col == 0 else f"{score[i]:.3f}"
            ax.set_title(f"{_short(display_name(samples[i]))}\n{label}", fontsize=6.5)
    fig.tight_layout()
    return _png(fig)


def pr_plot(recall: np.ndarray, precision: np.ndarray) -> str:
    """Base64 PNG of mean interpolated precision against recall."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(recall, precision, "o-", ms=3)
    ax.set_xlabel("recall")
    ax.set_ylabel("interpolated precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return _png(fig)


def analysis_sections(samples: Sequence[Sample], embeddings: torch.Tensor, seed: int = 0) -> List[str]:
    """HTML of the precision-recall curve, the classes that fail most and the 2-D map of the test set."""
    if len(samples) < 2:
        return []
    labels = np.array([s.label for s in samples])
    _, ids = neighbours(embeddings, min(NEIGHBOURS, len(samples) - 1))
    recall, precision = precision_recall(ids, labels)
    parts = [f"<h2>Precision-recall</h2><p>Each test image queries all the others; mean interpolated precision over "
             f"queries, from each query's top {ids.shape[1]} results.</p>"
             f"<img alt='precision-recall curve' src='data:image/png;base64,{pr_plot(recall, precision)}'>"]
    rows = failing_classes(ids, labels, [display_name(s) for s in samples])
    if rows:
        body = "".join(
            f"<tr><td>{html.escape(r['name'])}</td><td>{r['errors']} / {r['queries']}</td><td>{r['precision@1']:.3f}</td>"
            f"<td>{html.escape(', '.join(f'{n} ({c})' for n, c in r['confused_with']))}</td></tr>" for r in rows)
        parts.append("<h2>Classes that fail most</h2><p>Queries whose nearest neighbour is of another class, and the "
                     "classes those neighbours belong to (how many queries).</p><table class='fail'><tr><th>class</th>"
                     f"<th>wrong nearest</th><th>P@1</th><th>nearest wrong classes</th></tr>{body}</table>")
    parts.append("<h2>Map of the test embeddings</h2><p>t-SNE of a random subset, coloured by category; hover a point "
                 f"for its image and name.</p>{embedding_map(samples, embeddings, seed=seed)}")
    return parts


def write_report(run_dir: str | Path, title: str, metrics: Dict[str, Any], history: Dict[str, List[Any]],
                 recipe: Dict[str, Any], grid_png: str = "", baselines: Dict[str, Dict[str, float]] | None = None,
                 samples: Optional[Sequence[Sample]] = None, embeddings: Optional[torch.Tensor] = None, seed: int = 0) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Each string in ``metrics["warnings"]`` (how the run differs from its recipe, e.g. stopped early)
    becomes a banner at the top. With the test ``samples`` and their (N, D) ``embeddings``, the
    precision-recall curve, the failing classes and the 2-D map are added.
    """
    run_dir = Path(run_dir)
    warnings = [str(w) for w in metrics.get("warnings", [])]
    metrics = {k: v for k, v in metrics.items() if k != "warnings"}
    curves = dict(baselines or {})
    curves[title] = metrics
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in metrics.items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:2px 12px;text-align:left}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:1em}.banner{background:#fff3cd;border:1px solid #e0b000;"
        "padding:.6em 1em;margin:.5em 0;border-radius:4px}.legend .key{display:inline-block;margin:0 10px 2px 0;"
        "font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<div class='banner' role='alert'>&#9888; {html.escape(w)}</div>" for w in warnings),
        f"<h2>Metrics (unseen classes)</h2><table>{rows}</table>",
    ]
    if history.get("step_loss"):
        parts.append(f"<h2>Loss</h2><img alt='loss curve' src='data:image/png;base64,{loss_plot(history['step_loss'], history.get('epochs', []))}'>")
    if any(k.startswith("recall@") for k in metrics):
        parts.append(f"<h2>Recall@K</h2><img alt='recall curve' src='data:image/png;base64,{recall_plot(curves)}'>")
    elif chart := scores_plot(metrics):
        parts.append(f"<h2>Scores</h2><img alt='scores chart' src='data:image/png;base64,{chart}'>")
    if chart := shot_plot(metrics):
        parts.append(f"<h2>Accuracy by class frequency</h2><p>Classes grouped by their number of training images "
                     f"(many-shot, medium, few-shot); per-class accuracy averaged in each group.</p>"
                     f"<img alt='shot accuracy' src='data:image/png;base64,{chart}'>")
    if chart := task_accuracy_plot(metrics):
        parts.append(f"<h2>Accuracy of each task over time</h2><img alt='task accuracy' src='data:image/png;base64,{chart}'>")
    if grid_png:
        parts.append(f"<h2>Test queries and their top results</h2><p>name and cosine score of each result; green: same "
                     f"identity, red: wrong</p><img alt='query grid' src='data:image/png;base64,{grid_png}'>")
    if samples is not None and embeddings is not None:
        parts += analysis_sections(samples, embeddings, seed)
    parts.append(f"<h2>Recipe</h2><pre>{html.escape(json.dumps(recipe, indent=2))}</pre></body></html>")
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)
    return path
