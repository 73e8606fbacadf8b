"""Text-to-image search and composed queries on the emoji dataset (unseen identities).

Aligns MobileNetV2 (frozen, ImageNet) + a linear head to the frozen all-MiniLM-L6-v2 text
space on the train split, then prints text-to-image Recall@k on the class-disjoint test
split against chance, and the skin-tone composed-query table (image only, text only,
weighted sum, trained combiner).

    python benchmarks/text_retrieval.py [--out runs/text_align] [--epochs 40]
"""
from __future__ import annotations

import argparse

from metricvision.kb.experiments import run_alignment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/text_align")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--text-model", default="minilm")
    a = ap.parse_args()
    m = run_alignment(a.out, text_model=a.text_model, epochs=a.epochs)
    t = m["text_to_image"]
    print(f"text-to-image, {int(t['queries'])} unseen emoji names vs {int(t['gallery'])} test images "
          f"(alignment {m['align_seconds']:.0f} s, total {m['total_seconds']:.0f} s)")
    print("| | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    print(f"| aligned MobileNetV2 + MiniLM | {t['recall@1']:.3f} | {t['recall@5']:.3f} | {t['recall@10']:.3f} |")
    print(f"| chance | {t['chance@1']:.4f} | {t['chance@5']:.4f} | {t['chance@10']:.4f} |")
    c = m["composed_tone"]
    print(f"\ncomposed skin-tone change, {c['triplets']['test']} test triplets (exact target; reference excluded)")
    print("| query | R@1 | R@5 | R@10 |\n|---|---|---|---|")
    for name, r in c.items():
        if name != "triplets":
            print(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f} |")


if __name__ == "__main__":
    main()
