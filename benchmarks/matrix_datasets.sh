#!/usr/bin/env bash
# README "Results across datasets". Part 1: the default recipe and the four loss-family recipes on emoji,
# icons and glyphs, 3 seeds each, with the pretrained model (train.epochs=0) and raw pixels as baselines.
# Part 2, run at the same time: the supervision settings on Fashion-MNIST (class-incremental, long tail,
# open set; $FASHION_SEEDS, default one seed). Extra arguments go to every run_matrix.py call:
#
#     bash benchmarks/matrix_datasets.sh --set train.device=cuda --jobs 8          # one GPU, 16 cores
#     bash benchmarks/matrix_datasets.sh --seeds 0 --jobs 1 --set train.epochs=1 \
#         --set incremental.tasks=1 --set incremental.epochs_per_task=1          # CPU smoke test
#
# (incremental recipes need train.epochs = incremental.tasks x incremental.epochs_per_task.) PARTS="1" or "2"
# runs one part only (e.g. where only some dataset files can be copied: icons + glyphs 33 MB, fashion 27 MB).
# Needs `metricvision data fetch icons`, `glyphs` and `fashion` first (or METRICVISION_CACHE pointing at the
# files). Budget: every part-1 recipe trains about as many optimizer steps on each dataset as the default
# recipe on emoji (12 epochs x 29 batches = 348): icons 4 epochs x 90 batches, glyphs 2 x 180. Resumable:
# finished jobs ($ROOT/*/metrics.json) are skipped. Rows go to benchmarks/results_datasets.json and
# benchmarks/results_fashion_settings.json; the README tables are printed at the end by format_datasets.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/matrix_datasets}
OUT=benchmarks/results_datasets.json
SETTINGS_OUT=benchmarks/results_fashion_settings.json
mkdir -p "$ROOT"
PYTHON=${PYTHON:-python3}
MATRIX=("$PYTHON" benchmarks/run_matrix.py --root "$ROOT")

PARTS=${PARTS:-1 2}

part2=""
if [[ " $PARTS " == *" 2 "* ]]; then
    # shellcheck disable=SC2086
    "${MATRIX[@]}" --out "$SETTINGS_OUT" --seeds ${FASHION_SEEDS:-0} \
        --recipes fashion_incremental_metric fashion_incremental_icarl fashion_longtail_balanced fashion_longtail_oltr \
        fashion_openset fashion_openset_oltr "$@" > "$ROOT/part2.out" 2>&1 &
    part2=$!
fi
if [[ " $PARTS " == *" 1 "* ]]; then
    "${MATRIX[@]}" --out "$OUT" --seeds 0 1 2 --recipes default loss_classification loss_proxy loss_pair loss_ranking \
        --datasets glyphs icons emoji --set-for icons train.epochs=4 --set-for glyphs train.epochs=2 "$@"
    "${MATRIX[@]}" --out "$OUT" --seeds 0 1 2 --recipes default --datasets glyphs icons emoji --tag pretrained \
        --set train.epochs=0 "$@"
    "$PYTHON" benchmarks/pixel_baselines.py --datasets emoji icons glyphs --out "$OUT" --missing-only
fi
if [[ -n "$part2" ]]; then
    wait "$part2" || echo "part 2 (fashion settings) failed: see $ROOT/part2.out"
    cat "$ROOT/part2.out"
fi
"$PYTHON" benchmarks/format_datasets.py "$OUT" "$SETTINGS_OUT"
