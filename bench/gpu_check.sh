#!/usr/bin/env bash
# The GPU check, one command from the repository root on a CUDA machine (written for an H200):
#
#     bash bench/gpu_check.sh
#
# 1. tests/test_kernels.py and tests/test_dispatch.py on the GPU (TRITON_INTERPRET unset, so the
#    GPU-only tests run too), in parallel when pytest-xdist is there; a failure is recorded and
#    the benchmark still runs;
# 2. the whole benchmark (params.yaml's `benchmark` section, tasks/benchmark.py): every kernel
#    against cuBLAS, torch's 2:4 (semi-structured and raw cuSPARSELt) and int4 peers, then batch-1
#    decode of a random Llama-shaped model, dense and packed, with CUDA graphs;
# 3. SparseGPT on a Llama-7B-shaped model with random weights (bench/llama7b_prune.py): seconds per
#    layer and peak GPU memory, activations on the GPU and offloaded. It needs pydantic, which the
#    H200 image lacks: carry its wheels, fetched here with
#      pip download -d bench/wheels --only-binary=:all: --python-version 3.12 \
#          --platform manylinux2014_x86_64 --implementation cp pydantic==2.14.3
#    (run(..., carry=["bench/wheels", ...])); they are installed under $WORK, not into the image.
# Installs nothing and needs no network, Prefect or DVC: python3 with torch, triton, transformers,
# safetensors, pyyaml, pandas and matplotlib (what the H200 image has). Budget: under 5 minutes on a
# fresh machine, autotuning included: PRUNEPIPE_AUTOTUNE=quick (3 configs per path, short timing),
# kernel rows stop starting new work OPS_BUDGET_S seconds in (the JSON then says "truncated"), and
# each phase runs under `timeout`.
#
# Writes bench/results/<tag>-<date>.json (gpu, copy_GBps, library versions, rows, decode,
# dispatch decisions, kernel_tests) and <tag>-<date>.png; when $OUT is set, copies them there with
# this script's log (gpu_check.log), the pytest log and the dispatch cache. Exit 0: tests and
# benchmark passed; 1: kernel tests failed; 2: the benchmark failed. Knobs (environment): PYTHON
# (python3), TAG (h200), TEST_TIMEOUT_S (120), BENCH_TIMEOUT_S (300), OPS_BUDGET_S (110),
# PRUNE_TIMEOUT_S (180), XDIST_WORKERS (8). Exit 3: the Llama-7B prune failed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TAG=${TAG:-h200}
STAMP=$(date -u +%Y-%m-%d)
RESULTS=bench/results
JSON=$RESULTS/$TAG-$STAMP.json PNG=$RESULTS/$TAG-$STAMP.png
WORK=${OUT:-$(mktemp -d)}
TEST_LOG=$WORK/kernel-tests.log
mkdir -p "$RESULTS" "$WORK"
exec > >(tee "$WORK/gpu_check.log") 2>&1

unset TRITON_INTERPRET
export PRUNEPIPE_AUTOTUNE=quick PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PRUNEPIPE_DISPATCH_CACHE=$WORK/dispatch.json

step() { echo "[gpu_check $(date -u +%H:%M:%S)] $*"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PYTHON" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__,
"gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE: CPU fallbacks only")'

step "kernel and dispatch tests on the GPU"
PARALLEL=()
if "$PYTHON" -c 'import xdist' 2>/dev/null; then PARALLEL=(-n "${XDIST_WORKERS:-8}"); fi
set +e
timeout "${TEST_TIMEOUT_S:-120}" "$PYTHON" -m pytest tests/test_kernels.py tests/test_dispatch.py -q -p no:cacheprovider \
    ${PARALLEL[@]+"${PARALLEL[@]}"} 2>&1 | tee "$TEST_LOG"
TEST_RC=${PIPESTATUS[0]}
set -e
step "kernel tests: exit code $TEST_RC$([ "$TEST_RC" = 124 ] && echo ' (timed out)')"

step "benchmark"
set +e
TEST_RC=$TEST_RC TEST_LOG=$TEST_LOG JSON=$JSON PNG=$PNG OPS_BUDGET_S=${OPS_BUDGET_S:-110} \
    timeout "${BENCH_TIMEOUT_S:-300}" "$PYTHON" - <<'EOF'
import json, os, time
from pathlib import Path

import yaml

from tasks import benchmark

start = time.monotonic()
section = yaml.safe_load(Path("params.yaml").read_text())["benchmark"]
packed = Path("data/packed")
shapes = benchmark.model_shapes(packed) if (packed / "metadata.json").is_file() else []
print(f"params.yaml benchmark: {section}; packed model shapes: {shapes or 'none (no data/packed here)'}")
result = benchmark.run(**section, model_shapes=shapes, log=print,
                       deadline=start + float(os.environ["OPS_BUDGET_S"]))
lines = Path(os.environ["TEST_LOG"]).read_text().strip().splitlines()
result["kernel_tests"] = {"exit_code": int(os.environ["TEST_RC"]), "summary": lines[-1] if lines else ""}
result["seconds"] = round(time.monotonic() - start, 1)
benchmark.write_results(result, Path(os.environ["JSON"]), Path(os.environ["PNG"]))
print(json.dumps({key: result.get(key) for key in ("gpu", "copy_GBps", "libraries", "truncated", "seconds")}))
for row in result["rows"]:
    if row.get("batch") in (1, 2048) or row.get("error"):
        print({k: row.get(k) for k in ("kernel", "N", "K", "batch", "ms", "speedup", "GBps", "err", "error")})
for row in result["decode"] or []:
    print(row)
EOF
BENCH_RC=$?
set -e
step "benchmark: exit code $BENCH_RC$([ "$BENCH_RC" = 124 ] && echo ' (timed out)')"

step "Llama-7B-shaped SparseGPT prune"
set +e
if ! "$PYTHON" -c 'import pydantic' 2>/dev/null && [ -d bench/wheels ]; then
    "$PYTHON" -m pip install -q --no-index --find-links bench/wheels --target "$WORK/site" pydantic
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" timeout "${PRUNE_TIMEOUT_S:-180}" "$PYTHON" bench/llama7b_prune.py --device cuda --tag "$TAG"
PRUNE_RC=$?
set -e
step "Llama-7B prune: exit code $PRUNE_RC$([ "$PRUNE_RC" = 124 ] && echo ' (timed out)')"

if [ -n "${OUT:-}" ]; then
    for f in "$JSON" "$PNG" "$RESULTS/$TAG-llama7b-prune.json"; do
        if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
    done
fi
step "done: $JSON, logs and dispatch cache in $WORK"
if [ "$BENCH_RC" != 0 ]; then exit 2; fi
if [ "$TEST_RC" != 0 ]; then exit 1; fi
if [ "$PRUNE_RC" != 0 ]; then exit 3; fi
