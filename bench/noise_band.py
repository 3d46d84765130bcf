"""The noise band of the quantized perplexity: how far it moves with the CPU thread count alone,
for GPTQ's float32 and float64 solvers (quantize.solver_dtype), and what float64 costs.

From the pipeline's own data/pruned and data/calibration (run `dvc repro` first), each
(solver, threads) point quantizes the whole model with params.yaml's `quantize` section and
measures its perplexity with the `evaluate` section, in a process of its own with
torch.set_num_threads(threads). Float rounding that depends on how a sum is split over threads
flips a few of GPTQ's rounding decisions, and every later layer sees the change. Writes
bench/results/noise-band-cpu.json (the README's noise band comes from it); ~20 min on 2 cores.

    .venv/bin/python bench/noise_band.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path("bench/results/noise-band-cpu.json")
POINTS = [(solver, threads) for solver in ("float32", "float64") for threads in (1, 2)]


def codes_digest(quantized: Path) -> str:
    """One sha256 over the quantized artifact's weight and code files: equal digests, equal models."""
    digest = hashlib.sha256()
    for path in sorted(quantized.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def one_point(solver: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from flows.params import load_params
    from tasks.stages.common import StageContext
    from tasks.stages.evaluate import evaluate_artifact
    from tasks.evaluation.perplexity import read_perplexity
    from tasks.stages.quantize import quantize

    params = load_params(Path("params.yaml"), {"quantize.solver_dtype": solver})
    ctx = StageContext(log=lambda line: None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cpu, wall = time.process_time(), time.perf_counter()
        quantize(params.quantize, params.sequential, params.prune, model=Path("data/model"), pruned=Path("data/pruned"),
                 calibration=Path("data/calibration"), out=out / "quantized", run_stats=out / "run.json", ctx=ctx)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        evaluate_artifact(params.evaluate, model=out / "quantized", out=out / "eval", ctx=ctx)
        return {"solver_dtype": solver, "threads": threads, "ppl_quantized": read_perplexity(out / "eval"),
                "quantize_cpu_seconds": round(cpu, 1), "quantize_wall_seconds": round(wall, 1),
                "weights_sha256": codes_digest(out / "quantized")}


def machine() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__}


def spread(rows: list[dict], solver: str) -> dict:
    ppl = [r["ppl_quantized"] for r in rows if r["solver_dtype"] == solver]
    return {"min": min(ppl), "max": max(ppl), "relative": (max(ppl) - min(ppl)) / min(ppl)}


def main() -> None:
    if sys.argv[1:2] == ["--point"]:
        print(json.dumps(one_point(sys.argv[2], int(sys.argv[3]))))
        return
    rows = []
    for solver, threads in POINTS:
        done = subprocess.run([sys.executable, __file__, "--point", solver, str(threads)], capture_output=True,
                              text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{solver} {threads} thread(s): ppl_quantized {rows[-1]['ppl_quantized']:.4f}, "
              f"quantize {rows[-1]['quantize_cpu_seconds']} CPU s, weights {rows[-1]['weights_sha256']}", flush=True)
    result = {"machine": machine(), "rows": rows, "spread": {solver: spread(rows, solver) for solver in ("float32", "float64")}}
    if OUT.is_file():   # recorded from `make run` on two machines, not measured here: kept
        result["between_machines"] = json.loads(OUT.read_text()).get("between_machines", {})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
