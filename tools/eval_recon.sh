#!/usr/bin/env bash
# Reconstruct every video of a folder with `cascadev recon`, then score the reconstructions with
# `cascadev eval` against the originals.
#
#   tools/eval_recon.sh REF_DIR OUT_DIR [--baselines] [--metrics LIST] [--device DEV] [--resize]
#                       [--max-frames N] [--label TEXT] [RECON OPTIONS...]
#
# RECON OPTIONS (--config, --ckpt, --weights-dir, --size, --steps, --seed, ...) go to `cascadev recon`
# unchanged; --device goes to both recon and eval, and recon's --num-frames N also makes eval compare
# the first N frames (--max-frames N). Eval compares against recon's original.mp4 (the frames the
# model saw, after --size), so it needs no --resize. OUT_DIR receives (links are relative, so OUT_DIR
# can be moved):
#   work/<name>/          recon's outputs for each video (latent.safetensors, original.mp4,
#                         preview.mp4, recon.mp4, compare.mp4, compare.png)
#   original/<name>.mp4   links to work/<name>/original.mp4: the references
#   recon/<name>.mp4      links to work/<name>/recon.mp4     -> cascadev.json, cascadev.md, cascadev.png
# and with --baselines also
#   preview/<name>.mp4    links to work/<name>/preview.mp4 (no LDM) -> previewer.json, .md, .png
#   bicubic/<name>.mp4    bicubic upsampling of the 1/32 frames     -> bicubic.json, .md, .png
#   table.md              the three rows in one table (bicubic, previewer, CascadeV)
# The videos are reconstructed by one batch `cascadev recon REF_DIR -o OUT_DIR/work`: a video whose outputs
# are complete is not reconstructed again, so an interrupted run resumes (work/manifest.jsonl records
# each video). Environment: PYTHON (default the repo's .venv, else python3), RECON_CMD (default
# "$PYTHON -m cascadev recon"; for several GPUs e.g. "accelerate launch --num_processes 8 -m cascadev recon").
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "eval_recon: error: $*" >&2; exit 2; }

if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
[[ $# -ge 2 ]] || die "expected REF_DIR OUT_DIR [options] (see --help)."
REF=$1 OUT=$2
shift 2
[[ -d $REF ]] || die "the reference folder $REF does not exist."

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x "$REPO/.venv/bin/python" ] && PYTHON="$REPO/.venv/bin/python"
fi
BASELINES=0
EVAL_ARGS=()
RECON_ARGS=()
LABEL="CascadeV/1x32x32"
NUM_FRAMES=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --baselines) BASELINES=1 ;;
        --resize) EVAL_ARGS+=(--resize) ;;
        --metrics|--max-frames)
            [[ $# -ge 2 ]] || die "$1 needs a value."
            EVAL_ARGS+=("$1" "$2"); shift ;;
        --label)
            [[ $# -ge 2 ]] || die "$1 needs a value."
            LABEL=$2; shift ;;
        --device)
            [[ $# -ge 2 ]] || die "$1 needs a value."
            EVAL_ARGS+=("$1" "$2"); RECON_ARGS+=("$1" "$2"); shift ;;
        --num-frames)
            [[ $# -ge 2 ]] || die "$1 needs a value."
            RECON_ARGS+=("$1" "$2"); NUM_FRAMES=$2; shift ;;
        *) RECON_ARGS+=("$1") ;;
    esac
    shift
done
if [[ -n $NUM_FRAMES ]] && [[ " ${EVAL_ARGS[*]} " != *" --max-frames "* ]]; then
    EVAL_ARGS+=(--max-frames "$NUM_FRAMES")
fi
if [[ -n ${RECON_CMD:-} ]]; then
    read -r -a RECON <<< "$RECON_CMD"
else
    RECON=("$PYTHON" -m cascadev recon)
fi

# The videos' names, as the batch command names their outputs (cascadev.inputs: the same suffixes and order).
listing=$("$PYTHON" - "$REF" <<'PY'
import sys
from pathlib import Path

from cascadev.errors import CascadeVError
from cascadev.inputs import VIDEO_SUFFIXES, list_folder

try:
    print("\n".join(p.stem for p in list_folder(Path(sys.argv[1]), VIDEO_SUFFIXES)))
except CascadeVError as exc:
    sys.exit(f"eval_recon: error: {exc}")
PY
) || exit 2
NAMES=()
[[ -z $listing ]] || mapfile -t NAMES <<< "$listing"
[[ ${#NAMES[@]} -gt 0 ]] || die "the reference folder $REF holds no videos."

mkdir -p "$OUT/work" "$OUT/original" "$OUT/recon" || die "cannot create $OUT."
OUT_ABS=$(cd "$OUT" && pwd)
if [[ $BASELINES == 1 ]]; then mkdir -p "$OUT/preview"; fi

# One batch command: it skips videos whose outputs are complete and records each in work/manifest.jsonl.
echo "eval_recon: reconstructing the videos of $REF into $OUT/work" >&2
"${RECON[@]}" "$REF" -o "$OUT_ABS/work" "${RECON_ARGS[@]}" \
    || die "cascadev recon failed on some videos (see $OUT/work/manifest.jsonl)."
for name in "${NAMES[@]}"; do
    # Relative links: they still resolve when OUT_DIR is moved or copied elsewhere.
    ln -sfn "../work/$name/original.mp4" "$OUT_ABS/original/$name.mp4"
    ln -sfn "../work/$name/recon.mp4" "$OUT_ABS/recon/$name.mp4"
    if [[ $BASELINES == 1 ]]; then ln -sfn "../work/$name/preview.mp4" "$OUT_ABS/preview/$name.mp4"; fi
done

evaluate() {  # evaluate REC_DIR NAME LABEL
    "$PYTHON" -m cascadev.cli eval --ref "$OUT/original" --rec "$1" -o "$OUT/$2.json" --label "$3" --quiet \
        "${EVAL_ARGS[@]}" || die "cascadev eval failed on $1."
}

evaluate "$OUT/recon" cascadev "$LABEL"
if [[ $BASELINES == 1 ]]; then
    evaluate "$OUT/preview" previewer "Previewer only (w/o LDM)/1x32x32"
    "$PYTHON" -m cascadev.evaluation.baselines "$OUT/original" -o "$OUT/bicubic" --quiet \
        || die "the bicubic baseline failed."
    evaluate "$OUT/bicubic" bicubic "Bicubic x32/1x32x32"
    "$PYTHON" -m cascadev.evaluation.report "$OUT/bicubic.json" "$OUT/previewer.json" \
        "$OUT/cascadev.json" -o "$OUT/table.md" > /dev/null || die "combining the tables failed."
    echo "eval_recon: wrote $OUT/table.md" >&2
    cat "$OUT/table.md"
fi
