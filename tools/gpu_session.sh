#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, in parts sized for the calls of a lent GPU machine (ten
# minutes a command). From the repository root on that machine:
#
#   bash tools/gpu_session.sh PART...
#
#   tests      the `gpu` tests (tests/test_gpu.py)
#   bench8     8x1024², release settings against the defaults, 8 Euler-a steps
#   precision  each inference precision: the golden DiT against float64, the full-size one against
#              float32
#   cases      the other four cases, defaults: 25x576x1024, 8x2048 (tiled), 64x1024 (long), 8x256 up x4
#   train      3 training steps at 1024² with the release's recipe
#   levers     each speed lever alone against the defaults: on 8x1024 the attention kernels, regional
#              compile (with and without CUDA graphs), the compiled SVD decoder and its 8-frame chunks,
#              and inline I/O; on 8x2048 all nine tiles of a step in one DiT call; then the winners together
#   svd        ways to run the SVD decoder (tools/svd_probe.py): eager, channels-last, compiled whole or
#              by block, each against float32
#   profile    one level below the stages, on 8x1024²: SDPA kernels per attention pattern, a DiT step's
#              device time by kind of kernel, the SVD decoder by operator (cuDNN's autotuner, compiled),
#              the latent's host round trip, the main thread's own time (tools/profile_cascade.py)
#   table      docs/benchmarks.md's tables from whatever results are there
#
# The plan for one session (30 minutes of device time; the machine stays warm 30 s after a call, so
# calls made back to back share one start): `tests bench8 precision`, then `cases train`, then `levers`,
# then `profile`. Each call ends with the tables of everything measured so far. A measurement whose JSON
# is in the results already is kept: a call that carries gpu_results/ goes on where an earlier one's
# budget stopped (docs/benchmarks.md, "The session script", says what the next session has left).
#
# Results (one JSON per measurement, and session.log) go to gpu_results/ and are packed at the end as
# $OUT/gpu_results.tar.gz with session.log beside it ($OUT is the folder the device tool brings back;
# without it, just gpu_results/). Unpack that here and run `bash tools/gpu_session.sh table` for the tables.
#
# A machine whose Python lacks diffusers, decord, mmengine, av, lpips or came-pytorch gets them from
# .gpu/site.tar.xz (made by `bash tools/gpu_site.sh`; carry it along).
#
# BUDGET=SECONDS (default 480): a measurement is not started past it, and a running one is stopped there,
# so that the call returns its results in time, and three calls and a start fit a session's 30 minutes.
# CASCADEV_COMMIT: the commit recorded in the results where the copy has no .git (the lent machines'), e.g.
# `CASCADEV_COMMIT=abc1234 bash tools/gpu_session.sh ...` with the hash written into the command here.
# PYTHON (default python3) runs everything. SMOKE=1 runs every command on the CPU at toy size
# (configs/tiny.py, 4 frames of 64x64), to check the script here before a GPU session spends time on it.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-480}
RESULTS=${RESULTS:-gpu_results}
DEVICE=cuda FULL=configs/s1024_effn_f32.py TOY=()
if [ "${SMOKE:-0}" = 1 ]; then
    # Appended to each benchmark's arguments: the last --case, --config and --device win.
    DEVICE=cpu FULL=configs/tiny.py TOY=(--config configs/tiny.py --case custom --frames 4 --size 64x64 --steps 2)
fi
mkdir -p "$RESULTS"
LOG=$RESULTS/session.log
START=$SECONDS
FAILED=()

say() { echo "[gpu_session $((SECONDS - START))s] $*" | tee -a "$LOG"; }

pack() {
    [ -n "${OUT:-}" ] || return 0
    tar -czf "$OUT/gpu_results.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")" && cp "$LOG" "$OUT/session.log"
}
trap pack EXIT

