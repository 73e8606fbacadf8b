"""Embedding extraction on a Ray cluster: ray.data reads the samples, Embedder actors embed
them, and the results are written as Parquet shards (one row per sample).

Each Parquet row holds ``row`` (position in the input), ``label`` and ``embedding`` (a
fixed-size list of D float32), readable by any Parquet reader (pyarrow, pandas, Spark).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.data.sample import Sample, SampleDataset
from metricvision.data.transforms import TRANSFORMS
from metricvision.models import Embedder


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Any:
    """The ray module, connected to ``address`` ("auto", "ray://host:10001", "host:6379") or to
    a local instance started here (no dashboard) when ``address`` is None."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("Ray is needed here: pip install -e '.[ray]'") from e
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


class EmbedActor:
    """Holds one Embedder; maps a batch {"row", "label", "image"} to {"row", "label", "embedding"}.

    Args:
        model: the Embedder (or a Ray ObjectRef to it).
        image_size: side of the eval transform.
        threads: torch threads of this actor (1 so that actors do not oversubscribe cores).
    """

    def __init__(self, model: Any, image_size: int, threads: int = 1) -> None:
        import ray

        torch.set_num_threads(threads)
        self.model: Embedder = (ray.get(model) if isinstance(model, ray.ObjectRef) else model).eval()
        self.transform = TRANSFORMS.create("eval", size=image_size)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        data = SampleDataset([Sample(image=im) for im in batch["image"]], self.transform)
        x = torch.stack([data[i][0] for i in range(len(data))])
        emb = self.model.encode(x).numpy().astype(np.float32)
        flat = pa.array(emb.reshape(-1), type=pa.float32())
        return pa.table({
            "row": pa.array(batch["row"], pa.int64()),
            "label": pa.array(batch["label"], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
        })


def ray_embed(
    model: Embedder,
    samples: Sequence[Sample],
    out_dir: str | os.PathLike,
    image_size: int = 48,
    address: Optional[str] = None,
    num_workers: int = 2,
    cpus_per_worker: float = 0.5,
    threads_per_worker: int = 1,
    batch_size: int = 64,
) -> Dict[str, Any]:
    """Embed ``samples`` with ``num_workers`` Embedder actors and write Parquet shards to ``out_dir``.

    Actors reserve ``cpus_per_worker`` (fractional: reading and writing tasks need CPUs
    too, so on two cores two actors of 1 CPU would starve them). The folder appears
    whole: shards are written to a temporary folder that is then renamed.

    Args:
        model: the Embedder (shipped to the actors through the object store).
        samples: images as paths (readable from every node) or arrays.
        out_dir: output folder of ``*.parquet`` shards.
        image_size: eval transform size (the run's ``data.image_size``).
        address: Ray cluster address; None starts a local instance.

    Returns:
        {"embedded", "dim", "shards", "out"}.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
    if not samples:
        raise ValueError("no samples to embed")
    ray = ensure_ray(address)
    items = [{"row": i, "label": int(s.label), "image": s.image} for i, s in enumerate(samples)]
    ds = ray.data.from_items(items, override_num_blocks=max(num_workers * 2, len(items) // (batch_size * 4) or 1))
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"model": ray.put(model.cpu().eval()), "image_size": image_size, "threads": threads_per_worker},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
    )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        ds.write_parquet(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"embedded": len(items), "dim": model.dim, "shards": len(list(out.glob("*.parquet"))), "out": str(out)}


def read_embeddings(path: str | os.PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a folder (or file) of Parquet embeddings -> (rows (N,), labels (N,), embeddings (N, D)) sorted by row."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings {path} not found")
    table = pq.read_table(str(path))
    rows = table.column("row").to_numpy()
    labels = table.column("label").to_numpy()
    col = table.column("embedding").combine_chunks()
    emb = col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)
    order = np.argsort(rows, kind="stable")
    return rows[order], labels[order], emb[order]


def parquet_shards(path: str | os.PathLike) -> list[Tuple[np.ndarray, np.ndarray]]:
    """Per Parquet file of ``path``: ((N_s, D) embeddings, (N_s,) rows as ids), for sharded indexes."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no *.parquet shards under {path}")
    out = []
    for f in files:
        rows, _, emb = read_embeddings(f)
        out.append((emb, rows))
    return out
