"""CLI: `metricvision kb build|add|remove|compact|align|from-run|ensemble` and `metricvision search`."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

if TYPE_CHECKING:
    from metricvision.data import Sample


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the knowledge-base commands."""
    kb = subparsers.add_parser("kb", help="build and grow knowledge bases")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True, metavar="KB_COMMAND")

    for name, func, help_text in (("build", _build, "create a KB from a dataset or an image folder"),
                                  ("add", _add, "append items to an existing KB")):
        p = kb_sub.add_parser(name, help=help_text)
        p.add_argument("dir", help="the KB folder")
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--from-dataset", metavar="NAME", help="a registered dataset, e.g. emoji")
        src.add_argument("--from-folder", metavar="DIR", help="an image folder")
        p.add_argument("--captions", help="captions csv (image,caption[,label,...]) for --from-folder")
        p.add_argument("--split", default="all", help="dataset split (default: all)")
        p.add_argument("--dataset-path", help="dataset file / root (default: the dataset's own)")
        p.add_argument("--strict", action="store_true",
                       help="stop at unreadable images (default: skip them, list them in DIR/unreadable.txt)")
        if name == "build":
            p.add_argument("--checkpoint", help="image model from `kb align` (text search needs it)")
            p.add_argument("--backbone", default="mobilenet_v2", help="pretrained backbone when no checkpoint is given")
            p.add_argument("--image-size", type=int, default=64, help="side images are resized to")
            p.add_argument("--index", default="Flat", help="index spec: Flat (exact) or a faiss factory string")
            p.add_argument("--text-bank", metavar="SPEC",
                           help="texts for the hubness correction of text queries: a .txt file (one per line) or "
                                "captions:DATASET[:SPLIT], e.g. the names the model was aligned on (needs --checkpoint)")
            p.add_argument("--text-bank-k", type=int, default=10, help="nearest bank texts of an item's crowding (default: 10)")
            p.add_argument("--ray-workers", type=int, default=0, help="embed with this many Ray actors (bulk building)")
            p.add_argument("--regions", action="store_true",
                           help="also embed each image's regions (a multi-scale grid of crops) so small objects find "
                                "the scenes holding them; `kb add` then does the same")
            p.add_argument("--detector", metavar="WEIGHTS",
                           help="regions from this trained query_detector's proposals instead of the grid (implies --regions)")
            p.add_argument("--region-embedding", default="detector", metavar="{detector,model}",
                           help="with --detector: embed each region by the detector's region embedding (fast) or by "
                                "the image model on the region's crop (better matches, one pass per region); "
                                "checked by kb.regions.check_region_embedding")
            p.add_argument("--detector-model", metavar="CHECKPOINT",
                           help="with --detector and --region-embedding model: the image model the detector was trained "
                                "on, when it is not this KB's (the KB's model still embeds every region's crop)")
            p.add_argument("--refiner", metavar="WEIGHTS",
                           help="with --detector and --region-embedding model: a box refiner (`metricvision detector "
                                "refiner`, trained on this KB's model) that regresses each region's box from its crop")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)

    p = kb_sub.add_parser("remove", help="delete items by id (one new version)")
    p.add_argument("dir", help="the KB folder")
    p.add_argument("ids", nargs="+", type=int, help="item ids")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_remove)

    p = kb_sub.add_parser("compact", help="fold the KB's delta segments and deletions into its base index (one new version)")
    p.add_argument("dir", help="the KB folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_compact)

    p = kb_sub.add_parser("align", help="align an image encoder to a text model's space and build a KB with it")
    p.add_argument("dir", help="output folder: checkpoint, combiner, metrics (and KB/ with --build-kb)")
    p.add_argument("--text-model", default="minilm", help="registered text encoder whose space images are aligned to (default: minilm)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    p.add_argument("--image-size", type=int, default=128, help="side images are resized to (default: 128)")
    p.add_argument("--tune-blocks", type=int, default=0,
                   help="also train the backbone's last N blocks, not only the linear head (default: 0)")
    p.add_argument("--backbone-lr", type=float, default=1e-4, help="learning rate of those blocks (default: 1e-4)")
    p.add_argument("--loss", default="clip", help="registered image-text loss (default: clip, symmetric with a learned temperature)")
    p.add_argument("--text-layers", type=int, default=2,
                   help="also tune the text model's last N layers (minilm; shipped in the checkpoint; 0: frozen) (default: 2)")
    p.add_argument("--text-lr", type=float, default=1e-4, help="learning rate of those layers (default: 1e-4)")
    p.add_argument("--no-extra-texts", action="store_true",
                   help="train on the names only, not also on subcategory, short names and a prompt")
    p.add_argument("--init-run", help="start from the backbone and pooling of this `metricvision train` run "
                   "(trained on the same emoji train split) instead of the ImageNet ones")
    p.add_argument("--taps", type=int, nargs="*", default=[],
                   help="backbone layers whose outputs join the last map, a hypercolumn (e.g. 13 16; default: none)")
    p.add_argument("--dataset-path", help="emoji dataset file (default: the packaged one)")
    p.add_argument("--hold-out", choices=("", "scene_val"), default="",
                   help="scene_val: leave out the scene benchmark's validation identities (as `--init-run` runs "
                        "trained with the emoji option hold_out: scene_val)")
    p.add_argument("--build-kb", action="store_true", help="also build DIR/kb from the test split")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_align)

    p = kb_sub.add_parser("from-run", help="write a `metricvision train` run's model as an image model checkpoint "
                          "(image queries only: no text model)")
    p.add_argument("run", help="the run folder")
    p.add_argument("out", help="output .safetensors file (for `kb build --checkpoint`, benchmarks/scenes.py --checkpoint)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_from_run)

    p = kb_sub.add_parser("ensemble", help="write one image model checkpoint that ensembles several (the mean of their "
                          "cosines; `kb from-run` or `kb align` checkpoints of one architecture; aligned members keep "
                          "their own text layers; members trained at different image sizes each embed at their own)")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("checkpoints", nargs="+", help="two or more image model checkpoints")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_ensemble)

    p = subparsers.add_parser("search", help="query a KB with an image, a text, or both")
    p.add_argument("kb", help="the KB folder")
    p.add_argument("--image", help="query image file")
    p.add_argument("--text", help="query text")
    p.add_argument("--k", type=int, default=10, help="number of hits (default: 10)")
    p.add_argument("--text-weight", type=float, default=0.5, help="text weight of composed queries (weighted sum)")
    p.add_argument("--combiner", choices=("auto", "none"), default="auto",
                   help="use the KB's trained combiner for composed queries when it has one")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="metadata filter (repeatable)")
    p.add_argument("--boxes", action="store_true", help="localize the query in each hit")
    p.add_argument("--no-hub-correction", action="store_true",
                   help="rank a text query by the plain cosine in a KB with a text bank (default: 2 cos - crowding)")
    p.add_argument("--object-views", action="store_true",
                   help="embed the query image as the mean over its views (rotations, blur, brightness): an object "
                        "rendered on a plain background, looked for in scenes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_search)


def _samples(args: argparse.Namespace) -> Tuple[List[Sample], int]:
    """The items of `kb build|add` and how many unreadable image files were skipped (refused with --strict)."""
    from pathlib import Path

    from metricvision.data.check import drop_unreadable
    from metricvision.kb.sources import samples_from_dataset, samples_from_folder

    if args.from_dataset:
        samples = samples_from_dataset(args.from_dataset, args.split, args.dataset_path)
    else:
        samples = samples_from_folder(args.from_folder, args.captions)
    readable = drop_unreadable(samples, args.strict, Path(args.dir) / "unreadable.txt")
    return readable, len(samples) - len(readable)


def _build(args: argparse.Namespace) -> Dict[str, Any]:
    from metricvision.kb.model import ImageTextModel, ModelCard
    from metricvision.kb.store import KnowledgeBase

    from metricvision.kb.regions import check_region_embedding

    check_region_embedding(args.detector, args.region_embedding, args.detector_model, args.refiner)  # before anything is written
    if args.text_bank and not (args.text_bank.startswith("captions:") or args.text_bank.endswith((".txt", ".npy", ".npz"))):
        raise ValueError(f"--text-bank must be a .txt file (one text per line), captions:DATASET[:SPLIT] or an .npy / .npz "
                         f"of text embeddings, got '{args.text_bank}'")
    samples, skipped = _samples(args)
    if args.checkpoint:
        model = ImageTextModel.from_checkpoint(args.checkpoint)
    else:
        model = ImageTextModel(ModelCard(backbone=args.backbone, image_size=args.image_size))
    bank = None
    if args.text_bank:
        from metricvision.kb.references import load_references

        bank = load_references(args.text_bank, model)
    kb = KnowledgeBase.create(args.dir, model, index_spec=args.index, text_bank=bank, text_bank_k=args.text_bank_k,
                              text_bank_source=args.text_bank or "")
    if args.ray_workers > 0:
        from metricvision.kb.bulk import add_with_ray

        ids = add_with_ray(kb, samples, num_workers=args.ray_workers, image_root=args.from_folder)
    else:
        ids = kb.add(samples, image_root=args.from_folder)
    out = {"kb": str(kb.path), "items": len(kb), "skipped": skipped, "dim": model.dim, "text_model": model.card.text_model,
           "text_bank": 0 if bank is None else len(bank)}
    if args.regions or args.detector:
        from metricvision.kb.regions import enable_regions

        enable_regions(kb.path, args.detector, args.region_embedding, args.detector_model, args.refiner)
        out["regions"] = _add_regions(kb, ids, samples)
    return out


def _add_regions(kb: Any, ids: List[int], samples: List[Sample]) -> int:
    """Embed the regions of newly added items when the KB has regions; how many were added."""
    from metricvision.kb.regions import add_regions, kb_proposer

    proposer = kb_proposer(kb.path, kb.model)
    return add_regions(kb.path, ids, samples, proposer) if proposer is not None else 0


def _add(args: argparse.Namespace) -> Dict[str, Any]:
    from metricvision.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(args.dir)
    samples, skipped = _samples(args)
    ids = kb.add(samples, image_root=args.from_folder)
    return {"kb": str(kb.path), "added": len(ids), "regions": _add_regions(kb, ids, samples), "skipped": skipped,
            "items": len(kb), "version": kb.version}


def _remove(args: argparse.Namespace) -> Dict[str, Any]:
    from metricvision.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(args.dir)
    removed = kb.remove(args.ids)
    return {"kb": str(kb.path), "removed": len(removed), "items": len(kb), "version": kb.version}


def _compact(args: argparse.Namespace) -> Dict[str, Any]:
    from metricvision.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(args.dir, writer=True)
    segments, tombstones = len(kb.index.segments), int(kb.index.tombstones.size)
    kb.compact()
    return {"kb": str(kb.path), "items": len(kb), "version": kb.version, "segments_folded": segments,
            "deletions_applied": tombstones}


def _align(args: argparse.Namespace) -> Dict[str, Any]:
    from metricvision.kb.experiments import run_alignment

    return run_alignment(args.dir, text_model=args.text_model, epochs=args.epochs, dataset_path=args.dataset_path,
                         build_kb=args.build_kb, image_size=args.image_size, tune_blocks=args.tune_blocks,
                         backbone_lr=args.backbone_lr, loss=args.loss, extra_texts=not args.no_extra_texts,
                         text_layers=args.text_layers, text_lr=args.text_lr, init_run=args.init_run, taps=args.taps,
                         hold_out=args.hold_out)


def _from_run(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import asdict

    from metricvision.engine.runs import load_run, resumed_recipe
    from metricvision.kb.model import save_image_model

    recipe, embedder = load_run(args.run)  # load_run clears model.pretrained (no download); the card keeps the recorded one
    card = save_image_model(embedder, args.out, recipe.data.image_size, pretrained=resumed_recipe(args.run).model.pretrained)
    return asdict(card)


def _ensemble(args: argparse.Namespace) -> Dict[str, Any]:
    from dataclasses import asdict

    from metricvision.kb.model import ensemble_checkpoints

    return asdict(ensemble_checkpoints(args.checkpoints, args.out))


def parse_filters(items: List[str]) -> Dict[str, Any]:
    """["color=red", "label=3"] -> {"color": "red", "label": 3} (integers parsed)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"filter must be KEY=VALUE, got '{item}'")
        out[key] = int(value) if value.lstrip("-").isascii() and value.lstrip("-").isdigit() else value
    return out


def _search(args: argparse.Namespace) -> Any:
    from metricvision.kb.query import load_combiner, search
    from metricvision.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    combiner = load_combiner(kb) if args.combiner == "auto" else None
    hits = search(kb, image=args.image, text=args.text, k=args.k, filters=parse_filters(args.filter),
                  with_heatmap=args.boxes, text_weight=args.text_weight, combiner=combiner, object_views=args.object_views,
                  hub_correction=not args.no_hub_correction)
    for h in hits:
        h.pop("heatmap", None)
    if args.json:
        return hits
    lines = [f"{'rank':>4}  {'id':>6}  {'score':>7}  caption"]
    for r, h in enumerate(hits, 1):
        extra = f"  boxes={json.dumps(h['boxes'][:2])}" if "boxes" in h else ""
        extra += f"  region={json.dumps(h['regions'][0])}" if h.get("regions") else ""
        lines.append(f"{r:>4}  {h['id']:>6}  {h['score']:7.4f}  {h['caption']}{extra}")
    return "\n".join(lines)