setup() {
    if ! "$PYTHON" -c "import diffusers, decord, mmengine, av, lpips, came_pytorch" 2>/dev/null; then
        if [ ! -f .gpu/site.tar.xz ]; then
            say "error: this Python lacks CascadeV's packages and .gpu/site.tar.xz is missing (bash tools/gpu_site.sh makes it)"
            exit 2
        fi
        mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    # This checkout's cascadev, and its command for the tools that start one.
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    mkdir -p /tmp/site/bin
    printf '#!/bin/sh\nexec %s -m cascadev "$@"\n' "$PYTHON" >/tmp/site/bin/cascadev
    chmod +x /tmp/site/bin/cascadev
    export PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
    "$PYTHON" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, diffusers, cascadev
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"{name}; torch {torch.__version__}, diffusers {diffusers.__version__}, cascadev {cascadev.__version__}")
EOF
    # The measuring code's commit, into every JSON: a copy of the working tree without .git is told it.
    export CASCADEV_COMMIT=${CASCADEV_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
    say "commit ${CASCADEV_COMMIT:-unknown}"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee -a "$LOG"
}

# run NAME COMMAND...: one measurement, stopped at the budget; its output goes to the log.
run() {
    local name=$1 left=$((BUDGET - (SECONDS - START)))
    shift
    if [ "$left" -lt 20 ]; then
        say "skipped $name: the budget of ${BUDGET}s is spent"
        return
    fi
    say "start $name (${left}s left)"
    timeout --signal=INT --kill-after=15 "$left" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "done $name: exit $rc"
    [ "$rc" = 0 ] || FAILED+=("$name")
}

# measure NAME COMMAND...: `run`, unless $RESULTS/NAME.json is there already (a call that carries gpu_results/
# along goes on where an earlier one's budget stopped it). COMMAND writes that JSON.
measure() {
    if [ -f "$RESULTS/$1.json" ]; then
        say "kept $1: $RESULTS/$1.json is there"
    else
        run "$@"
    fi
}

bench() { # NAME ARGS...: tools/benchmark.py on the device into $RESULTS/NAME.json
    local name=$1
    shift
    measure "$name" "$PYTHON" tools/benchmark.py --device "$DEVICE" -o "$RESULTS/$name.json" "$@" "${TOY[@]}"
}

part_tests() { run tests "$PYTHON" -m pytest tests -m gpu -q -p no:cacheprovider -rs; }

part_bench8() { bench bench_8x1024 --case 8x1024 --settings both; }

part_precision() {
    run precision_golden "$PYTHON" tools/precision_table.py --device "$DEVICE" -o "$RESULTS/precision_gpu.json"
    run precision_full "$PYTHON" tools/precision_table.py --device "$DEVICE" --config "$FULL" --reference fp32 \
        -o "$RESULTS/precision_full.json"
}

part_cases() {
    # One process per case, so that a case stopped at the budget loses only itself.
    for case in 8x2048 25x576x1024 8x256-up4 64x1024; do
        bench "bench_$case" --case "$case" --settings default
    done
}

part_train() {
    local toy=()
    [ "$DEVICE" = cpu ] && toy=(--config configs/tiny.py --device cpu)
    # The release's recipe, then the same with fp16 attention (PyTorch's choice of kernel) in place of its fp32 attention.
    measure train_1024 "$PYTHON" tools/benchmark_train.py --steps 3 -o "$RESULTS/train_1024.json" "${toy[@]}"
    measure train_1024_fp16-attention "$PYTHON" tools/benchmark_train.py --steps 3 "${toy[@]}" \
        -o "$RESULTS/train_1024_fp16-attention.json" --cfg-options fp32_attention=False
}

