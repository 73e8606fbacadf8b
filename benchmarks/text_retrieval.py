"""Text-to-image search and composed queries on the emoji dataset (unseen identities).

Aligns MobileNetV2 (ImageNet; its last --tune-blocks blocks tuned on cached trunk features) +
a linear head with all-MiniLM-L6-v2 (its last --text-layers layers tuned, shipped in the
checkpoint) on the train split (``kb.align.train_alignment``: clip loss, 128 px, caption
variants from the emoji metadata), then prints text-to-image Recall@k on the class-disjoint
test split against chance, and the skin-tone composed-query table (image only, text only,
weighted sum, trained combiner).

With ``--build-kb`` it also builds OUT/kb from the test split with the training names as its text bank and scores
the same names through the KB's own search (``metricvision search --text``), plain and hubness-corrected.

    python benchmarks/text_retrieval.py [--out runs/text_align] [--epochs 40] [--tune-blocks 0] [--text-layers 2] [--seed 0]
"""
from __future__ import annotations

import argparse

from metricvision.kb.experiments import run_alignment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/text_align", help="output folder (checkpoint, combiner, metrics)")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs")
    ap.add_argument("--text-model", default="minilm", help="registered text encoder")
    ap.add_argument("--image-size", type=int, default=128, help="side images are resized to")
    ap.add_argument("--tune-blocks", type=int, default=0, help="backbone blocks trained besides the head")
    ap.add_argument("--backbone-lr", type=float, default=1e-4, help="learning rate of those blocks")
    ap.add_argument("--loss", default="clip", help="registered image-text loss")
    ap.add_argument("--text-layers", type=int, default=2, help="last text-model layers tuned too (shipped in the checkpoint)")
    ap.add_argument("--text-lr", type=float, default=1e-4, help="learning rate of those layers")
    ap.add_argument("--no-extra-texts", action="store_true", help="train on the names only")
    ap.add_argument("--init-run", help="a `metricvision train` run on the emoji train split whose backbone replaces ImageNet's")
    ap.add_argument("--taps", type=int, nargs="*", default=[], help="backbone layers joining the last map (hypercolumn), e.g. 13 16")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the alignment")
    ap.add_argument("--build-kb", action="store_true", help="also build OUT/kb and score the names through its search")
    ap.add_argument("--dataset-path", help="emoji dataset file, e.g. the 64 px one of `metricvision data fetch emoji --size 64`")
    a = ap.parse_args()
    m = run_alignment(a.out, text_model=a.text_model, epochs=a.epochs, image_size=a.image_size,
                      tune_blocks=a.tune_blocks, backbone_lr=a.backbone_lr, loss=a.loss, extra_texts=not a.no_extra_texts,
                      text_layers=a.text_layers, text_lr=a.text_lr, init_run=a.init_run, taps=a.taps,
                      dataset_path=a.dataset_path, seed=a.seed, build_kb=a.build_kb)
    t = m["text_to_image"]
    print(f"text-to-image, {int(t['queries'])} unseen emoji names vs {int(t['gallery'])} test images "
          f"(alignment {m['align_seconds']:.0f} s, total {m['total_seconds']:.0f} s)")
    print("| | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print(f"| aligned MobileNetV2 + MiniLM | {t['recall@1']:.3f} | {t['recall@5']:.3f} | {t['recall@10']:.3f} |")
    h = m["text_to_image_csls"]
    print(f"| the same, CSLS against the training names (k 10) | {h['recall@1']:.3f} | {h['recall@5']:.3f} | {h['recall@10']:.3f} |")
    for name, r in m.get("kb_text_to_image", {}).items():
        print(f"| the KB's search (`metricvision search --text`), {name.replace('_', '-')} | {r['recall@1']:.3f} "
              f"| {r['recall@5']:.3f} | {r['recall@10']:.3f} |")
    print(f"| chance | {t['chance@1']:.4f} | {t['chance@5']:.4f} | {t['chance@10']:.4f} |")
    c = m["composed_tone"]
    print(f"\ncomposed skin-tone change, {c['triplets']['test']} test triplets (exact target; reference excluded)")
    print("| query | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    for name, r in c.items():
        if name != "triplets":
            print(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} |")


if __name__ == "__main__":
    main()
