#!/usr/bin/env bash
# The README's nano pictures and docs/nano.md's numbers, made with the project's own commands from the
# shipped weights (pretrained/nano) and the held-out clips (tools/make_nano_data.py):
#   bash tools/nano_pictures.sh [OUT]     (default outputs/nano; about 5 minutes on 2 CPU cores)
# writes docs/nano_recon.png       original | previewer | nano, a held-out clip (cascadev recon's compare.png)
#        docs/upscale_example.png  64x48 input, nearest-enlarged | cascadev upscale --scale 4 (256x192)
#        docs/interpolate_example.png  6.25 fps input | cascadev interpolate --factor 4 (25 fps)
#        OUT/eval/table.md         bicubic-of-1/32 | previewer | nano on the held-out clips (tools/eval_recon.sh)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
case "${1:-}" in -*)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
OUT=${1:-outputs/nano}
PY=${PY:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python
CASCADEV=("$PY" -m cascadev.cli)
NANO=(--config configs/nano.py --seed 42 --quiet)
[ -s data/nano/heldout.txt ] || "$PY" tools/make_nano_data.py --out data/nano
mkdir -p "$OUT"

echo "== recon of a held-out clip"
rm -rf "$OUT/recon"
"${CASCADEV[@]}" recon data/nano/heldout/bikes_heldout.mp4 -o "$OUT/recon" --num-frames 8 "${NANO[@]}"
cp "$OUT/recon/compare.png" docs/nano_recon.png

echo "== upscale x4 and interpolate x4"
"$PY" - "$OUT" <<'PY'
# A 64x48 crop around the bird (another model's small output) and a 6.25 fps clip (every 4th frame).
import sys
from cascadev.frames import from_uint8, resize, to_uint8
from cascadev.video_io import VideoReader, write_video
out = sys.argv[1]
frames = VideoReader("example/demo.mp4").read(range(8))[:, 200:584, 480:992]
small = resize(from_uint8(frames), (48, 64), mode="area")  # (T, 3, H, W) in [-1, 1]
write_video(f"{out}/bird_64.mp4", to_uint8(small), 24)
write_video(f"{out}/bikes_6fps.mp4", VideoReader("data/nano/heldout/bikes_heldout.mp4").read(range(0, 12, 4)), 6.25)
PY
rm -f "$OUT/bird_256.mp4" "$OUT/bikes_25fps.mp4"
"${CASCADEV[@]}" upscale "$OUT/bird_64.mp4" -o "$OUT/bird_256.mp4" --scale 4 "${NANO[@]}"
"$PY" tools/compare_frames.py "$OUT/bird_64.mp4" "$OUT/bird_256.mp4" -o docs/upscale_example.png --frames 2
"${CASCADEV[@]}" interpolate "$OUT/bikes_6fps.mp4" -o "$OUT/bikes_25fps.mp4" --factor 4 "${NANO[@]}"
"$PY" tools/compare_frames.py "$OUT/bikes_6fps.mp4" "$OUT/bikes_25fps.mp4" -o docs/interpolate_example.png --frames 3

echo "== held-out evaluation"
rm -rf "$OUT/eval"
PYTHON=$PY bash tools/eval_recon.sh data/nano/heldout "$OUT/eval" --baselines --label "nano cascade/1x32x32" \
    --metrics psnr,ssim,sharpness,temporal_flickering --num-frames 16 "${NANO[@]}"
