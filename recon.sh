#!/usr/bin/env bash
# Reconstruct a video with the released LDM-VAE (the release's recon.sh, as one command).
#   bash recon.sh [VIDEO] [OUTDIR] [extra cascadev options, e.g. --size 1024 --num-frames 8 --random-init]
# Needs the weights from pretrained/download.sh (or --random-init for a smoke run).
set -euo pipefail
cd "$(dirname "$0")"
VIDEO=${1:-example/demo.mp4}
OUTDIR=${2:-outputs/recon}
shift $(( $# > 2 ? 2 : $# ))
CASCADEV=${CASCADEV:-.venv/bin/cascadev}
[ -x "$CASCADEV" ] || CASCADEV=cascadev
exec "$CASCADEV" recon "$VIDEO" -o "$OUTDIR" \
    --config configs/s1024_effn_f32.py --size 1024 --num-frames 8 \
    --scheduler euler_a --steps 8 --seed 42 "$@"
