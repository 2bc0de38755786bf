#!/usr/bin/env bash
# Run a program in one process per GPU, on one or many machines, through accelerate.
#   bash launch.sh -m cascadev recon videos/ -o outputs/batch [cascadev options]   # batch commands
#   bash launch.sh scripts/train.py CONFIG --work-dir W                             # what train_vae.sh runs
# Environment (defaults in brackets):
#   GPUS   [GPUs on this machine]        NNODES [1]   NODE_RANK [0]
#   MASTER_ADDR [127.0.0.1]              MASTER_PORT [29500]
#   ACCELERATE_CONFIG                    an `accelerate config` file (FSDP, DeepSpeed, ...), optional
#   USE_CPU=1                            CPU processes, GPUS of them, over gloo (smoke tests)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "${GPUS:-}" ]; then
    GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
    [ "${GPUS:-0}" -ge 1 ] || GPUS=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATE=${ACCELERATE:-$HERE/.venv/bin/accelerate}
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
export PATH="$PYTHON_BIN:$PATH"
# cascadev.launcher keeps a failure to the processes' own one-line errors and exit status: accelerate's
# and torchrun's tracebacks that repeat it are held back.
exec python3 -m cascadev.launcher "$ACCELERATE" launch "${args[@]}" "$@"
