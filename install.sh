#!/usr/bin/env bash
# One-command install: makes (or reuses) a virtual environment and installs CascadeV with its test extra.
#   bash install.sh            -> ./.venv
#   VENV=/path/env bash install.sh
#   PYTHON=python3.11 bash install.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install --quiet -e ".[${EXTRAS}]"
"$VENV/bin/python" -c "import cascadev, torch, torchvision, diffusers; print(f'cascadev {cascadev.__version__} ready (torch {torch.__version__}, diffusers {diffusers.__version__}) in $VENV')"
