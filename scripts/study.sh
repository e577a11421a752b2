#!/usr/bin/env bash
# The README's policy results (issue 5), reproduced on CPU:  bash scripts/study.sh [stage ...]
# Stages: data (collect + cache), main (diffusion + BC on lift_cube and push_t), s2 (the fine-detail S2 table).
# Every command is a plain `s2robot` call; outputs go under $OUT (default outputs/study). Sized for 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/study}
S2=${S2ROBOT:-$(bash scripts/setup_env.sh | tail -n 1)/bin/s2robot}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DEMOS=${DEMOS:-100}
STEPS=${STEPS:-2000}          # training steps per run (same budget for every row of a table)
EVAL_EPISODES=${EVAL_EPISODES:-50}
mkdir -p "$OUT"
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(data main s2)

run() { echo "+ $*" | tee -a "$OUT/commands.log"; "$@"; }

for stage in "${stages[@]}"; do case $stage in
data)
  run $S2 collect task=lift_cube episodes=$DEMOS image_size=96 out=$OUT/lift_cube.zarr
  run $S2 collect task=push_t episodes=$DEMOS image_size=96 out=$OUT/push_t.zarr
  # fine-detail task: front camera only, 224 px, so the marker (2-3 px) must be read from the fixed view
  run $S2 collect task=match_marker episodes=$DEMOS image_size=224 'cameras=[front]' out=$OUT/match_marker.zarr
  run $S2 cache dataset=$OUT/lift_cube.zarr encoder=mobilenet_v2 encoder.input_size=96
  run $S2 cache dataset=$OUT/push_t.zarr encoder=mobilenet_v2 encoder.input_size=96
  run $S2 cache dataset=$OUT/match_marker.zarr encoder=mobilenet_v2 'encoder.scales=[1]'
  run $S2 cache dataset=$OUT/match_marker.zarr encoder=mobilenet_v2 'encoder.scales=[1,2]'
  run $S2 cache dataset=$OUT/match_marker.zarr encoder=mvp_vit_s16 encoder.input_size=112 'encoder.scales=[1,2]'
  ;;
main)
  for task in lift_cube push_t; do
    for policy in diffusion_unet bc_mlp; do
      d=$OUT/runs/$task-$policy
      run $S2 train task=$task policy=$policy encoder=mobilenet_v2 encoder.input_size=96 dataset=$OUT/$task.zarr \
        train.steps=$STEPS train.tensorboard=false train.progress=false out_dir=$d
      run $S2 eval checkpoint=$d episodes=$EVAL_EPISODES n_envs=2 out=$d/eval
    done
  done
  ;;
s2)
  enc_s1=(encoder=mobilenet_v2 'encoder.scales=[1]')
  enc_s12=(encoder=mobilenet_v2 'encoder.scales=[1,2]')
  enc_vit=(encoder=mvp_vit_s16 encoder.input_size=112 'encoder.scales=[1,2]')
  for name in mnv2_s1 mnv2_s12 vits_random_s12 resnet18_trainable; do
    case $name in
      mnv2_s1) args=("${enc_s1[@]}" policy=bc_mlp) ;;
      mnv2_s12) args=("${enc_s12[@]}" policy=bc_mlp) ;;
      vits_random_s12) args=("${enc_vit[@]}" policy=bc_mlp) ;;
      resnet18_trainable) args=(policy=bc_mlp policy.obs.backbone=resnet18) ;;
    esac
    d=$OUT/runs/match_marker-$name
    run $S2 train task=match_marker dataset=$OUT/match_marker.zarr "${args[@]}" \
      train.steps=$STEPS train.tensorboard=false train.progress=false out_dir=$d
    run $S2 eval checkpoint=$d episodes=$EVAL_EPISODES n_envs=2 out=$d/eval
  done
  ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac; done
echo "study outputs in $OUT"
