#!/usr/bin/env bash
# Train the LDM-VAE's DiT through accelerate: one process per GPU, on one or many machines.
#   bash train_vae.sh [extra `cascadev train` options, e.g. --max-steps 1000 --cfg-options "video_list=['my.txt']"]
# Environment (defaults in brackets):
#   CONFIG [configs/s1024_effn_f32.py]   WORK_DIR [work_dirs/<config name>]
#   GPUS   [GPUs on this machine]        NNODES [1]   NODE_RANK [0]
#   MASTER_ADDR [127.0.0.1]              MASTER_PORT [29500]
#   ACCELERATE_CONFIG                    an `accelerate config` file (FSDP, DeepSpeed, ...), optional
#   USE_CPU=1                            train on CPU processes, GPUS of them (smoke tests)
# A run started again with the same WORK_DIR resumes from its newest complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-configs/s1024_effn_f32.py}
WORK_DIR=${WORK_DIR:-work_dirs/$(basename "$CONFIG" .py)}
if [ -z "${GPUS:-}" ]; then
    GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
    [ "${GPUS:-0}" -ge 1 ] || GPUS=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
[ -x "$ACCELERATE" ] || ACCELERATE=accelerate
PYTHON_BIN=$(dirname "$(command -v "$ACCELERATE")")

args=(--num_processes $((GPUS * NNODES)) --num_machines "$NNODES" --machine_rank "$NODE_RANK"
      --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" --dynamo_backend no)
[ -n "${ACCELERATE_CONFIG:-}" ] && args=(--config_file "$ACCELERATE_CONFIG" "${args[@]}")
# Several processes go through torchrun (--multi_gpu); with USE_CPU=1 they talk over gloo.
if [ $((GPUS * NNODES)) -gt 1 ]; then
    args+=(--multi_gpu)
elif [ "${USE_CPU:-0}" = 1 ]; then
    args+=(--cpu)
fi
extra=()
[ "${USE_CPU:-0}" = 1 ] && extra=(--device cpu)
export PATH="$PYTHON_BIN:$PATH"
exec "$ACCELERATE" launch "${args[@]}" scripts/train.py "$CONFIG" --work-dir "$WORK_DIR" "${extra[@]}" "$@"
