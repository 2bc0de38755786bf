#!/usr/bin/env bash
# The Python packages a GPU machine without a package index needs beyond a CUDA PyTorch image that
# already has torch, torchvision, accelerate, transformers, einops, safetensors, scikit-image, matplotlib,
# tensorboard, tqdm, pytest and opencv (cv2): one site-packages folder for Python 3.12 on x86-64 Linux,
# packed as .gpu/site.tar.xz (about 38 MB; the wheels themselves are 55 MB, over what travels to a lent
# machine beside the repository).
#
#   bash tools/gpu_site.sh                  # -> .gpu/site.tar.xz
#   PY_VERSION=3.11 bash tools/gpu_site.sh
#
# The versions are the ones this checkout's .venv runs (so the GPU runs the code the tests pass with),
# else the newest. tools/gpu_session.sh unpacks it to /tmp/site and puts that on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=${OUTPUT:-.gpu/site.tar.xz}
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

# CascadeV's requirements (pyproject.toml) and theirs that such an image lacks. opencv-python (mmengine's)
# is left out: the image's opencv-python-headless provides cv2.
PACKAGES=(diffusers importlib-metadata lazy-importer decord mmengine addict termcolor yapf platformdirs
    av lpips came-pytorch)

pinned() { # NAME -> NAME==VERSION as installed here, or NAME
    "$PYTHON" - "$1" <<'EOF'
import importlib.metadata as md, sys
try:
    print(f"{sys.argv[1]}=={md.version(sys.argv[1])}")
except md.PackageNotFoundError:
    print(sys.argv[1])
EOF
}

platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for name in "${PACKAGES[@]}"; do
    # Pure-Python packages come as py3-none-any wheels, the rest as manylinux ones for $PY_VERSION.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp "${platforms[@]}" -d "$work/wheels" "$(pinned "$name")"
done
# Unpacked here without byte-compiling (this Python is not the target's), then packed with xz: the
# wheels' zip compression leaves the bundled FFmpeg libraries of av and decord twice as large.
"$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" "$work"/wheels/*.whl
mkdir -p "$(dirname "$OUTPUT")"
tar -cJf "$OUTPUT.tmp" -C "$work/site" .
mv "$OUTPUT.tmp" "$OUTPUT"
ls -la "$OUTPUT"
