#!/usr/bin/env bash
# README "Scene benchmark": builds, from nothing, every model and scene set that the localization figures use, with
# the README's commands, in two lanes side by side (one torch thread each; about an hour on 2 cores):
#   scenes:  runs/scenes/{test,val} (300 / 60) and runs/scenes_big/train (2000) on Debian's mate-backgrounds
#   lane A:  runs/text_align (the ImageNet backbone aligned to MiniLM) -> runs/detector_big.safetensors (2400 steps)
#   lane B:  runs/scene_aug_e24 (recipe scene_objects) -> its image model -> runs/align_scene24 (aligned to the text)
#   HELD_OUT=1 adds the held-out-identity protocol (models that never saw the val scenes' identities):
#            lane A: runs/scenes_val400 and scenes_val1200, and runs/detector_4k.safetensors (detector_big trained on
#            runs/scenes_4k/train: scenes_big's 2000 train scenes and 2000 more; session 36);
#            lane B: runs/scene_hold and runs/scene_grp4_hold (scene_objects / scene_objects_groups with
#            data.options.hold_out=scene_val), their seed-1 twins runs/scene_grp4_hold_s1 and runs/scene_hold_s1 and
#            runs/scene_grp4_hold_s2 (seed 2), the ensembles runs/ens_hold (the first two), ens3_hold, ens4_hold and
#            ens5_hold (the first three, four, five), the first three aligned to the text (runs/align_hold,
#            align_grp4_hold, align_grp4_hold_s1) and their ensembles runs/ens_align_hold (two) and ens3_align_hold (three)
# Then any row of the README's scene tables is one `benchmarks/scenes.py` (or `detector primer`) command away.
# Resumable: a step whose output exists is skipped, so a killed run is started again with the same command (an
# identity model's training continues from its last epoch's checkpoint).
#
#     bash benchmarks/scene_pipeline.sh                 # ROOT=runs, BACKGROUNDS=/usr/share/backgrounds/mate/nature
#     ROOT=/tmp/tiny N_TRAIN=20 N_VAL=10 N_TEST=20 STEPS=10 EPOCHS=1 bash benchmarks/scene_pipeline.sh   # smoke test
#     HELD_OUT=1 bash benchmarks/scene_pipeline.sh      # also the held-out-identity models (about 2 h more, lane B) and
#                                                       # detector_4k (about 1 h more, lane A: 7 min of scenes, ~50 min of training)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs}
B=${BACKGROUNDS:-/usr/share/backgrounds/mate/nature}
PYTHON=${PYTHON:-python3}
N_TRAIN=${N_TRAIN:-2000} N_VAL=${N_VAL:-60} N_TEST=${N_TEST:-300} STEPS=${STEPS:-2400} EPOCHS=${EPOCHS:-}
HELD_OUT=${HELD_OUT:-0} N_VAL_BIG=${N_VAL_BIG:-400} N_VAL_BIGGER=${N_VAL_BIGGER:-1200} N_TRAIN_BIGGER=${N_TRAIN_BIGGER:-4000}
if [ ! -d "$B" ]; then
    echo "no photographs at $B: run 'apt-get install mate-backgrounds', or set BACKGROUNDS to a folder of photographs" >&2
    exit 2
fi
mkdir -p "$ROOT/logs"

log() { echo "[$(date +%H:%M:%S)] $*"; }
# step OUTPUT COMMAND...: run COMMAND unless OUTPUT exists (each command writes OUTPUT last)
step() {
    local out=$1
    shift
    if [ -e "$out" ]; then log "done already: $out"; else log "running: $*"; "$@"; log "wrote $out"; fi
}

step "$ROOT/scenes/test/annotations.json" metricvision scenes build --split test --n "$N_TEST" --out "$ROOT/scenes/test" --backgrounds "$B"
step "$ROOT/scenes/val/annotations.json" metricvision scenes build --split val --n "$N_VAL" --out "$ROOT/scenes/val" --backgrounds "$B"
step "$ROOT/scenes_big/train/annotations.json" metricvision scenes build --split train --n "$N_TRAIN" \
    --out "$ROOT/scenes_big/train" --backgrounds "$B"

epochs_text=() epochs_run=() epochs_align=()
if [ -n "$EPOCHS" ]; then
    epochs_text=(--epochs "$EPOCHS") epochs_run=(--set "train.epochs=$EPOCHS") epochs_align=(--epochs "$EPOCHS")
