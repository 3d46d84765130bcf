"""The benchmark phase of bench/gpu_check.sh: params.yaml's `benchmark` section through
tasks/stages/benchmark.run, on a CUDA GPU.

    PYTHONPATH=. python3 bench/gpu_bench.py --json OUT/h200-DATE.json --png OUT/h200-DATE.png --ops-budget-s 200

The JSON is rewritten (atomically) after every shape × format and after decode, so a run killed
by its timeout still returns what it measured; its `occupancy` lists, per kernel our launchers
compiled, the registers and CTAs per SM their splits over K planned for. Exit 0: every row
within the fp16 bound and every decode captured in a CUDA graph; 1: a row marked `wrong`, a
failure of our own path (triton-, dispatch-, torch-dequant-), or a decode that failed or ran
without a graph; 2: no CUDA device.
A peer refusing a shape (cuSPARSELt, tinygemm) is a result, not a failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from kernels import _common
from tasks.stages import benchmark

OURS = ("triton-", "dispatch-", "torch-dequant-")


def failures(result: dict) -> list[str]:
    """One line per row or decode that makes the GPU check fail."""
    bad = [f"wrong: {r['kernel']} {r['N']}x{r['K']} batch {r['batch']} err {r['err']:.3g}"
           for r in result["rows"] if r.get("wrong")]
    bad += [f"failed: {r['kernel']} {r['N']}x{r['K']} batch {r['batch']}: {r['error']}"
            for r in result["rows"] if r.get("error") and r["kernel"].startswith(OURS)]
    bad += [f"decode {d.get('format')}: {d.get('error') or d.get('graph_error') or 'not captured in a CUDA graph'}"
            for d in result.get("decode") or [] if d.get("error") or not d.get("cuda_graph")]
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--ops-budget-s", type=float, required=True, help="no new kernel row starts after this")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    start = time.monotonic()
    section = yaml.safe_load(Path("params.yaml").read_text())["benchmark"]
    packed = Path("data/packed")
    shapes = benchmark.model_shapes(packed) if (packed / "metadata.json").is_file() else []
    print(f"params.yaml benchmark: {section}; packed model shapes: {shapes or 'none'}", flush=True)

    def save(result: dict) -> None:
        benchmark.write_results({**result, "seconds": round(time.monotonic() - start, 1),
                                 "occupancy": _common.occupancy()}, args.json, args.png)

    result = benchmark.run(**section, model_shapes=shapes, log=lambda m: print(m, flush=True),
                           deadline=start + args.ops_budget_s, on_update=save)
    save(result)
    for row in result["rows"]:
        if row.get("batch") in (1, 16, 2048) and row.get("ms"):
            print({k: row.get(k) for k in ("kernel", "N", "K", "batch", "ms", "speedup", "GBps", "err", "note")})
    bad = failures(result)
    print("\n".join(bad) or "gpu_bench: every row right, every decode in a CUDA graph", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
