#!/usr/bin/env bash
# README "Results across datasets": the default recipe and the four loss-family recipes on emoji, icons and
# glyphs, 3 seeds each, with the pretrained model (train.epochs=0) and raw pixels as baselines; then the
# supervision settings on Fashion-MNIST (part 2, 1 seed). Extra arguments go to every run_matrix.py call:
#
#     bash benchmarks/matrix_datasets.sh --set train.device=cuda --jobs 8      # one GPU, 16 cores
#     bash benchmarks/matrix_datasets.sh --set train.epochs=1 --seeds 0 --jobs 1   # CPU smoke test
#
# Needs `metricvision data fetch icons|glyphs|fashion` first (or METRICVISION_CACHE pointing at the files).
# Budget: every recipe trains about as many optimizer steps on each dataset as the default recipe on emoji
# (12 epochs x 29 batches = 348): icons 4 epochs x 90 batches, glyphs 2 x 180. Resumable: finished jobs
# (runs/matrix_datasets/*/metrics.json) are skipped. Rows go to benchmarks/results_datasets.json; the README
# table is printed at the end (python benchmarks/format_datasets.py benchmarks/results_datasets.json).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results_datasets.json
ROOT=${ROOT:-runs/matrix_datasets}
MATRIX=(python benchmarks/run_matrix.py --root "$ROOT" --out "$OUT" --seeds 0 1 2)

"${MATRIX[@]}" --recipes default loss_classification loss_proxy loss_pair loss_ranking \
    --datasets glyphs icons emoji --set-for icons train.epochs=4 --set-for glyphs train.epochs=2 "$@"
"${MATRIX[@]}" --recipes default --datasets glyphs icons emoji --tag pretrained --set train.epochs=0 "$@"
python benchmarks/pixel_baselines.py --datasets emoji icons glyphs --out "$OUT" --missing-only
python benchmarks/format_datasets.py "$OUT"
