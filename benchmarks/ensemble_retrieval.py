"""Image-to-image retrieval of image model checkpoints and of their ensemble, on one dataset split.

Each checkpoint (``metricvision kb from-run``) and the ``EnsembleEmbedder`` of all of them (what
``metricvision kb ensemble`` writes: the mean of their cosines) embed the split's images; every image queries all
the others (leave-one-out), as ``metricvision evaluate`` scores a run. Checkpoints aligned to a text model
(``metricvision kb align``) are also scored text to image, as ``benchmarks/text_retrieval.py`` scores them: each
class's name queries the split's images (``text_to_image_recall``), plainly and with the gallery-side CSLS against
the names of the train split's classes (k 10).

    python benchmarks/ensemble_retrieval.py runs/scene_hold/image_model.safetensors \
        runs/scene_grp4_hold/image_model.safetensors            # the emoji test split: 3800 unseen-identity images
"""
from __future__ import annotations

import argparse
import tempfile
from typing import List

import torch

from metricvision.data.sample import load_samples
from metricvision.kb.align import class_captions, text_to_image_recall
from metricvision.kb.experiments import CSLS_K
from metricvision.kb.model import ImageTextModel, ensemble_checkpoints
from metricvision.metrics.evaluate import evaluate_retrieval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="two or more image model checkpoints of one architecture")
    ap.add_argument("--dataset", default="emoji", help="a registered dataset (default: emoji)")
    ap.add_argument("--data", default=None, help="its folder, when it is not the registered default")
    ap.add_argument("--split", default="test", help="split to search (default: test)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = load_samples(args.dataset, None, args.split, args.data)
    images, labels = [s.image for s in samples], [s.label for s in samples]
    models: List[ImageTextModel] = [ImageTextModel.from_checkpoint(p) for p in args.checkpoints]
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint `metricvision kb ensemble` would write
        ensemble = ImageTextModel.from_checkpoint(ensemble_checkpoints(args.checkpoints, f"{tmp}/e.safetensors").checkpoint)
        text = ensemble.card.text_model is not None
        print(f"{args.dataset} {args.split}: {len(images)} images, {len(set(labels))} classes")
        if text:
            names = class_captions(load_samples(args.dataset, None, "train", args.data))[1]
        print("| model | P@1 | MAP@R | R@4 |" + (" name R@1 | R@5 | R@10 | CSLS R@1 | R@5 | R@10 |" if text else "")
              + "\n|---|---|---|---|" + ("---|---|---|---|---|---|" if text else ""))
        for name, model in [*zip(args.checkpoints, models), (f"ensemble of {len(models)}", ensemble)]:
            m = evaluate_retrieval(model.encode_images(images), labels, clustering=False)
            row = f"| {name} | {100 * m['precision@1']:.1f} | {100 * m['map@r']:.1f} | {100 * m['recall@4']:.1f} |"
            if text:
                for t in (text_to_image_recall(model, samples),
                          text_to_image_recall(model, samples, references=model.encode_text(names), hub_k=CSLS_K)):
                    row += f" {t['recall@1']:.3f} | {t['recall@5']:.3f} | {t['recall@10']:.3f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
