"""ADMM at an N:M pattern on the pipeline's model and calibration (run `dvc repro` first): the
perplexity of the pruned model on the `evaluate` windows, one row per run, appended to
bench/results/smollm2-admm-nm.json with the git commit of the code it ran, so that mask
schedules and iteration counts can be compared on the same data. ~7 min per run on 2 cores.

    .venv/bin/python bench/admm_nm.py --label gradual [--iterations 30] [--sparsity 2:4] [--data data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

OUT = Path("bench/results/smollm2-admm-nm.json")


def run(label: str, iterations: int, sparsity: str, data: Path) -> dict:
    from flows.params import load_params
    from tasks.evaluation.perplexity import read_perplexity
    from tasks.stages.common import StageContext
    from tasks.stages.evaluate import evaluate_artifact
    from tasks.stages.prune import prune

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    params = load_params(Path("params.yaml"), {"prune.method": "admm", "prune.sparsity": sparsity,
                                                "prune.admm.iterations": iterations})
    ctx = StageContext(log=print)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        prune(params.prune, params.sequential, model=data / "model", calibration=data / "calibration",
              out=out / "pruned", run_stats=out / "run.json", ctx=ctx)
        seconds = time.perf_counter() - start
        evaluate_artifact(params.evaluate, model=out / "pruned", out=out / "eval", ctx=ctx)
        ppl = read_perplexity(out / "eval")
    return {"label": label, "sparsity": sparsity, "iterations": iterations, "ppl_pruned": round(ppl, 4),
            "prune_seconds": round(seconds, 1), "commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args()
    row = run(args.label, args.iterations, args.sparsity, args.data)
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() else []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": [*rows, row]}, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
