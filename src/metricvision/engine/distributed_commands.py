"""Scale-out commands: `distributed-train`, `ray-embed`, `ray-index`, `ray-evaluate`.

`distributed-train` runs under torchrun (one process per GPU / CPU worker) or, with
``--ray``, on a Ray cluster through ray.train. The `ray-*` commands connect to
``--ray ADDRESS`` (or start a local Ray instance when it is omitted).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict



def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the scale-out commands."""
    p = sub.add_parser("distributed-train", help="train a recipe with DDP: under torchrun, or on Ray workers with --ray")
    p.add_argument("recipe", nargs="?", default="default", help="recipe name in recipes/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=3")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<time>; shared by all workers)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--ray", dest="address", nargs="?", const="local", default=None,
                   help="train with ray.train on the cluster at ADDRESS ('local' starts one here)")
    p.add_argument("--workers", type=int, default=2, help="ray.train workers (with --ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per ray.train worker")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=distributed_train)

    p = sub.add_parser("ray-embed", help="embed a dataset with a run's model on Ray actors into Parquet shards")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. emoji")
    src.add_argument("--images", type=Path, help="a folder of images (searched recursively; visible to every node)")
    p.add_argument("--split", default="test", help="split of --dataset (default: test)")
    p.add_argument("--out", type=Path, required=True, help="output folder of *.parquet shards")
    _ray_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch of each actor")
    p.add_argument("--cpus-per-worker", type=float, default=0.5, help="CPUs each actor reserves (fractional)")
    p.set_defaults(func=ray_embed_command)

    p = sub.add_parser("ray-index", help="build one faiss IVF index from Parquet embedding shards")
    p.add_argument("embeddings", type=Path, help="folder of *.parquet shards (from ray-embed)")
    p.add_argument("--out", type=Path, required=True, help="index file (.npz, loaded with FaissIndex.load)")
    p.add_argument("--spec", default="IVF64,Flat", help="faiss IVF spec")
    p.add_argument("--nprobe", type=int, default=8, help="inverted lists visited per query")
    p.add_argument("--on-disk", action="store_true", help="merge the inverted lists on disk (merge_ondisk)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=ray_index_command)

    p = sub.add_parser("ray-evaluate", help="leave-one-out retrieval metrics of Parquet embeddings, searched over Ray actor shards")
    p.add_argument("embeddings", type=Path, help="folder of *.parquet shards (from ray-embed)")
    p.add_argument("--shards", type=int, default=2, help="number of index shards")
    p.add_argument("--spec", default="Flat", help="index of every shard (default exact)")
    _ray_args(p)
    p.set_defaults(func=ray_evaluate_command)


def _ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", dest="address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def distributed_train(args: argparse.Namespace) -> Dict[str, Any] | None:
    """`metricvision distributed-train`."""
    from metricvision.config import load_recipe
    from metricvision.engine.runs import latest_run_dir, new_run_dir

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.out or (latest_run_dir(recipe.name) if args.resume else None) or new_run_dir(recipe.name)
    if args.address is not None:
        from metricvision.engine.ray_train import ray_train

        address = None if args.address == "local" else args.address
        print(f"run folder: {run_dir}", file=sys.stderr)
        return ray_train(recipe, run_dir, args.workers, address, use_gpu=args.gpu, resume=args.resume)
    from metricvision.engine.ray_train import DistributedTrainer

    if args.out is None and not args.resume:
        raise ValueError("under torchrun give --out RUN_DIR so that every process writes the same run folder")
    trainer = DistributedTrainer(recipe, run_dir)
    metrics = trainer.fit(resume=args.resume)
    return metrics if trainer.rank == 0 else None


def ray_embed_command(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision ray-embed`."""
    from metricvision.data.sample import load_samples
    from metricvision.engine.ray_embed import ray_embed
    from metricvision.engine.runs import load_run

    recipe, model = load_run(args.run)
    return ray_embed(model, load_samples(args.dataset, args.images, args.split), args.out, image_size=recipe.data.image_size, address=args.address,
                     num_workers=args.workers, cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size)


def ray_index_command(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision ray-index`: one IVF index trained once, filled per shard, merged."""
    import numpy as np

    from metricvision.engine.ray_embed import parquet_shards
    from metricvision.index.sharded import build_ivf_from_shards

    shards = parquet_shards(args.embeddings)
    train = np.concatenate([x for x, _ in shards])
    out_dir = args.out.parent / (args.out.stem + ".shards")
    index = build_ivf_from_shards(shards, train, args.spec, out_dir=out_dir, on_disk=args.on_disk)
    index._index.nprobe = args.nprobe
    index.save(args.out)
    return {"vectors": len(index), "shards": len(shards), "spec": args.spec, "out": str(args.out)}


def ray_evaluate_command(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision ray-evaluate`."""
    from metricvision.engine.ray_embed import ensure_ray, read_embeddings
    from metricvision.index.sharded import ShardedIndex
    from metricvision.metrics import evaluate_retrieval

    _, labels, emb = read_embeddings(args.embeddings)
    ensure_ray(args.address)
    index = ShardedIndex(emb.shape[1], num_shards=args.shards, spec=args.spec, use_ray=True)
    return evaluate_retrieval(emb, labels, clustering=False, index=index)
