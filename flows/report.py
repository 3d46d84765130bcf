"""`prunepipe report [--against REF] [--out DIR]`: DIR/report.md (default reports/) from what the
workspace holds, quality first.

    metrics.json                 quality figures, then times and memory in their own table
    dvc metrics/params diff REF  what changed against a git ref (`dvc ... diff --json REF`),
                                 changes inside the noise band marked (GPTQ-derived perplexities:
                                 bench/results/noise-band-cpu.json), "unchanged" in one line
    reports/sweep.csv            the sweep table and plots, only while `dvc status sweep/dvc.yaml`
                                 finds no changed code or params behind them (else one line: stale)
    bench/results/*.json         kernel speedups by batch (rows: kernel, N, K, batch, ms, dense_ms)
    reports/*.png                the plots, copied into DIR and linked (relative, or under --image-base)

CI posts the file as one pull-request comment, found again by its first line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tasks.errors import UserError
from flows.params import load_params
from tasks.reports.summary import markdown_report, plot_speedup, quality_bands, speedup_table
from tasks.stages.graph import METRICS, REPORTS, SPARSITY_PNG, SWEEP_CSV, SWEEP_PARETO_PNG, SWEEP_SPARSITY_PNG

REPORT_NAME, SPEEDUP_NAME = "report.md", "bench_speedup.png"
BENCH_RESULTS = Path("bench") / "results"
NOISE_BAND = BENCH_RESULTS / "noise-band-cpu.json"   # bench/noise_band.py
PARAMS = Path("params.yaml")
SWEEP_DVC_YAML = Path("sweep") / "dvc.yaml"
PLOTS = {"Sparsity per decoder layer": SPARSITY_PNG, "Perplexity against sparsity": SWEEP_SPARSITY_PNG,
         "Perplexity against bytes per weight": SWEEP_PARETO_PNG}
SWEEP_PLOTS = (SWEEP_SPARSITY_PNG, SWEEP_PARETO_PNG)   # left out with a stale sweep table


def _dvc(*args: str) -> tuple[dict | None, str]:
    """dvc's --json answer, or None and its last error line."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or ["no message"])[-1]
    return json.loads(done.stdout or "{}"), ""


def dvc_diff(kind: str, ref: str) -> dict | str:
    """`dvc {metrics|params} diff REF` (REF against the workspace) as dvc's JSON, or why it failed."""
    diff, error = _dvc(kind, "diff", ref)
    return diff if diff is not None else f"`dvc {kind} diff {ref}` failed: {error}"


def sweep_staleness() -> str | None:
    """Why reports/sweep.csv does not describe the current code and params, or None when it does:
    a sweep stage whose code or params changed since it ran (outputs missing from this clone's
    cache do not count: the table in git still holds their results)."""
    status, error = _dvc("status", str(SWEEP_DVC_YAML))
    if status is None:
        return f"`dvc status {SWEEP_DVC_YAML}` failed ({error}); the table is not shown"
    changed = [stage for stage, entries in status.items()
               if any("changed deps" in entry or "changed command" in entry for entry in entries
                      if isinstance(entry, dict))]
    if not changed:
        return None
    return (f"{SWEEP_CSV} is stale: {len(changed)} of its stages have changed code or params since it ran "
            f"(`dvc status {SWEEP_DVC_YAML}`), so neither it nor its plots are shown; "
            f"`dvc repro {SWEEP_DVC_YAML}` makes a current one.")


def bench_rows(directory: Path = BENCH_RESULTS) -> list[dict]:
    """Kernel rows of the GPU benchmark results. Other files there (format sizes, SmolLM2
    figures) have no "gpu" key; a result with "gpu": null timed the CPU reference path."""
    rows = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("gpu"):
            rows += data["rows"]
    return rows


def noise_bands() -> dict[str, float]:
    """The measured noise bands for params.yaml's GPTQ solver (bench/results/noise-band-cpu.json)."""
    measured = json.loads(NOISE_BAND.read_text()) if NOISE_BAND.is_file() else {}
    return quality_bands(measured, load_params(PARAMS).quantize.solver_dtype)


def report(against: str = "HEAD", image_base: str = "", out: Path = REPORTS) -> Path:
    """Write out/report.md, with the plots it links beside it."""
    if not METRICS.is_file():
        raise UserError(f"{METRICS}: no metrics yet (run `dvc repro` or `prunepipe run`)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rows = bench_rows()
    speedups = speedup_table(rows) if rows else None
    stale = sweep_staleness() if SWEEP_CSV.is_file() else None
    sweep = stale or (pd.read_csv(SWEEP_CSV) if SWEEP_CSV.is_file() else None)
    plots = {caption: path for caption, path in PLOTS.items()
             if path.is_file() and not (stale and path in SWEEP_PLOTS)}
    if speedups is not None:
        plot_speedup(speedups, out / SPEEDUP_NAME)
        plots["Kernel speedup against batch"] = out / SPEEDUP_NAME
    for path in plots.values():
        if path.resolve() != (out / path.name).resolve():
            shutil.copyfile(path, out / path.name)
    images = {caption: image_base + path.name for caption, path in plots.items()}
    text = markdown_report(json.loads(METRICS.read_text()), against, dvc_diff("metrics", against),
                           dvc_diff("params", against), sweep, speedups, images, noise_bands())
    (out / REPORT_NAME).write_text(text)
    return out / REPORT_NAME
