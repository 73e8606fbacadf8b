"""CLI: `metricvision scenes build`, `metricvision detector train`, `detector refiner` and `detector primer`."""
from __future__ import annotations

import argparse
from typing import Any, Dict


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the scene and detector commands."""
    p = subparsers.add_parser("scenes", help="detection scenes: emoji pasted onto photographs, COCO annotations")
    sub = p.add_subparsers(dest="scenes_command", required=True, metavar="SCENES_COMMAND")
    b = sub.add_parser("build", help="write scenes of a split (deterministic) to a folder")
    b.add_argument("--out", required=True, help="output folder: images/, queries/, annotations.json")
    b.add_argument("--split", choices=("train", "val", "test"), default="test", help="identities and backgrounds of this split (default test)")
    b.add_argument("--n", type=int, default=300, help="number of scenes")
    b.add_argument("--seed", type=int, default=0, help="seed of the scene layout (default 0)")
    b.add_argument("--size", type=int, default=512, help="scene side in pixels")
    b.add_argument("--backgrounds", nargs="*", default=None,
                   help="folders of photographs (default: generated backgrounds), e.g. /usr/share/backgrounds/mate/nature")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=_build)

    p = subparsers.add_parser("detector", help="one-shot query-conditioned detector")
    sub = p.add_subparsers(dest="detector_command", required=True, metavar="DETECTOR_COMMAND")
    t = sub.add_parser("train", help="train the detector head on train scenes")
    t.add_argument("--scenes", required=True, help="train scenes folder (from `scenes build --split train`)")
    t.add_argument("--checkpoint", required=True, help="image model from `kb align` (frozen)")
    t.add_argument("--out", required=True, help="head weights file (.safetensors)")
    t.add_argument("--max-scenes", type=int, default=0, help="train on the first N scenes only (0: all)")
    t.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    t.add_argument("--batch-size", type=int, default=8, help="scenes per step (default 8)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the head (default 1e-3)")
    t.add_argument("--loss", default="infonce", help="a registered metric loss taking ref_embeddings")
    t.add_argument("--prime", action="store_true",
                   help="train a primed detector (query_detector_primed: FiLM of the head's input features by the query)")
    t.add_argument("--prime-at", type=int, nargs="+", default=[], metavar="LAYER",
                   help="train a primed detector whose query modulates (FiLM) these backbone layers' outputs, e.g. 7 10 13 "
                        "(MobileNetV2's stride-16 stage); the frozen layers after them run on the modulated features")
    t.add_argument("--prime-targets", choices=("query", "all"), default="query",
                   help="a primed detector's targets: the objects of the prime's identity only (default), or all objects")
    t.add_argument("--init", help="start the head from these detector weights (e.g. the unprimed detector, to prime it)")
    t.add_argument("--weak", action="store_true",
                   help="train from image-level labels only (peak_response, a simplified PRM, and peak_crops); --steps applies")
    t.add_argument("--weak-pool", choices=("peaks", "max"), default="peaks",
                   help="--weak: a response map's image-level logit, the mean over its local peaks (PRM's peak "
                        "stimulation, default) or its maximum (multiple-instance learning, ProNet's training)")
    t.add_argument("--crop-steps", type=int, default=600,
                   help="training steps of the crop embedder of query_detector_crops (default 600; 0: no crop embedder)")
    t.add_argument("--crop-scenes", type=int, default=0, help="train the crop embedder on the first N scenes only (0: all)")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=_train)

    r = sub.add_parser("refiner", help="train a box refiner for query_detector_model_crops (box regression on crop maps)")
    r.add_argument("--scenes", required=True, help="train scenes folder (from `scenes build --split train`)")
    r.add_argument("--checkpoint", required=True, help="the image model that embeds the crops (frozen)")
    r.add_argument("--out", required=True, help="refiner weights file (.safetensors)")
    r.add_argument("--val-scenes", help="scenes to report the IoU before and after refinement on (e.g. the val split)")
    r.add_argument("--max-scenes", type=int, default=0, help="train on the first N scenes only (0: all)")
    r.add_argument("--side", type=int, default=0, help="crop side in pixels (default: the model card's image size)")
    r.add_argument("--jitters", type=int, default=4, help="jittered boxes per ground-truth box (default 4)")
    r.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    r.add_argument("--batch-size", type=int, default=256, help="crops per step (default 256)")
    r.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=_refiner)

    m = sub.add_parser("primer", help="train a crop primer for query_detector_primed_crops (the query modulates the crops' embedding)")
    m.add_argument("--scenes", required=True, help="train scenes folder (from `scenes build --split train`)")
    m.add_argument("--checkpoint", required=True, help="the image model that embeds the queries and crops (frozen; copied layers tuned)")
    m.add_argument("--out", required=True, help="primer weights file (.safetensors)")
    m.add_argument("--max-scenes", type=int, default=0, help="train on the first N scenes only (0: all)")
    m.add_argument("--side", type=int, default=0, help="crop side in pixels (default: the model card's image size)")
    m.add_argument("--at", type=int, nargs="+", default=[13],
                   help="backbone layers whose outputs the query modulates (default 13; several: each its own FiLM map)")
    m.add_argument("--jitters", type=int, default=2, help="jittered boxes per object (default 2)")
    m.add_argument("--backgrounds", type=int, default=2, help="background boxes per scene (default 2)")
    m.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    m.add_argument("--batch-size", type=int, default=48, help="crops per step, each with 1 + --negatives queries (default 48)")
    m.add_argument("--negatives", type=int, default=3, help="hard negative references per crop (default 3)")
    m.add_argument("--detector", help="detector weights whose proposals on the train scenes join the crops "
                   "(labelled by IoU: >= --fg-iou a detection of the object, below it a negative for it too)")
    m.add_argument("--detector-model", help="the image model that detector was trained on (as the localizer's detector_model)")
    m.add_argument("--proposals", type=int, default=40, help="proposals per scene with --detector (default 40)")
    m.add_argument("--fg-iou", type=float, default=0.5, help="IoU from which a crop is a detection of its object (default 0.5)")
    m.add_argument("--scene-negatives", type=int, default=0,
                   help="of the --negatives, how many are the other objects of the crop's scene (default 0)")
    m.add_argument("--category-share", type=float, default=0.0,
                   help="fraction of the steps primed by the name of each crop's emoji category (a class cue, as in "
                        "Rosenfeld et al.) instead of an identity's reference; needs an image model with a text model")
    m.add_argument("--unprimed", action="store_true",
                   help="the control: train the same layers alike with the FiLM maps held at zero (no priming)")
    m.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=_primer)


def _build(args: argparse.Namespace) -> Dict[str, Any]:
    import json

    from metricvision.data.scenes import SceneConfig, build_scenes

    path = build_scenes(args.out, args.split, args.n, seed=args.seed, backgrounds=args.backgrounds,
                        cfg=SceneConfig(size=args.size))
    data = json.loads(path.read_text())
    return {"annotations": str(path), "scenes": len(data["images"]), "objects": len(data["annotations"]),
            "targets": sum(a["target"] for a in data["annotations"])}


def _train(args: argparse.Namespace) -> Dict[str, Any]:
    import time

    import torch

    from metricvision.kb.model import ImageTextModel
    from metricvision.localization.crops import CropEmbedder, crop_stems, train_crop_embedder
    from metricvision.localization.detector import QueryDetector
    from metricvision.localization.prm import train_weak
    from metricvision.localization.train import (identity_references, image_tensor, init_head, read_scenes, save_detector,
                                                 scene_features, train_detector)

    start = time.time()
    model = ImageTextModel.from_checkpoint(args.checkpoint)
    scenes = read_scenes(args.scenes, limit=args.max_scenes)
    ref_ids, refs = identity_references(model, "train")
    det = QueryDetector(model.embedder, prime=args.prime, prime_at=args.prime_at)
    if args.init:
        init_head(det, args.init)
    if args.weak:  # image-level labels: the identities each scene holds, not where
        feats, size = scene_features(det, scenes)
        present = [torch.from_numpy(x) for x in scenes.identities]
        logs = train_weak(det, feats, present, refs, ref_ids, size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          pool=args.weak_pool)
    else:
        logs = train_detector(det, scenes, ref_ids, refs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              loss=args.loss, prime_targets=args.prime_targets)
    crop = None
    if args.crop_steps > 0 and not args.weak:
        crop = CropEmbedder(model.embedder)
        n = args.crop_scenes or len(scenes.images)
        stems = crop_stems(crop, [image_tensor(p) for p in scenes.images[:n]], scenes.boxes[:n]).half()
        known = set(ref_ids.tolist())
        ids = torch.tensor([i if i in known else -1 for x in scenes.identities[:n] for i in x.tolist()], dtype=torch.long)
        logs += train_crop_embedder(crop, stems, ids, refs, ref_ids, steps=args.crop_steps, loss=args.loss)
    save_detector(det, args.out, image_model=args.checkpoint, crop=crop)
    for entry in logs:
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    return {"weights": args.out, "scenes": len(scenes.images), "steps": args.steps, "seconds": round(time.time() - start, 1),
            "final_loss": logs[-1].get("crop_metric", logs[-1].get("loss", logs[-1].get("weak")))}


def _refiner(args: argparse.Namespace) -> Dict[str, Any]:
    import time

    from metricvision.kb.model import ImageTextModel
    from metricvision.localization.refine import BoxRefiner, refined_iou, refiner_examples, save_refiner, train_refiner
    from metricvision.localization.train import image_tensor, read_scenes

    start = time.time()
    model = ImageTextModel.from_checkpoint(args.checkpoint)
    embedder, side = model.embedder.eval(), args.side or model.card.image_size
    if side < 16:
        raise ValueError(f"--side must be >= 16 px, got {side}")

    def examples(folder: str, limit: int, seed: int):
        scenes = read_scenes(folder, limit=limit)
        return refiner_examples(embedder, [image_tensor(p) for p in scenes.images], scenes.boxes, side,
                                jitters=args.jitters, seed=seed)

    maps, offsets, boxes, truth = examples(args.scenes, args.max_scenes, 0)
    refiner = BoxRefiner(maps.shape[1])
    logs = train_refiner(refiner, maps, offsets, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    save_refiner(refiner, args.out, side, image_model=args.checkpoint)
    out: Dict[str, Any] = {"weights": args.out, "crops": len(maps), "side": side, "final_l1": round(logs[-1]["l1"], 4),
                           "train": refined_iou(refiner, maps, boxes, truth)}
    if args.val_scenes:
        val_maps, _, val_boxes, val_truth = examples(args.val_scenes, 0, 1)
        out["val"] = refined_iou(refiner, val_maps, val_boxes, val_truth)
    out["seconds"] = round(time.time() - start, 1)
    return out


def _primer(args: argparse.Namespace) -> Dict[str, Any]:
    import time

    import torch
    from tqdm import tqdm

    from metricvision.kb.model import ImageTextModel
    from metricvision.localization.priming import CropPrimer, primer_examples, save_primer, train_primer
    from metricvision.localization.train import identity_references, image_tensor, read_scenes

    if not 0.0 < args.fg_iou <= 1.0:  # before anything is loaded
        raise ValueError(f"--fg-iou must be in (0, 1], got {args.fg_iou}")
    if not 0 <= args.scene_negatives <= args.negatives:
        raise ValueError(f"--scene-negatives must be in [0, --negatives = {args.negatives}], got {args.scene_negatives}")
    if args.detector_model and not args.detector:
        raise ValueError("--detector-model names the image model of --detector's weights: give --detector too")
    if not 0.0 <= args.category_share <= 1.0:
        raise ValueError(f"--category-share must be in [0, 1], got {args.category_share}")
    start = time.time()
    model = ImageTextModel.from_checkpoint(args.checkpoint)
    if args.category_share and not model.card.text_model:
        raise ValueError(f"--category-share primes by category names: {args.checkpoint} has no text model (align one with "
                         "`metricvision kb align`)")
    side = args.side or model.card.image_size
    if side < 16:
        raise ValueError(f"--side must be >= 16 px, got {side}")
    scenes = read_scenes(args.scenes, limit=args.max_scenes)
    layers = sorted(set(args.at))
    primer = CropPrimer(model.embedder.eval(), at=layers[0], also_at=layers[1:])
    images = [image_tensor(p) for p in scenes.images]
    proposals = None
    if args.detector:
        from metricvision.localization.localizers import LOCALIZERS

        loc = LOCALIZERS.create("query_detector_model_crops", model=model, weights=args.detector,
                                detector_model=args.detector_model, proposals=args.proposals)
        proposals = [loc.propose(im)[0].numpy() for im in tqdm(images, desc="proposals", leave=False, dynamic_ncols=True)]
    maps, ids, overlaps, scene = primer_examples(primer, images, scenes.boxes, scenes.identities, side, jitters=args.jitters,
                                          backgrounds=args.backgrounds, proposals=proposals)
    ref_ids, refs = identity_references(model, "train")
    categories = category_refs = None
    if args.category_share:  # each crop's category row (-1: background), from the scenes' own annotations
        names = sorted(scenes.category_names)
        of = {int(i): names.index(int(c)) for x, y in zip(scenes.identities, scenes.categories) for i, c in zip(x, y)}
        categories = torch.tensor([of.get(int(i), -1) for i in ids.tolist()])
        category_refs = model.encode_text([scenes.category_names[c] for c in names])
    logs = train_primer(primer, maps, ids, ref_ids, refs, steps=args.steps, batch_size=args.batch_size,
                        negatives=args.negatives, lr=args.lr, overlaps=overlaps, fg_iou=args.fg_iou, scenes=scene,
                        scene_negatives=args.scene_negatives, categories=categories, category_refs=category_refs,
                        category_share=args.category_share, film=not args.unprimed)
    save_primer(primer, args.out, side, image_model=args.checkpoint)
    return {"weights": args.out, "crops": len(maps), "detections": int(((ids >= 0) & (overlaps >= args.fg_iou)).sum()),
            "partial": int(((ids >= 0) & (overlaps < args.fg_iou)).sum()), "background": int((ids < 0).sum()),
            "side": side, "at": layers, "primed": not args.unprimed, "bce": [round(entry["bce"], 4) for entry in logs],
            "seconds": round(time.time() - start, 1)}
