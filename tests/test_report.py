"""`prunepipe report`: the Markdown report (quality first, the diff against a git ref from DVC with
noise marked, the sweep table only while current, kernel speedups, machine-dependent figures
apart, plot links) and the speedup table and plot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import main
from tasks.reports.summary import REPORT_MARKER, markdown_report, plot_speedup, speedup_table

METRICS = {"ppl_dense": 20.5, "ppl_pruned": 25.25, "sparsity": 0.5, "sparsity_per_type": {"q_proj": 0.5},
           "prune_seconds": 98.0, "peak_host_mib": 1441.8}
BENCH = [{"kernel": k, "N": n, "K": 4096, "batch": b, "ms": ms, "dense_ms": 1.0}
         for k, n, b, ms in [("nm-int4", 4096, 1, 0.5), ("nm-int4", 8192, 1, 0.25), ("nm-int4", 4096, 16, 2.0),
                             ("int4", 4096, 1, 0.8), ("int4", 4096, 16, 4.0)]]


def squeeze(text: str) -> str:
    """Markdown with every run of spaces as one (tables are padded to their widest cell)."""
    return re.sub(r" +", " ", text)


def test_speedup_is_the_median_over_shapes_by_kernel_and_batch(tmp_path):
    table = speedup_table(BENCH)
    assert table.loc["nm-int4", 1] == 3.0        # median of 2.0 and 4.0
    assert table.loc["int4", 16] == 0.25
    plot_speedup(table, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").stat().st_size > 0


def test_markdown_report_puts_quality_first_and_machine_figures_apart():
    sweep = pd.DataFrame([{"name": "wanda-0.5-none", "format": "bitmask", "ppl": 25.25, "sparsity": 0.5,
                           "bytes_per_weight": 1.13, "pareto": True}])
    diff = {"metrics.json": {"ppl_dense": {"old": 20.4999, "new": 20.5}, "ppl_pruned": {"old": 24.0, "new": 25.25},
                             "prune_seconds": {"old": 80.0, "new": 98.0}}}
    text = squeeze(markdown_report(METRICS, "main", diff, {}, sweep, speedup_table(BENCH),
                                   {"Sparsity per decoder layer": "https://host/layer_sparsity.png"}))
    assert text.splitlines()[0] == REPORT_MARKER
    quality, machine = text.split("### Timings and memory (machine-dependent)")
    assert "| sparsity_per_type.q_proj |" in quality and "prune_seconds |" not in quality.split("### Quality against")[0]
    changes = quality.split("### Quality against `main`")[1].split("**Parameters")[0]
    assert "| ppl_dense | 20.4999 | 20.5 | +0.0005% | noise |" in changes
    assert "| ppl_pruned | 24 | 25.25 | +5.2083% | |" in changes
    assert "**Parameters against `main`**: unchanged." in quality    # one line
    assert "| wanda-0.5-none | bitmask" in quality and "★" in quality
    assert "nm-int4" in quality.split("### Kernel speedup")[1]
    assert "| peak_host_mib | 1441.8 |" in machine and "| prune_seconds | 80 | 98 | +22.5000% | noise |" in machine
    assert "![Sparsity per decoder layer](https://host/layer_sparsity.png)" in machine


def test_a_stale_sweep_is_one_line_not_a_table():
    text = markdown_report(METRICS, "HEAD", {}, {}, "reports/sweep.csv is stale: 3 of its stages ...", None, {})
    assert "**Sweep**: reports/sweep.csv is stale: 3 of its stages ..." in text and "★" not in text
    assert "**Quality against `HEAD`**: unchanged." in text


@pytest.mark.slow
def test_report_diffs_metrics_and_params_against_a_git_ref(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, env=env)

    Path("dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: 'true'\n    params: [prune]\n"
                                "    metrics:\n      - metrics.json:\n          cache: false\n")
    Path("params.yaml").write_text("prune:\n  sparsity: 0.5\n")
    Path("metrics.json").write_text(json.dumps(METRICS))
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "base")
    Path("params.yaml").write_text("prune:\n  sparsity: 0.6\n")
    Path("metrics.json").write_text(json.dumps({**METRICS, "ppl_pruned": 31.5}))
    Path("bench/results").mkdir(parents=True)
    Path("bench/results/h200.json").write_text(json.dumps({"gpu": "NVIDIA H200", "rows": BENCH}))
    # not kernel timings: the CPU fallback's result and the format sizes are left out
    Path("bench/results/benchmark.json").write_text(json.dumps({"gpu": None, "rows": [{"kernel": "cpu"}]}))
    Path("bench/results/format-sizes.json").write_text(json.dumps({"rows": [{"format": "int4"}]}))

    Path("reports").mkdir()
    Path("reports/layer_sparsity.png").write_bytes(b"png")
    assert main(["report", "--against", "HEAD", "--image-base", "https://host/", "--out", "pr/comment"]) == 0
    text = squeeze(Path("pr/comment/report.md").read_text())
    metrics_diff = text.split("### Quality against `HEAD`")[1].split("###")[0]
    assert "| ppl_pruned | 25.25 | 31.5 | +24.7525% | |" in metrics_diff
    assert "ppl_dense" not in metrics_diff                      # unchanged metrics are left out
    params_diff = text.split("### Parameters against `HEAD`")[1].split("###")[0]
    assert "| prune.sparsity | 0.5 | 0.6 |" in params_diff
    assert "![Kernel speedup against batch](https://host/bench_speedup.png)" in text
    assert Path("pr/comment/bench_speedup.png").is_file() and not Path("reports/report.md").exists()
    assert Path("pr/comment/layer_sparsity.png").read_bytes() == b"png"   # linked plots travel with it
    assert main(["report", "--against", "no-such-ref"]) == 0    # a bad ref is reported, not fatal
    assert "**Quality against `no-such-ref`**: `dvc metrics diff no-such-ref` failed" in \
        Path("reports/report.md").read_text()


def test_report_out_must_be_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("metrics.json").write_text(json.dumps(METRICS))
    assert main(["report", "--out", "metrics.json"]) == 2
    assert capsys.readouterr().err == "prunepipe: error: --out metrics.json: exists and is not a folder\n"


def test_the_sweep_is_stale_when_code_or_params_changed_not_when_outputs_are_missing(monkeypatch):
    from flows import report

    missing = {"sweep/dvc.yaml:point@wanda-0.5-none": [{"changed outs": {"data/sweep/wanda-0.5-none": "not in cache"}}]}
    monkeypatch.setattr(report, "_dvc", lambda *args: (missing, ""))
    assert report.sweep_staleness() is None
    changed = {**missing, "sweep/dvc.yaml:summary": [{"changed deps": {"params.yaml": {"sweep.methods": "modified"}}}],
               "sweep/dvc.yaml:point@magnitude-0.5-none": [{"changed deps": {"tasks/pruning": "modified"}}]}
    monkeypatch.setattr(report, "_dvc", lambda *args: (changed, ""))
    assert report.sweep_staleness() == (
        "reports/sweep.csv is stale: 2 of its stages have changed code or params since it ran "
        "(`dvc status sweep/dvc.yaml`), so neither it nor its plots are shown; `dvc repro sweep/dvc.yaml` "
        "makes a current one.")


def test_gptq_perplexities_take_the_measured_band_of_their_solver():
    from tasks.reports.summary import change_rows, quality_bands

    measured = {"spread": {"float32": {"relative": 0.0016}, "float64": {"relative": 0.0}}}
    diff = {"metrics.json": {"ppl_quantized": {"old": 51.1047, "new": 51.1841},     # +0.155%
                             "ppl_pruned": {"old": 43.8792, "new": 43.9}}}
    notes = lambda solver: {r["metric"]: r["note"] for r in change_rows(diff, False, quality_bands(measured, solver))}
    assert notes("float32") == {"ppl_quantized": "noise", "ppl_pruned": ""}
    # float64 gave the same codes on 1 and 2 threads: only the general floor is left
    assert quality_bands(measured, "float64") == {"ppl_quantized": 1e-4, "ppl_packed": 1e-4}
    assert notes("float64") == {"ppl_quantized": "", "ppl_pruned": ""}
    assert quality_bands({}, "float64")["ppl_packed"] == 1e-4   # no measurement: the floor
    # another machine of the same kind moved float64's figure 0.43%: that is noise too
    machines = {**measured, "between_machines": {"float64": {"relative": 0.0043}}}
    assert quality_bands(machines, "float64") == {"ppl_quantized": 0.0043, "ppl_packed": 0.0043}
    assert quality_bands(machines, "float32")["ppl_quantized"] == 0.0016
