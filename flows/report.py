"""`prunepipe report [--against REF]`: reports/report.md from what the workspace holds.

    metrics.json                 the metrics table
    dvc metrics/params diff REF  what changed against a git ref (`dvc ... diff --md REF`)
    reports/sweep.csv            the sweep table, when a sweep has run
    bench/results/*.json         kernel speedups by batch (rows: kernel, N, K, batch, ms, dense_ms)
    reports/*.png                the plots, linked (relative, or under --image-base)

CI posts the file as one pull-request comment, found again by its first line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tasks.errors import UserError
from tasks.reports.summary import markdown_report, plot_speedup, speedup_table
from tasks.stages.graph import METRICS, REPORTS, SPARSITY_PNG, SWEEP_CSV, SWEEP_PARETO_PNG, SWEEP_SPARSITY_PNG

REPORT = REPORTS / "report.md"
BENCH_RESULTS, SPEEDUP_PNG = Path("bench") / "results", REPORTS / "bench_speedup.png"
PLOTS = {"Sparsity per decoder layer": SPARSITY_PNG, "Perplexity against sparsity": SWEEP_SPARSITY_PNG,
         "Perplexity against bytes per weight": SWEEP_PARETO_PNG, "Kernel speedup against batch": SPEEDUP_PNG}


def dvc_diff(kind: str, ref: str) -> str:
    """`dvc {metrics|params} diff --md REF` (REF against the workspace), or why it failed."""
    done = subprocess.run([sys.executable, "-m", "dvc", kind, "diff", "--md", ref], capture_output=True, text=True)
    if done.returncode:
        return f"`dvc {kind} diff {ref}` failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}"
    return done.stdout.strip() or "No change."


def bench_rows(directory: Path = BENCH_RESULTS) -> list[dict]:
    """Kernel rows of the GPU benchmark results. Other files there (format sizes, SmolLM2
    figures) have no "gpu" key; a result with "gpu": null timed the CPU reference path."""
    rows = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("gpu"):
            rows += data["rows"]
    return rows


def report(against: str = "HEAD", image_base: str = "") -> Path:
    if not METRICS.is_file():
        raise UserError(f"{METRICS}: no metrics yet (run `dvc repro` or `prunepipe run`)")
    REPORTS.mkdir(exist_ok=True)
    diffs = {f"Metrics against `{against}`": dvc_diff("metrics", against),
             f"Parameters against `{against}`": dvc_diff("params", against)}
    rows = bench_rows()
    speedups = speedup_table(rows) if rows else None
    if speedups is not None:
        plot_speedup(speedups, SPEEDUP_PNG)
    images = {caption: image_base + path.name for caption, path in PLOTS.items() if path.is_file()}
    sweep = pd.read_csv(SWEEP_CSV) if SWEEP_CSV.is_file() else None
    REPORT.write_text(markdown_report(json.loads(METRICS.read_text()), diffs, sweep, speedups, images))
    return REPORT
