#!/usr/bin/env bash
# The GPU check, one command from the repository root on a CUDA machine (written for one H200 run
# through the device tool, whose command may take 600 s and brings back at most 8 files of $OUT):
#
#     bash bench/gpu_check.sh                   # results in bench/results/, or in $OUT when set
#
# Phases, each under its own `timeout` (the sum of the timeouts is the longest it can take):
#   1. the kernel and dispatch tests on the GPU (TRITON_INTERPRET unset), with pytest-xdist when
#      there: tests/test_kernels*.py, test_dequant.py, test_dispatch.py.            ≤ TEST_TIMEOUT_S (100)
#   2. the benchmark, bench/gpu_bench.py → tasks/stages/benchmark.py (params.yaml's `benchmark`):
#      largest shapes first (28672×8192 and 8192×28672 at batches 1, 16, 128 and 2048), every path
#      against cuBLAS fp16, torch's 2:4 and int4 peers and the dispatcher; no new kernel row after
#      OPS_BUDGET_S (200); then batch-1 decode of a Llama-shaped model in CUDA graphs.  ≤ BENCH_TIMEOUT_S (330)
#   3. Nsight Compute's speed of light (DRAM and L1 / shared-memory throughput) on one batch-1
#      launch of bitmask-int4, bitmask, int4 and nm-int4 at 8192×28672 (bench/ncu_probe.py): the
#      static report's L1 and issue caps, not DRAM, bound bitmask. Into the log; skipped without ncu;
#      not part of the exit status.               4 × (NCU_TIMEOUT_S (15) + 3 s to kill) ≤ 72
#   4. only with PRUNE=1: bench/llama7b_prune.py (the GPU pruning issue's own run).  ≤ PRUNE_TIMEOUT_S (180)
# Environment, install and copies: ≈ 15 s. So 100 + 330 + 72 + 15 = 517 s at most without phase 4,
# inside a 520 s device call. Never run on a GPU yet: these are its budgets, not measured times.
#
# The JSON ($OUT/<tag>-<date>.json, also bench/results/) is rewritten after every shape × format,
# so a killed run still returns what it measured. Every row is checked against Ŵ in float64; one
# past the fp16 bound is marked `wrong`. Exit status: 0 all passed; 1 kernel tests failed;
# 2 benchmark: a wrong row, a failure of our own path, a decode without a CUDA graph, or a timeout;
# 3 the Llama-7B prune failed. The carried wheels (bench/wheels: pydantic, which the image lacks;
# fetch with `pip download -d bench/wheels --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 --implementation cp pydantic==2.14.3`) are installed into a temporary
# folder outside $OUT, whose files are the ones that come back.
# Needs no network, Prefect or DVC: python3 with torch, triton, transformers, safetensors, pyyaml,
# pandas, matplotlib and pytest (the H200 image has them).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TAG=${TAG:-h200}
STAMP=$(date -u +%Y-%m-%d)
OUT=${OUT:-bench/results}
WORK=$(mktemp -d)   # never under $OUT: only 8 files of it come back
JSON=$OUT/$TAG-$STAMP.json PNG=$OUT/$TAG-$STAMP.png
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

unset TRITON_INTERPRET
export PRUNEPIPE_AUTOTUNE=quick PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PRUNEPIPE_DISPATCH_CACHE=$OUT/dispatch.json

step() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }
timed_out() { [ "$1" = 124 ] && echo ' (timed out)'; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PYTHON" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__,
"gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")'
if ! "$PYTHON" -c 'import pydantic' 2>/dev/null && [ -d bench/wheels ]; then
    "$PYTHON" -m pip install -q --no-index --find-links bench/wheels --target "$WORK/site" pydantic
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

step "kernel and dispatch tests on the GPU"
PARALLEL=()
if "$PYTHON" -c 'import xdist' 2>/dev/null; then PARALLEL=(-n "${XDIST_WORKERS:-8}"); fi
timeout "${TEST_TIMEOUT_S:-100}" "$PYTHON" -m pytest tests/test_kernels*.py tests/test_dequant.py \
    tests/test_dispatch.py -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} > "$OUT/kernel-tests.log" 2>&1
TEST_RC=$?
tail -n 30 "$OUT/kernel-tests.log"
step "kernel tests: exit code $TEST_RC$(timed_out $TEST_RC)"

step "benchmark"
timeout "${BENCH_TIMEOUT_S:-330}" "$PYTHON" bench/gpu_bench.py --json "$JSON" --png "$PNG" \
    --ops-budget-s "${OPS_BUDGET_S:-200}"
BENCH_RC=$?
step "benchmark: exit code $BENCH_RC$(timed_out $BENCH_RC)"

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
if [ -n "$NCU" ]; then
    # one process per format: ncu prints its tables when the process ends, so a timeout loses one
    for fmt in bitmask-int4 bitmask int4 nm-int4; do
        step "Nsight Compute: DRAM and L1 throughput of one batch-1 $fmt launch ($NCU)"
        timeout -k 3 "${NCU_TIMEOUT_S:-15}" "$NCU" --clock-control none --profile-from-start off \
            --section SpeedOfLight "$PYTHON" bench/ncu_probe.py --formats "$fmt"
        NCU_RC=$?
        step "ncu $fmt: exit code $NCU_RC$(timed_out $NCU_RC)"
    done
else
    step "Nsight Compute: no ncu on this machine, skipped"
fi

PRUNE_RC=0
if [ "${PRUNE:-0}" = 1 ]; then
    step "Llama-7B-shaped prune"
    timeout "${PRUNE_TIMEOUT_S:-180}" "$PYTHON" bench/llama7b_prune.py --device cuda --tag "$TAG"
    PRUNE_RC=$?
    if [ -f "bench/results/$TAG-llama7b-prune.json" ] && [ "$OUT" != bench/results ]; then
        cp "bench/results/$TAG-llama7b-prune.json" "$OUT/"
    fi
    step "Llama-7B prune: exit code $PRUNE_RC$(timed_out $PRUNE_RC)"
fi

step "done: $JSON and the logs in $OUT"
if [ "$TEST_RC" != 0 ]; then exit 1; fi
if [ "$BENCH_RC" != 0 ]; then exit 2; fi
if [ "$PRUNE_RC" != 0 ]; then exit 3; fi