part_levers() {
    # In order of the expected gain, so that the budget cuts the least informative.
    bench lever_batch_size-9 --case 8x2048 --settings default --cfg-options sampling.batch_size=9
    local lever
    for lever in sampling.vae_compile=True sampling.attention_backend=flash sampling.attention_backend=cudnn \
        sampling.compile=default sampling.vae_chunk=8 sampling.attention_backend=efficient \
        sampling.compile=reduce-overhead; do
        bench "lever_${lever#sampling.}" --case 8x1024 --settings default --cfg-options "$lever"
    done
    bench lever_io-depth-0 --case 8x1024 --settings default --io-depth 0
    # The levers that won, together; then the compiled decoder at 2K.
    local fastest=(sampling.compile=reduce-overhead sampling.attention_backend=cudnn sampling.vae_compile=True)
    bench lever_fastest --case 8x1024 --settings default --cfg-options "${fastest[@]}"
    bench lever_vae_compile-2048 --case 8x2048 --settings default --cfg-options sampling.vae_compile=True
    bench lever_fastest-2048 --case 8x2048 --settings default --cfg-options "${fastest[@]}"
}

part_svd() {
    local toy=()
    [ "$DEVICE" = cpu ] && toy=(--config configs/tiny.py --frames 2 --size 64x64 --repeats 1 --variants eager channels_last)
    measure svd_probe "$PYTHON" tools/svd_probe.py --device "$DEVICE" -o "$RESULTS/svd_probe.json" "${toy[@]}"
}

part_profile() {
    local toy=()
    [ "$DEVICE" = cpu ] && toy=(--config configs/tiny.py --frames 4 --size 64x64 --repeats 2)
    measure profile "$PYTHON" tools/profile_cascade.py --device "$DEVICE" -o "$RESULTS/profile.json" "${toy[@]}"
}

part_table() {
    local reports=() levers=()
    for f in "$RESULTS"/bench_*.json; do [ -f "$f" ] && reports+=("$f"); done
    for f in "$RESULTS"/lever_*.json; do [ -f "$f" ] && levers+=("$f"); done
    if [ ${#reports[@]} -gt 0 ]; then
        # Each lever against the defaults' run of its case; one whose case has none here stops the lever
        # table with a line that names it.
        "$PYTHON" tools/benchmark_table.py "${reports[@]}" ${levers[@]:+--levers "${levers[@]}"}
    else
        say "no benchmark results yet"
    fi
    "$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("precision_*.json")):
    report = json.loads(path.read_text())
    print(f"{path.name} ({report['meta']['model']}, vs {report['meta']['reference']}):")
    for row in report["rows"]:
        print(f"  {row['candidate']}: forward {row['forward_rel_err']:.2e}, sample {row['sample_rel_err']:.2e}")
for train in sorted(Path(sys.argv[1]).glob("train_*.json")):
    t = json.loads(train.read_text())
    print(f"{train.name}: losses {t['losses']}, {t['samples_per_sec']:.3f} samples/s, MFU {t['mfu']}, "
          f"peak {t['peak_memory_gib']} GiB")
probe = Path(sys.argv[1]) / "svd_probe.json"
if probe.exists():
    p = json.loads(probe.read_text())
    print(f"svd_probe.json (a {p['chunk']} chunk, {p['dtype']}):")
    for name, v in p["variants"].items():
        print(f"  {name}: {v['seconds']:.3f} s (first call {v['first_call_s']:.1f} s), vs fp32 {v['rel_err_vs_fp32']:.2e}")
EOF
    if [ -f "$RESULTS/profile.json" ]; then
        "$PYTHON" -c "import json, sys; sys.path.insert(0, 'tools'); from profile_cascade import summary; print(summary(json.load(open('$RESULTS/profile.json'))))"
    fi
    grep -E "^[a-z_]+: error|Traceback|Error|[0-9]+ (passed|failed|skipped)" "$LOG" | tail -8
}

[ $# -gt 0 ] || {
    sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2
    exit 2
}
for part in "$@"; do
    declare -F "part_$part" >/dev/null || {
        echo "gpu_session: error: unknown part '$part' (tests, bench8, precision, cases, train, levers, svd, profile, table)" >&2
        exit 2
    }
done
[ "$*" = table ] || setup
for part in "$@"; do "part_$part"; done
[[ " $* " == *" table "* ]] || part_table
if [ ${#FAILED[@]} -gt 0 ]; then
    say "failed: ${FAILED[*]} (their lines are in $LOG)"
    exit 1
fi
