#!/usr/bin/env bash
# Fetch the released weights into pretrained/ (the layout configs/s1024_effn_f32.py expects):
#   pretrained/s1024.effn-f32.pth            CascadeV DiT            (ByteDance/CascadeV)
#   pretrained/s1024.effn-f32.safetensors    the same, converted (tools/convert_checkpoint.py)
#   pretrained/effnet_encoder.safetensors    semantic compressor     (stabilityai/StableWurst)
#   pretrained/previewer.safetensors         previewer               (stabilityai/StableWurst)
#   pretrained/svd_vae/                      SVD video VAE, fp16     (stabilityai/stable-video-diffusion-img2vid-xt)
# The SVD repository is gated: accept its licence on Hugging Face and export HF_TOKEN=<your token>.
# Needs internet access; files already present are skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
hub="${HF_ENDPOINT:-https://huggingface.co}"
auth=()
[ -n "${HF_TOKEN:-}" ] && auth=(-H "Authorization: Bearer ${HF_TOKEN}")

fetch() {  # fetch REPO FILE DEST
    local dest="$here/$3"
    if [ -s "$dest" ]; then echo "have $3"; return; fi
    mkdir -p "$(dirname "$dest")"
    echo "fetching $1/$2 -> pretrained/$3"
    curl -fL --retry 3 "${auth[@]}" -o "$dest.partial" "$hub/$1/resolve/main/$2"
    mv "$dest.partial" "$dest"
}

fetch ByteDance/CascadeV s1024.effn-f32.pth s1024.effn-f32.pth
fetch stabilityai/StableWurst effnet_encoder.safetensors effnet_encoder.safetensors
fetch stabilityai/StableWurst previewer.safetensors previewer.safetensors
fetch stabilityai/stable-video-diffusion-img2vid-xt vae/config.json svd_vae/config.json
fetch stabilityai/stable-video-diffusion-img2vid-xt vae/diffusion_pytorch_model.fp16.safetensors svd_vae/diffusion_pytorch_model.fp16.safetensors

python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
if [ ! -s "$here/s1024.effn-f32.safetensors" ]; then
    "$python" "$root/tools/convert_checkpoint.py" "$here/s1024.effn-f32.pth" -o "$here/s1024.effn-f32.safetensors"
fi
echo "weights ready in $here"
