#!/usr/bin/env bash
# The supervision settings' tables (README "Supervision settings"): every setting's recipe through
# `metricvision train`, seeds 0 1 2, full fine-tuning, run by benchmarks/run_matrix.py; then
# benchmarks/settings_table.py prints README's table from benchmarks/results_settings.json.
#
#   bash benchmarks/matrix_settings.sh --set train.device=cuda --jobs 8
#   bash benchmarks/matrix_settings.sh --set model.backbone=small_cnn ...   # any extra run_matrix args
#
# Extra arguments ("$@") go to every run_matrix call, before a call's own (which win: --jobs of the
# distillation chain, train.epochs=0 of the pretrained baseline). Two chains run at once: the default recipe (the
# distillation teacher, one per seed) then the distilled student of that seed's teacher; and every
# other setting with its baselines. Run folders land under $ROOT (default runs/settings); a finished
# job is skipped, so a killed matrix resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/settings}
OUT=${OUT:-benchmarks/results_settings.json}
mkdir -p "$ROOT"
matrix() { python benchmarks/run_matrix.py --seeds 0 1 2 --root "$ROOT" "$@"; }

# chain 1: teachers, then students (teacher = the default run of the same seed); at most 3 jobs at once
(
  matrix --out "$ROOT/teacher.json" "$@" --recipes default --jobs 3
  matrix --out "$ROOT/distill.json" "$@" --recipes distill --set "distill.teacher=$ROOT/default__-__s{seed}" --jobs 3
) > "$ROOT/chain_distill.log" 2>&1 &
distill_pid=$!

# chain 2: the settings and their baselines
matrix --out "$ROOT/settings.json" "$@" --recipes semi_labelled_10 semi_propagation_10 semi_propagation_mean_teacher_10 \
  unsup_manifold_mining incremental_metric incremental_icarl fewshot_dense
# all labels: the upper end of the semi-supervised gap (same batches and schedule as semi_labelled_10)
matrix --out "$ROOT/all_labels.json" "$@" --tag all_labels --recipes semi_labelled_10 --set supervision.params.label_fraction=1.0
# the pretrained model, no training: the baseline of manifold mining
matrix --out "$ROOT/pretrained.json" "$@" --tag pretrained --recipes unsup_manifold_mining --set train.epochs=0
# long tail and open set on one split: a tenth of the subcategories held out ("open"); NCM open-set scores for both
matrix --out "$ROOT/open.json" "$@" --tag open --recipes emoji_lt_balanced emoji_lt_oltr \
  --set data.options.open_fraction=0.1 --set "eval.also.open={protocol: openset}"
# the prototype baseline of few-shot: episodic training, 5-way 1-shot episodes as fewshot_dense's evaluation
matrix --out "$ROOT/episodic.json" "$@" --recipes fewshot_episodic \
  --set "eval.also.fewshot={protocol: fewshot, params: {n_way: 5, k_shot: 1, n_query: 5, episodes: 600}}"
# implanting on each dense-classification run (CPU; RUN/implant.json)
for s in 0 1 2; do
  run="$ROOT/fewshot_dense__-__s$s"
  [ -f "$run/implant.json" ] || [ ! -f "$run/metrics.json" ] || \
    python -m metricvision.cli implant "$run" --n-query 5 --episodes 200 --seed 0 > /dev/null
done

wait "$distill_pid" || echo "the distillation chain failed: see $ROOT/chain_distill.log" >&2
python benchmarks/settings_table.py "$ROOT"/*.json --runs "$ROOT" --out "$OUT"