fi
lane_a() {
    step "$ROOT/text_align/image_model.safetensors" "$PYTHON" benchmarks/text_retrieval.py --out "$ROOT/text_align" \
        "${epochs_text[@]}"
    step "$ROOT/detector_big.safetensors" metricvision detector train --scenes "$ROOT/scenes_big/train" --steps "$STEPS" \
        --crop-steps 0 --checkpoint "$ROOT/text_align/image_model.safetensors" --out "$ROOT/detector_big.safetensors"
    if [ "$HELD_OUT" = 1 ]; then held_out_scenes; fi
}
# train_run RUN RECIPE ARGS...: ROOT/RUN trained by `metricvision train`, resumed from its last checkpoint when a killed
# run left one there (its recipe.yaml is written first)
train_run() {
    local run=$1 recipe=$2 resume=()
    shift 2
    if [ -e "$ROOT/$run/recipe.yaml" ]; then resume=(--resume); fi
    metricvision train "$recipe" --out "$ROOT/$run" --no-report "${resume[@]}" "$@"
}
# ensemble NAME RUN...: ROOT/NAME.safetensors, the ensemble of the runs' image models
ensemble() {
    local out="$ROOT/$1.safetensors" run paths=()
    shift
    for run in "$@"; do paths+=("$ROOT/$run/image_model.safetensors"); done
    step "$out" metricvision kb ensemble "$out" "${paths[@]}"
}
# HELD_OUT=1, lane A: the larger val scene sets, 4000 train scenes and detector_4k (after detector_big)
held_out_scenes() {
    step "$ROOT/scenes_val400/annotations.json" metricvision scenes build --split val --n "$N_VAL_BIG" \
        --out "$ROOT/scenes_val400" --backgrounds "$B"
    step "$ROOT/scenes_val1200/annotations.json" metricvision scenes build --split val --n "$N_VAL_BIGGER" \
        --out "$ROOT/scenes_val1200" --backgrounds "$B"
    step "$ROOT/scenes_4k/train/annotations.json" metricvision scenes build --split train --n "$N_TRAIN_BIGGER" \
        --out "$ROOT/scenes_4k/train" --backgrounds "$B"
    step "$ROOT/detector_4k.safetensors" metricvision detector train --scenes "$ROOT/scenes_4k/train" --steps "$STEPS" \
        --lr 5e-4 --crop-steps 0 --init "$ROOT/detector_big.safetensors" \
        --checkpoint "$ROOT/text_align/image_model.safetensors" --out "$ROOT/detector_4k.safetensors"
}
# HELD_OUT=1, lane B: the held-out identity models, their ensembles and aligned twins
held_out_models() {
    local hold=(--set data.options.hold_out=scene_val --set "data.train_transform_params.backgrounds=[$B]")
    # RUN:RECIPE:SEED; the seed-1 and seed-2 runs are the third to fifth members of the larger ensembles (session 34)
    local m run recipe seed
    for m in scene_hold:scene_objects:0 scene_grp4_hold:scene_objects_groups:0 \
             scene_grp4_hold_s1:scene_objects_groups:1 scene_hold_s1:scene_objects:1 \
             scene_grp4_hold_s2:scene_objects_groups:2; do
        IFS=: read -r run recipe seed <<< "$m"
        step "$ROOT/$run/metrics.json" train_run "$run" "$recipe" "${hold[@]}" --set "train.seed=$seed" "${epochs_run[@]}"
        step "$ROOT/$run/image_model.safetensors" metricvision kb from-run "$ROOT/$run" "$ROOT/$run/image_model.safetensors"
    done
    ensemble ens_hold scene_hold scene_grp4_hold
    ensemble ens3_hold scene_hold scene_grp4_hold scene_grp4_hold_s1
    ensemble ens4_hold scene_hold scene_grp4_hold scene_grp4_hold_s1 scene_hold_s1
    ensemble ens5_hold scene_hold scene_grp4_hold scene_grp4_hold_s1 scene_hold_s1 scene_grp4_hold_s2
    for m in align_hold:scene_hold align_grp4_hold:scene_grp4_hold align_grp4_hold_s1:scene_grp4_hold_s1; do
        step "$ROOT/${m%%:*}/image_model.safetensors" metricvision kb align "$ROOT/${m%%:*}" --init-run "$ROOT/${m#*:}" \
            --image-size 72 --hold-out scene_val "${epochs_align[@]}"
    done
    ensemble ens_align_hold align_hold align_grp4_hold
    ensemble ens3_align_hold align_hold align_grp4_hold align_grp4_hold_s1
}
lane_b() {
    step "$ROOT/scene_aug_e24/metrics.json" train_run scene_aug_e24 scene_objects \
        --set "data.train_transform_params.backgrounds=[$B]" "${epochs_run[@]}"
    step "$ROOT/scene_aug_e24/image_model.safetensors" metricvision kb from-run "$ROOT/scene_aug_e24" \
        "$ROOT/scene_aug_e24/image_model.safetensors"
    step "$ROOT/align_scene24/image_model.safetensors" metricvision kb align "$ROOT/align_scene24" \
        --init-run "$ROOT/scene_aug_e24" --image-size 72 "${epochs_align[@]}"
    if [ "$HELD_OUT" = 1 ]; then held_out_models; fi
}
export OMP_NUM_THREADS=1
lane_a > "$ROOT/logs/lane_a.log" 2>&1 &
a=$!
lane_b > "$ROOT/logs/lane_b.log" 2>&1 &
b=$!
status=0
wait "$a" || { echo "lane A failed: see $ROOT/logs/lane_a.log" >&2; status=1; }
wait "$b" || { echo "lane B failed: see $ROOT/logs/lane_b.log" >&2; status=1; }
cat "$ROOT/logs/lane_a.log" "$ROOT/logs/lane_b.log" | grep '^\[' || true
exit "$status"
