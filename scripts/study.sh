#!/usr/bin/env bash
# The README's policy results (issue 5), reproduced on CPU:  bash scripts/study.sh [stage ...]
# Stages: lift_cube, push_t (diffusion + BC on cached S2 tokens), s2 (fine-detail S2 table), s2_resnet (baseline),
# s2_b16 (the two MobileNetV2 rows again at the ResNet row's batch size, for a same-budget comparison);
# policies_<task> (issue 12: privileged-state vs image policies, 3 training seeds, learning curves; DEMOS=300);
# s2_detail (issue 15: the S2 question on push_marked, 10 encoder rows + state, probes, costs);
# metaworld (issue 16: Meta-World v3 tasks MW_TASKS in the Meta-World venv, 25 and 50 demos, timed stages).
# Every command is a plain `s2robot` call; outputs go under $OUT (default outputs/study). Sized for 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/study}
S2=${S2ROBOT:-$(bash scripts/setup_env.sh | tail -n 1)/bin/s2robot}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DEMOS=${DEMOS:-100}
STEPS=${STEPS:-1500}          # training steps per run (same budget for every row of a table)
EVAL_EPISODES=${EVAL_EPISODES:-30}
mkdir -p "$OUT"
stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(lift_cube s2 push_t s2_resnet)
S2_POLICY=${S2_POLICY:-bc_mlp}

run() { echo "+ $*" | tee -a "$OUT/commands.log"; "$@"; }

task_data() {  # task image_size cameras
  run $S2 collect task=$1 episodes=$DEMOS image_size=$2 "cameras=$3" out=$OUT/$1.zarr
}
train_eval() {  # run-name task dataset [overrides...]
  local d=$OUT/runs/$1 task=$2 data=$3; shift 3
  run $S2 train task=$task dataset=$data "$@" train.steps=$STEPS train.tensorboard=false train.progress=false out_dir=$d
  run $S2 eval checkpoint=$d episodes=$EVAL_EPISODES n_envs=2 out=$d/eval
}
MNV2_96=(encoder=mobilenet_v2 encoder.input_size=96)

for stage in "${stages[@]}"; do case $stage in
lift_cube|push_t)   # the main results: diffusion and BC on cached MobileNetV2-S2(1,2) tokens, 96 px cameras
  task_data $stage 96 '[front,wrist]'
  run $S2 cache dataset=$OUT/$stage.zarr "${MNV2_96[@]}"
  train_eval $stage-diffusion_unet $stage $OUT/$stage.zarr "${MNV2_96[@]}" policy=diffusion_unet
  train_eval $stage-bc_mlp $stage $OUT/$stage.zarr "${MNV2_96[@]}" policy=bc_mlp
  ;;
s2)   # the S2 question on the fine-detail task: front camera only, 224 px, markers 2-3 px wide
  task_data match_marker 224 '[front]'
  MNV2_S1=(encoder=mobilenet_v2 'encoder.scales=[1]')
  MNV2_S12=(encoder=mobilenet_v2 'encoder.scales=[1,2]')
  VITS_S12=(encoder=mvp_vit_s16 encoder.input_size=112 'encoder.scales=[1,2]')   # random init (no MVP weights here)
  for enc in MNV2_S1 MNV2_S12 VITS_S12; do
    declare -n args=$enc
    run $S2 cache dataset=$OUT/match_marker.zarr "${args[@]}"
  done
  FRONT=('task.cameras=[front]')
  train_eval match_marker-mnv2_s1 match_marker $OUT/match_marker.zarr "${FRONT[@]}" "${MNV2_S1[@]}" policy=$S2_POLICY
  train_eval match_marker-mnv2_s12 match_marker $OUT/match_marker.zarr "${FRONT[@]}" "${MNV2_S12[@]}" policy=$S2_POLICY
  train_eval match_marker-vits_random_s12 match_marker $OUT/match_marker.zarr "${FRONT[@]}" "${VITS_S12[@]}" \
    policy=$S2_POLICY
  ;;
