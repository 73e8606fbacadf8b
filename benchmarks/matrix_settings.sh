#!/usr/bin/env bash
# The supervision settings' tables (README "Supervision settings"): every setting's recipe through
# `metricvision train`, seeds 0 1 2, full fine-tuning, run by benchmarks/run_matrix.py; then
# benchmarks/settings_table.py prints README's table from benchmarks/results_settings.json.
#
#   bash benchmarks/matrix_settings.sh --set train.device=cuda --jobs 8
#   bash benchmarks/matrix_settings.sh --set model.backbone=small_cnn ...   # any extra run_matrix args
#
# Extra arguments ("$@") go to every run_matrix call, before the call's own (which win: train.epochs=0
# of the pretrained baseline, --jobs / --threads of the calls beside the main one). The calls run at
# once; the distilled students wait for their teachers (the default recipe, same seed). Run folders
# land under $ROOT (default runs/settings); a finished job is skipped, so a killed matrix resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/settings}
OUT=${OUT:-benchmarks/results_settings.json}
mkdir -p "$ROOT"
echo "load at the start: $(uptime)"
PYTHON=${PYTHON:-python3}
matrix() { "$PYTHON" benchmarks/run_matrix.py --seeds 0 1 2 --root "$ROOT" "$@"; }

# Every call runs at once, in the background: the main call with the given --jobs, the others with one
# torch thread per job, so the cores stay busy until the longest chain (teacher, then student) ends.
pids=()
bg() { local name=$1; shift; matrix --out "$ROOT/$name.json" "$@" > "$ROOT/$name.out" 2>&1 & pids+=($!); }
# teachers then students (teacher = the default run of the same seed)
( matrix --out "$ROOT/teacher.json" "$@" --recipes default --jobs 3 --threads 1 &&
  matrix --out "$ROOT/distill.json" "$@" --recipes distill --set "distill.teacher=$ROOT/default__-__s{seed}" --jobs 3 --threads 1
) > "$ROOT/distill.out" 2>&1 & pids+=($!)
# the settings, each recipe as it is
bg settings "$@" --recipes unsup_manifold_mining incremental_metric incremental_icarl fewshot_dense
# semi-supervised: each seed keeps another 10% of the labels (label_seed = the seed)
bg semi "$@" --recipes semi_labelled_10 semi_propagation_10 semi_propagation_mean_teacher_10 \
  --set "supervision.params.label_seed={seed}" --jobs 3 --threads 1
# all labels: the upper end of the semi-supervised gap (same batches and schedule as semi_labelled_10)
bg all_labels "$@" --tag all_labels --recipes semi_labelled_10 --set supervision.params.label_fraction=1.0 --jobs 3 --threads 1
# the pretrained model, no training: the baseline of manifold mining
bg pretrained "$@" --tag pretrained --recipes unsup_manifold_mining --set train.epochs=0 --jobs 3 --threads 1
# long tail and open set on one split: a tenth of the subcategories held out ("open"); NCM open-set scores for each
bg open "$@" --tag open --recipes emoji_lt_balanced emoji_lt_instance emoji_lt_oltr --set data.options.open_fraction=0.1 \
  --set "eval.also.open={protocol: openset}" --jobs 6 --threads 1
# the prototype baseline of few-shot: episodic training, 5-way 1-shot episodes as fewshot_dense's evaluation
bg episodic "$@" --recipes fewshot_episodic --jobs 3 --threads 1 \
  --set "eval.also.fewshot={protocol: fewshot, params: {n_way: 5, k_shot: 1, n_query: 5, episodes: 600}}"
# the same at fewshot_dense's 72 px input
bg episodic72 "$@" --tag px72 --recipes fewshot_episodic --jobs 3 --threads 1 --set data.image_size=72 \
  --set "eval.also.fewshot={protocol: fewshot, params: {n_way: 5, k_shot: 1, n_query: 5, episodes: 600}}"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || echo "some calls failed: see $ROOT/*.out and the job logs beside them" >&2
# implanting on each dense-classification run (CPU; RUN/implant.json)
for s in 0 1 2; do
  run="$ROOT/fewshot_dense__-__s$s"
  [ -f "$run/implant.json" ] || [ ! -f "$run/metrics.json" ] || \
    "$PYTHON" -m metricvision.cli implant "$run" --n-query 5 --episodes 200 --seed 0 > "$run/implant.log" 2>&1 &
done
wait
echo "load at the end: $(uptime)"
"$PYTHON" benchmarks/settings_table.py "$ROOT"/*.json --runs "$ROOT" --out "$OUT"
