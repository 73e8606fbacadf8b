"""Weak supervision on small scenes: where does a head trained from image-level labels point?

A quick, multi-seed benchmark of `metricvision detector train --weak`'s training step
(``train_weak``): small scenes (128 px, one target and 1-2 distractors of 40-56 px, generated
backgrounds) are built for the train split and for the test split (unseen identities); a
QueryDetector head on the ImageNet MobileNetV2 is trained on the train scenes' image-level
labels only (which identities each scene holds), by PRM's peak stimulation (``peaks``) or by
max pooling (``max``, multiple-instance learning), and compared with the untrained head (the
cosine between the query and the backbone's dense features). Each (scene, identity present)
pair is one pointing-game trial: the response map's highest point for that identity's
other-vendor rendering must fall on one of its instances (``metricvision.metrics.detection.
pointing_game``; tolerance 0 px, and the paper's 15 px). No box is seen in training.

    python benchmarks/weak_pointing.py [--train 48 --test 48 --steps 100 --seeds 0 1 2]
    python benchmarks/weak_pointing.py --scenes runs/scenes/test --limit 100 \
        --checkpoint runs/text_align/image_model.safetensors --weights runs/weak_none.safetensors ...
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Dict, List, Sequence

import numpy as np
import torch

from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import QueryDetector
from metricvision.localization.prm import WEAK_POOLS, response_pointing, train_weak
from metricvision.localization.train import identity_references, load_detector, read_scenes, scene_features


def trained_heads(scenes_dir: str, checkpoint: str, weights: Sequence[str], limit: int) -> None:
    """Print the pointing game of trained heads (``metricvision detector train --weak``) on test-split scenes (their
    identities' other-vendor renderings and names as references)."""
    model = ImageTextModel.from_checkpoint(checkpoint)
    scenes = read_scenes(scenes_dir, limit=limit)
    ids, refs = identity_references(model, "test")
    feats = None
    print(f"{len(scenes.images)} scenes of {scenes_dir}; pointing game of the response maps' maxima (0 px / 15 px)")
    print("| head | " + " | ".join(f"{kind} {t:g} px" for kind in ("image", "name")[: len(refs)] for t in (0, 15)) + " |")
    print("|---|" + "---|" * 2 * len(refs))
    for w in weights:
        det, _ = load_detector(w, model.embedder)
        feats = feats or scene_features(det.eval(), scenes)  # the frozen backbone's features serve every head
        cells = [v for r in refs for v in response_pointing(det, *feats, scenes, ids, r).values()]
        print(f"| {w} | " + " | ".join(f"{v:.3f}" for v in cells) + " |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=48, help="train scenes (default 48)")
    ap.add_argument("--test", type=int, default=48, help="test scenes, unseen identities (default 48)")
    ap.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head (default 1e-3)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the scenes and the head")
    ap.add_argument("--scenes", help="instead: score trained heads (--weights) on a test-split scene folder (`scenes build --split test`)")
    ap.add_argument("--checkpoint", help="with --scenes: the image model the heads were trained on")
    ap.add_argument("--weights", nargs="*", default=[], help="with --scenes: head weights (`detector train --weak`)")
    ap.add_argument("--limit", type=int, default=0, help="with --scenes: the first N scenes only (0: all)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    if a.scenes:
        if not a.checkpoint or not a.weights:
            ap.error("--scenes needs --checkpoint and --weights")
        return trained_heads(a.scenes, a.checkpoint, a.weights, a.limit)
    cfg = SceneConfig(size=128, sides=(40, 56), targets=(1, 1), distractors=(1, 2), blur=0.0)
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=64))
    refs = {split: identity_references(model, split) for split in ("train", "test")}
    results: Dict[str, List[Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            scenes = {split: read_scenes(build_scenes(f"{tmp}/{split}{seed}", split, n, seed=seed, cfg=cfg))
                      for split, n in (("train", a.train), ("test", a.test))}
            for method in ("untrained", *WEAK_POOLS):
                torch.manual_seed(seed)
                det = QueryDetector(model.embedder, hidden=64)
                feats = {split: scene_features(det, s) for split, s in scenes.items()}
                if method != "untrained":
                    (f, size), s = feats["train"], scenes["train"]
                    train_weak(det, f, [torch.from_numpy(x) for x in s.identities], refs["train"][1], refs["train"][0], size,
                               steps=a.steps, lr=a.lr, seed=seed, log_every=a.steps, pool=method)
                row = {}
                for split, s in scenes.items():
                    ids, r = refs[split]
                    for t, v in response_pointing(det, *feats[split], s, ids, r[0]).items():
                        row[f"{split} {t:g} px"] = v
                results.setdefault(method, []).append(row)
                print(f"seed {seed} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    keys = list(next(iter(results.values()))[0])
    print(f"\n{len(a.seeds)} seeds, {a.train} train / {a.test} test scenes, {a.steps} steps; pointing game, mean +- std")
    print("| head | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for method, rows in results.items():
        cells = [f"{np.mean([r[k] for r in rows]):.3f} +- {np.std([r[k] for r in rows]):.3f}" for k in keys]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