s2_resnet)   # trainable ResNet-18 baseline (robomimic ResNet18Conv + SpatialSoftmax, GroupNorm, random crop)
  train_eval match_marker-resnet18_trainable match_marker $OUT/match_marker.zarr 'task.cameras=[front]' policy=$S2_POLICY \
    policy.obs.backbone=resnet18 train.batch_size=${RESNET_BATCH:-16}   # 64 would take ~4 h here (9 s/step)
  ;;
s2_b16)   # MobileNetV2 one scale vs S2 (1,2) at batch 16: the same samples seen as the ResNet-18 row
  for scales in 1 12; do
    sc=$([ $scales = 1 ] && echo '[1]' || echo '[1,2]')
    train_eval match_marker-mnv2_s$scales-b16 match_marker $OUT/match_marker.zarr 'task.cameras=[front]' \
      encoder=mobilenet_v2 "encoder.scales=$sc" policy=$S2_POLICY train.batch_size=16
  done
  ;;
policies_*)   # issue 12: state (control-only upper bound) vs images (frozen MobileNetV2 S2 (1,2) PCA-256 tokens),
  # BC-MLP and diffusion U-Net, SEEDS training seeds, 50 eval episodes on seeds 100000+, rollouts every EVAL_EVERY
  # steps for the learning curve (train.csv/val.csv/eval.csv + learning_curve.png in each run).
  # Each run is evaluated twice: with the policy's own execution (ACT temporal ensembling, m = 0; the U-Net on
  # push_t and stack_cubes: replanning every step, and ACT in eval-act/) and with whole chunks (temporal_ensemble=off,
  # eval-chunks/).
  # P_AUG=K: cache K augmented views and train on them.
  task=${stage#policies_}
  P_DEMOS=${P_DEMOS:-300}; P_STEPS=${P_STEPS:-1500}; SEEDS=${SEEDS:-"0 1 2"}; EVAL_EVERY=${EVAL_EVERY:-500}
  P_AUG=${P_AUG:-1}; aug=$([ "$P_AUG" -gt 1 ] && echo "-k$P_AUG" || true)
  # P_THREADS=2: two torch threads per training (the budget rows of docs/policies.md point 8, one training at a time)
  P_THREADS=${P_THREADS:-1}
  # P_GRID=-1: keep scale 2's 6x6 token grid (encoder.grid_scale=-1) instead of pooling to the base 3x3; rows "-g6"
  P_GRID=${P_GRID:-0}; grid=$([ "$P_GRID" != 0 ] && echo "-g6" || true)
  ENC=("${MNV2_96[@]}" encoder.grid_scale=$P_GRID)
  # P_FINE=1: MobileNetV2's stride-8 map (encoder.arch={feature_layers:7}: 12x12 tokens x 64 channels per camera,
  # stored unreduced) pooled by spatial-softmax keypoints (policy.obs.pooling=keypoints); rows "-s8kp"
  P_FINE=${P_FINE:-0}; fine=$([ "$P_FINE" = 1 ] && echo "-s8kp" || true)
  TOKDIM=(token_dim=256); POOL=()
  if [ "$P_FINE" = 1 ]; then ENC+=('encoder.arch={feature_layers:7}'); TOKDIM=(); POOL=(policy.obs.pooling=keypoints); fi
  # P_EST=1: the image rows estimate the privileged state from their tokens and condition on the estimate
  # (policy.obs.estimate_state=true; the store is collected with the state anyway); rows "-est"
  P_EST=${P_EST:-0}; [ "$P_EST" = 1 ] && { fine="$fine-est"; POOL+=(policy.obs.estimate_state=true); }
  # P_CAMS=front,wrist_back: collect with these cameras and train the image rows on them; store and rows "-front+wrist_back"
  P_CAMS=${P_CAMS:-}; cams=$([ -n "$P_CAMS" ] && echo "-${P_CAMS//,/+}" || true)
  CAMS=($([ -n "$P_CAMS" ] && echo "task.cameras=[$P_CAMS]" || true))
  # P_NOISE=x: collect with action_noise=x (default: the task's demo_action_noise; stack_cubes 0.3 = DART demos,
  # P_NOISE=0 for the plain demos of the earlier rows); store and rows "-noise<x>"
  P_NOISE=${P_NOISE:-}; noise=$([ -n "$P_NOISE" ] && echo "-noise$P_NOISE" || true)
  NOISE=($([ -n "$P_NOISE" ] && echo "action_noise=$P_NOISE" || true))
  tag=$cams$noise  # what the store and the image rows are named by (the state rows by $noise only)
  STATE=(task.cameras=[] task.env_kwargs.state_obs=true)
  DP=(policy=diffusion_unet train.steps=${P_DP_STEPS:-3000})
  P_RUNS=("state$noise-bc_mlp policy=bc_mlp ${STATE[*]}"
          "images$tag$aug$grid$fine-bc_mlp policy=bc_mlp ${TOKDIM[*]} ${POOL[*]} dataset.augment_views=$P_AUG ${CAMS[*]}"
          "state$noise-diffusion_unet ${DP[*]} ${STATE[*]}"
          "images$tag$aug$grid$fine-diffusion_unet ${DP[*]} optim.warmup_steps=200 ${TOKDIM[*]} ${POOL[*]} dataset.augment_views=$P_AUG ${CAMS[*]}")
  # P_OBS=state: the state rows only, from a store collected without cameras (no rendering, no cache; minutes)
  if [ "${P_OBS:-}" = state ]; then
    data=$OUT/$task-$P_DEMOS-state$noise.zarr
    run $S2 collect task=$task episodes=$P_DEMOS "${STATE[@]}" "${NOISE[@]}" out=$data
    P_RUNS=("${P_RUNS[0]}" "${P_RUNS[2]}")
  else
    data=$OUT/$task-$P_DEMOS$tag.zarr
    run $S2 collect task=$task episodes=$P_DEMOS task.image_size=96 task.env_kwargs.state_obs=true "${CAMS[@]}" \
      "${NOISE[@]}" out=$data
    run $S2 cache dataset=$data "${ENC[@]}" "${TOKDIM[@]}" augment_views=$P_AUG
  fi
  # P_ROWS picks rows by name, e.g. P_ROWS="state-bc_mlp images-bc_mlp" (default: all four)
  if [ -n "${P_ROWS:-}" ]; then
    picked=(); for spec in "${P_RUNS[@]}"; do [[ " $P_ROWS " == *" ${spec%% *} "* ]] && picked+=("$spec"); done
    [ ${#picked[@]} -gt 0 ] || { echo "P_ROWS=$P_ROWS names none of: ${P_RUNS[*]%% *}" >&2; exit 2; }
    P_RUNS=("${picked[@]}")
  fi
  CURVE=(train.eval_every=$EVAL_EVERY train.eval_episodes=50 train.eval_n_envs=2 train.eval_videos=0
         train.val_every=$EVAL_EVERY train.tensorboard=false train.progress=false task.image_size=96)
  for seed in $SEEDS; do
    for spec in "${P_RUNS[@]}"; do
      set -- $spec; name=$1; shift
      [[ " $* " == *" train.steps="* ]] || set -- "$@" train.steps=$P_STEPS
      d=$OUT/runs/$task-$name-seed$seed
      run $S2 train task=$task dataset=$data "${ENC[@]}" "${CURVE[@]}" "$@" threads=$P_THREADS seed=$seed out_dir=$d
      run $S2 eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 out=$d/eval  # the policy's own execution
      # whole chunks: a diffusion row's are 8 actions (the schema's n_action_steps), also where a task x policy
      # file trained it to replan every step (configs/task_policy/<task>_diffusion_unet.yaml: n_action_steps 1)
      dp=$([[ $name == *diffusion_unet ]] && echo 1 || echo 0)
      CHUNK=($([ $dp = 1 ] && echo n_action_steps=8 || true))
      run $S2 eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 temporal_ensemble=off "${CHUNK[@]}" out=$d/eval-chunks
      if [ $dp = 1 ] && [ -f configs/task_policy/${task}_diffusion_unet.yaml ]; then  # replanning by default: ACT m = 0 too
        run $S2 eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 temporal_ensemble=0 "${CHUNK[@]}" out=$d/eval-act
      elif [ $dp = 1 ] && [ "${P_REPLAN1:-0}" = 1 ]; then  # P_REPLAN1=1: replan every step without averaging too
        run $S2 eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 temporal_ensemble=off replan_every=1 \
          out=$d/eval-replan1
      fi
    done
  done
  ;;
s2_detail)   # issue 15: the S2 question on push_marked (2-3 px marker halves decide which cube to push, 96 px front
  # view). Every row: the same BC-MLP head, data (D_DEMOS demos), D_STEPS steps, seeds SEEDS, 50 eval episodes on
  # seeds 100000+. Encoders: MobileNetV2 and EfficientNet-Lite0/1/2 (ImageNet) at one scale and with S2 (1, 2),
  # random-init MobileNetV2 with S2 (1, 2), the trainable ResNet-18 baseline (batch RESNET_BATCH=16: it trains on
  # images, ~10x slower per step) and the privileged-state upper bound. D_ROWS picks rows (default: all).
  # push_marked-probe.txt: the perception-only probe per frozen encoder (scripts/probe_detail.py, 2000 + 500
  # scenes); push_marked-cost.csv: tokens, GFLOPs and encode ms per frame (scripts/encoder_cost.py).
  # Table: python scripts/s2_table.py $OUT
  D_DEMOS=${D_DEMOS:-300}; D_STEPS=${D_STEPS:-3000}; SEEDS=${SEEDS:-"0 1 2"}
  data=$OUT/push_marked-$D_DEMOS.zarr
  [ -f $OUT/push_marked-cost.csv ] || "${S2%/s2robot}/python" scripts/encoder_cost.py --format csv \
    --resnet-baseline > $OUT/push_marked-cost.csv
  run $S2 collect task=push_marked episodes=$D_DEMOS task.env_kwargs.state_obs=true out=$data
  D_ROWS=${D_ROWS:-"state mnv2_s1 mnv2_s12 lite0_s1 lite0_s12 lite1_s1 lite1_s12 lite2_s1 lite2_s12 mnv2random_s12
    resnet18_trainable"}
  for row in $D_ROWS; do
    ckpt=null; scales='[1,2]'
    case $row in
      state) name=state ;;
      mnv2random_s12) name=mobilenet_v2; ckpt=random ;;
      resnet18_trainable) name=resnet18 ;;
      mnv2_s*) name=mobilenet_v2 ;;
      lite?_s*) name=efficientnet_${row%%_*} ;;
      *) echo "unknown s2_detail row $row" >&2; exit 2 ;;
    esac
    case $row in *_s1) scales='[1]' ;; esac
    if [ $row = state ]; then
      enc=(encoder=mobilenet_v2 'task.cameras=[]' task.env_kwargs.state_obs=true)
    elif [ $row = resnet18_trainable ]; then   # robomimic-style ResNet-18 trained end to end on the 96 px images
      enc=(policy.obs.backbone=resnet18 train.batch_size=${RESNET_BATCH:-16})
    else
      enc=(encoder=$name encoder.checkpoint=$ckpt "encoder.scales=$scales" encoder.input_size=96)
      run $S2 cache dataset=$data "${enc[@]}"
      probe=("${S2%/s2robot}/python" scripts/probe_detail.py --encoder $name --scales ${scales//[\[\],]/ }
             --frames $OUT/push_marked-probe-frames.npz)
      [ $ckpt = random ] && probe+=(--checkpoint random)
      echo "$row $("${probe[@]}" | tail -n 1)" | tee -a $OUT/push_marked-probe.txt
    fi
    for seed in $SEEDS; do
      d=$OUT/runs/push_marked-$row-seed$seed
      run $S2 train task=push_marked dataset=$data "${enc[@]}" policy=bc_mlp train.steps=$D_STEPS seed=$seed \
        train.tensorboard=false train.progress=false out_dir=$d
      run $S2 eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 out=$d/eval
    done
  done
  ;;
metaworld)   # issue 16: expert (seeds 0-49) and random rows, then BC-MLP on frozen MobileNetV2 S2 (1,2) PCA-256
  # tokens from 25 and 50 expert demos (96 px corner + gripperPOV), 50 eval episodes on seeds 100000+. Runs in the
  # Meta-World venv (metaworld 3.1.1 pins mujoco 3.3.0). Every stage's wall time goes to $OUT/metaworld/times.tsv;
  # scripts/metaworld_table.py turns the outputs into the README table. Rerunning resumes (stores, runs kept).
  MW_VENV=${MW_VENV:-$(bash scripts/setup_env.sh metaworld | tail -n 1)}
  MW_TASKS=${MW_TASKS:-"pick-place-v3 drawer-open-v3 button-press-topdown-v3 door-open-v3 peg-insert-side-v3"}
  MW_STEPS=${MW_STEPS:-3000}; MW_DEMOS=${MW_DEMOS:-"25 50"}; MWD=$OUT/metaworld; mkdir -p "$MWD"
  # MW_POLICY=diffusion_unet MW_STEPS=6000 MW_EXTRA="optim.warmup_steps=200": the diffusion rows (runs <task>-<n>-<policy>)
  MW_POLICY=${MW_POLICY:-bc_mlp}; sfx=$([ "$MW_POLICY" = bc_mlp ] || echo "-$MW_POLICY")
  timed() {  # task stage command...: run it, append "task stage seconds" to times.tsv
    local t=$1 st=$2 t0 ms; shift 2; t0=$(date +%s%N)
    run "$@"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '%s\t%s\t%d.%03d\n' "$t" "$st" $((ms / 1000)) $((ms % 1000)) >>"$MWD/times.tsv"
  }
  for t in $MW_TASKS; do
    grep -q "\"metaworld/$t\"" "$MWD/baselines.jsonl" 2>/dev/null \
      || timed $t baselines "$MW_VENV/bin/python" scripts/metaworld_baselines.py $t --out "$MWD/baselines.jsonl"
    timed $t collect25 "$MW_VENV/bin/s2robot" collect task=metaworld/$t episodes=25 image_size=96 out=$MWD/$t-25.zarr
    [ -d $MWD/$t-50.zarr ] || cp -r $MWD/$t-25.zarr $MWD/$t-50.zarr   # resume: the first 25 demos are the same
    timed $t collect50 "$MW_VENV/bin/s2robot" collect task=metaworld/$t episodes=50 image_size=96 out=$MWD/$t-50.zarr
    for n in $MW_DEMOS; do
      d=$MWD/runs/$t-$n$sfx
      timed $t cache$n "$MW_VENV/bin/s2robot" cache dataset=$MWD/$t-$n.zarr "${MNV2_96[@]}" token_dim=256
      timed $t train$n$sfx "$MW_VENV/bin/s2robot" train task=metaworld/$t dataset=$MWD/$t-$n.zarr "${MNV2_96[@]}" \
        token_dim=256 policy=$MW_POLICY train.steps=$MW_STEPS train.tensorboard=false train.progress=false \
        dataset.num_workers=0 ${MW_EXTRA:-} out_dir=$d
      timed $t eval$n$sfx "$MW_VENV/bin/s2robot" eval checkpoint=$d episodes=50 n_envs=2 n_videos=2 out=$d/eval
    done
  done
  ;;
*) echo "unknown stage $stage (lift_cube | push_t | s2 | s2_resnet | s2_b16 | policies_<task> | s2_detail | metaworld)" >&2; exit 2 ;;
esac; done
echo "study outputs in $OUT"
