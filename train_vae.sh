#!/usr/bin/env bash
# Train the LDM-VAE's DiT through accelerate (launch.sh): one process per GPU, on one or many machines.
#   bash train_vae.sh [extra `cascadev train` options, e.g. --max-steps 1000 --cfg-options "video_list=['my.txt']"]
# It runs from the folder you are in: relative paths (CONFIG, WORK_DIR, video lists) are yours.
# Environment (defaults in brackets):
#   CONFIG [REPO/configs/s1024_effn_f32.py]   WORK_DIR [work_dirs/<config name>]
#   GPUS   [GPUs on this machine]        NNODES [1]   NODE_RANK [0]
#   MASTER_ADDR [127.0.0.1]              MASTER_PORT [29500]
#   ACCELERATE_CONFIG                    an `accelerate config` file (FSDP, DeepSpeed, ...), optional
#   USE_CPU=1                            train on CPU processes, GPUS of them (smoke tests)
# A run started again with the same WORK_DIR resumes from its newest complete checkpoint.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG=${CONFIG:-$REPO/configs/s1024_effn_f32.py}
WORK_DIR=${WORK_DIR:-work_dirs/$(basename "$CONFIG" .py)}
extra=()
[ "${USE_CPU:-0}" = 1 ] && extra=(--device cpu)
exec bash "$REPO/launch.sh" "$REPO/scripts/train.py" "$CONFIG" --work-dir "$WORK_DIR" "${extra[@]}" "$@"
