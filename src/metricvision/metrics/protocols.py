"""Evaluation protocols: ``PROTOCOLS[name](embed_fn, splits, **opts) -> {metric: value}``.

``embed_fn`` maps a list of samples to an (N, D) L2-normalized float tensor; ``splits`` is
what a dataset of ``metricvision.data.DATASETS`` returns, and each dataset names the protocol
its community reports (``DATASETS.info(name).protocol``). A protocol decides which samples it
embeds (revisited Oxford / Paris crops its queries to their boxes first) and then calls the
pure metric functions of its module on the embeddings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from metricvision._registry import Registry
from metricvision.data.registry import DATASETS
from metricvision.data.sample import Sample, SampleDataset, crop_to_box
from metricvision.metrics.clustering import cluster_scores
from metricvision.metrics.evaluate import evaluate_retrieval, retrieval_scores

EmbedFn = Callable[[List[Sample]], torch.Tensor]
Splits = Dict[str, List[Sample]]
PROTOCOLS: Registry[Dict[str, float]] = Registry("protocol")


def embed(embed_fn: EmbedFn, samples: Sequence[Sample], batch: int = 256, crop: bool = False) -> torch.Tensor:
    """(N, D) float32 embeddings of ``samples``, ``batch`` at a time, optionally cropped to their bbox."""
    if not samples:
        raise ValueError("no samples to embed")
    parts = []
    for s in range(0, len(samples), batch):
        chunk = list(samples[s : s + batch])
        parts.append(torch.as_tensor(embed_fn([crop_to_box(x) for x in chunk] if crop else chunk)).detach().float().cpu())
    return torch.cat(parts)


def model_embed_fn(
    model: Callable[[torch.Tensor], torch.Tensor], transform: Callable[[Any], torch.Tensor], device: str = "cpu"
) -> EmbedFn:
    """An embed_fn from a model ((N, 3, H, W) -> (N, D) normalized) and a PIL -> (3, H, W) transform."""

    def embed_samples(samples: List[Sample]) -> torch.Tensor:
        data = SampleDataset(samples, transform)
        images = torch.stack([data[i][0] for i in range(len(data))]).to(device)
        with torch.no_grad():
            return model(images).float().cpu()

    return embed_samples


def evaluate_dataset(
    dataset: str, embed_fn: EmbedFn, path: Optional[str | Path] = None, protocol: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None, **opts: Any,
) -> Dict[str, float]:
    """Read ``dataset`` (a DATASETS name) at ``path`` with ``options`` and run ``protocol`` on its splits.

    ``protocol`` defaults to the one the dataset declares; ``opts`` go to the protocol. Example:
    ``evaluate_dataset("cub", model_embed_fn(embedder, eval_transform(224)), "/data/CUB_200_2011")``.
    """
    info = DATASETS.info(dataset)
    name = protocol or info.protocol
    if name is None:
        raise ValueError(f"dataset '{dataset}' declares no protocol of its own ({info.description}); name one of: "
                         f"{', '.join(PROTOCOLS.names())}")
    run = PROTOCOLS.get(name)
    return run(embed_fn, DATASETS.create(dataset, path=path, **(options or {})), **opts)


def require_splits(splits: Splits, names: Sequence[str], protocol: str) -> None:
    """Error naming the splits a protocol needs when one is missing."""
    missing = [n for n in names if n not in splits]
    if missing:
        raise KeyError(f"protocol '{protocol}' needs splits {list(names)}, missing {missing}; got {sorted(splits)}")


def labels_of(samples: Sequence[Sample]) -> np.ndarray:
    """(N,) int64 labels."""
    return np.array([s.label for s in samples], dtype=np.int64)


@PROTOCOLS.register("retrieval")
@PROTOCOLS.register("cub")
@PROTOCOLS.register("cars196")
@PROTOCOLS.register("sop")
@PROTOCOLS.register("inshop")
def category_retrieval(
    embed_fn: EmbedFn, splits: Splits, ks: Sequence[int] = (1, 2, 4, 8), clustering: bool = True, seed: int = 0
) -> Dict[str, float]:
    """Recall@K, P@1, R-Precision, MAP@R (Musgrave et al. 2020) and NMI / AMI.

    Leave-one-out on the "test" split by ``evaluate_retrieval`` (CUB, Cars196, SOP, emoji), or
    "query" against "gallery" (In-Shop, Liu et al. 2016). Clustering scores are computed on
    the test / gallery set.
    """
    if "query" in splits and "gallery" in splits:
        q, g = embed(embed_fn, splits["query"]), embed(embed_fn, splits["gallery"])
        gy = labels_of(splits["gallery"])
        out = retrieval_scores(q, labels_of(splits["query"]), g, gy, ks=ks)
        if clustering:
            out.update(cluster_scores(g.numpy(), gy, seed))
        return out
    require_splits(splits, ["test"], "retrieval")
    return evaluate_retrieval(embed(embed_fn, splits["test"]), labels_of(splits["test"]), ks=ks, clustering=clustering, seed=seed)
