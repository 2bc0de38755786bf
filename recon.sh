#!/usr/bin/env bash
# Reconstruct a video with the released LDM-VAE: the release's recon.sh as one `cascadev recon` call.
#   bash recon.sh [VIDEO] [OUTDIR] [more cascadev recon options, e.g. --random-init]
# runs, from the folder you are in (relative paths are yours, outputs go where OUTDIR says):
#   cascadev recon VIDEO -o OUTDIR --config REPO/configs/s1024_effn_f32.py --size 1024 --num-frames 8 \
#       --scheduler euler_a --steps 8 --seed 42 [options]
# VIDEO defaults to REPO/example/demo.mp4, OUTDIR to outputs/recon; later options override these
# (e.g. --config configs/tiny.py). Uses the weights from pretrained/download.sh; without them (and
# without --random-init) it says so in one line and uses nano, the small demo model this repository
# trains itself (docs/nano.md): --config REPO/configs/nano.py --weights-dir REPO/pretrained/nano --size 256
# --num-frames 8 --seed 42.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VIDEO=${1:-$REPO/example/demo.mp4}
OUTDIR=${2:-outputs/recon}
shift $(( $# > 2 ? 2 : $# ))
CASCADEV=${CASCADEV:-$REPO/.venv/bin/cascadev}
[ -x "$CASCADEV" ] || CASCADEV=cascadev
MODEL=(--config "$REPO/configs/s1024_effn_f32.py" --size 1024 --scheduler euler_a --steps 8)
P=$REPO/pretrained
released() { { [ -f "$P/s1024.effn-f32.safetensors" ] || [ -f "$P/s1024.effn-f32.pth" ]; } &&
    [ -f "$P/effnet_encoder.safetensors" ] && [ -f "$P/previewer.safetensors" ] && [ -f "$P/svd_vae/config.json" ]; }
if ! released && [[ " $* " != *" --random-init "* ]]; then
    echo "recon.sh: the released weights are not in pretrained/, so this uses nano, the small demo model (configs/nano.py); run pretrained/download.sh for the released one" >&2
    MODEL=(--config "$REPO/configs/nano.py" --weights-dir "$P/nano" --size 256)  # nano's own sampling settings
fi
exec "$CASCADEV" recon "$VIDEO" -o "$OUTDIR" "${MODEL[@]}" --num-frames 8 --seed 42 "$@"
