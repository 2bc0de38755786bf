#!/usr/bin/env bash
# Reconstruct a video with the released LDM-VAE: the release's recon.sh as one `cascadev recon` call.
#   bash recon.sh [VIDEO] [OUTDIR] [more cascadev recon options, e.g. --random-init]
# runs, from the folder you are in (relative paths are yours, outputs go where OUTDIR says):
#   cascadev recon VIDEO -o OUTDIR --config REPO/configs/s1024_effn_f32.py --size 1024 --num-frames 8 \
#       --scheduler euler_a --steps 8 --seed 42 [options]
# VIDEO defaults to REPO/example/demo.mp4, OUTDIR to outputs/recon; later options override these
# (e.g. --config configs/tiny.py). Needs the weights from pretrained/download.sh (or --random-init).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VIDEO=${1:-$REPO/example/demo.mp4}
OUTDIR=${2:-outputs/recon}
shift $(( $# > 2 ? 2 : $# ))
CASCADEV=${CASCADEV:-$REPO/.venv/bin/cascadev}
[ -x "$CASCADEV" ] || CASCADEV=cascadev
exec "$CASCADEV" recon "$VIDEO" -o "$OUTDIR" \
    --config "$REPO/configs/s1024_effn_f32.py" --size 1024 --num-frames 8 \
    --scheduler euler_a --steps 8 --seed 42 "$@"
