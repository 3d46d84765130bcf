"""The sweep: points from params.yaml's `sweep` section and the names DVC's matrix gives
them, bad combinations stopped before any work, the summary table and plots, the `sweep`
flow one point at a time and on a local Dask cluster (same metrics), and
`dvc repro sweep/dvc.yaml` sharing the root pipeline's model, calibration and dense eval."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import dvc_workspace
from flows.cli import main
from flows.params import ParamsError, load_params, parse_params
from tasks.config import Params
from tasks.reports.summary import pareto_front, plot_pareto, plot_ppl_vs_sparsity, sweep_table
from tasks.stages.sweep import sweep_points
from test_flows import tiny_params

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("prune_seconds", "seconds")
GPTQ4 = {"method": "gptq", "bits": 4, "group_size": 32}


def full_params(llama_folder: Path, corpus_file: Path, **sweep) -> dict:
    """tiny_params with a sweep (no second grid and no dense points unless given), every key
    spelled out: DVC tracks sub-keys such as prune.sparsegpt, and only keys present in params.yaml."""
    sweep = {"quantized": {"methods": []}, "dense": [], **sweep}
    return parse_params({**tiny_params(llama_folder, corpus_file), "sweep": sweep}).model_dump(mode="json")


def test_points_are_the_grids_in_matrix_order():
    params = Params.model_validate({"quantize": {"group_size": 64, "symmetric": True},
                                    "sweep": {"methods": ["wanda", "sparsegpt"], "sparsities": [0.6, "2of4"],
                                              "quantize": ["none", "gptq4"],
                                              "quantized": {"methods": ["admm"], "sparsities": [0.5, "2of4"],
                                                            "quantize": ["gptq2"]},
                                              "dense": ["gptq2", "gptq4"],
                                              "quantizers": {"none": {}, "gptq4": GPTQ4,
                                                             "gptq2": {**GPTQ4, "bits": 2}}}})
    points = sweep_points(params)
    assert list(points)[:4] == ["wanda-0.6-none", "wanda-0.6-gptq4", "wanda-2of4-none", "wanda-2of4-gptq4"]
    assert list(points)[8:] == ["admm-0.5-gptq2", "admm-2of4-gptq2", "dense-gptq2", "dense-gptq4"]
    formats = {name: (p.params.prune.method, p.params.prune.sparsity, p.params.quantize.method,
                      p.params.quantize.bits, p.params.pack.format)
               for name, p in points.items() if not name.startswith("wanda")}
    assert formats == {"sparsegpt-0.6-none": ("sparsegpt", 0.6, "none", 4, "bitmask"),
                       "sparsegpt-0.6-gptq4": ("sparsegpt", 0.6, "gptq", 4, "bitmask-int4"),
                       "sparsegpt-2of4-none": ("sparsegpt", "2:4", "none", 4, "nm"),
                       "sparsegpt-2of4-gptq4": ("sparsegpt", "2:4", "gptq", 4, "nm-int4"),
                       "admm-0.5-gptq2": ("admm", 0.5, "gptq", 2, "bitmask-int4"),
                       "admm-2of4-gptq2": ("admm", "2:4", "gptq", 2, "nm-int4"),
                       # nothing pruned: plain int4 codes, 2-bit ones too (no denser format)
                       "dense-gptq2": ("none", 0.0, "gptq", 2, "int4"),
                       "dense-gptq4": ("none", 0.0, "gptq", 4, "int4")}
    # the quantizer's entry sets bits, groups and symmetry; everything else comes from the main sections
    assert points["wanda-0.6-none"].params.evaluate == params.evaluate
    quantize = points["wanda-0.6-gptq4"].params.quantize
    assert (quantize.group_size, quantize.symmetric, quantize.blocksize) == (32, False, params.quantize.blocksize)


def test_dvc_matrix_names_and_params_match_the_points(tmp_path):
    """sweep/dvc.yaml's stages are the points of the committed params.yaml, and every key
    they track is spelled out there (DVC refuses a missing one)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    shutil.copy(ROOT / "params.yaml", tmp_path)
    (tmp_path / "sweep").mkdir()
    shutil.copy(ROOT / "sweep" / "dvc.yaml", tmp_path / "sweep")
    Repo.init(tmp_path, no_scm=True)
    stages = [s for s in Repo(tmp_path).index.stages if s.name != "summary"]
    assert [s.name.partition("@")[2] for s in stages] == list(sweep_points(load_params(tmp_path / "params.yaml")))
    assert {s.name.partition("@")[0] for s in stages} == {"point", "quantized", "dense"}
    data = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for dep in (d for s in stages for d in s.deps if isinstance(d, ParamsDependency)):
        for key in dep.params:
            node = data
            for part in key.split("."):
                node = node[part]   # KeyError names a key missing from params.yaml


@pytest.mark.parametrize("sweep,expected", [
    ({"sparsities": ["2:4"]}, "sweep.sparsities = ['2:4']: write N:M as NofM here (the entry names files), e.g. '2of4'"),
    ({"sparsities": [0.5, 1.5]}, "sweep.sparsities = [0.5, 1.5]: sparsity must be a fraction in [0, 1)"),
    ({"quantize": ["gptq8"]}, "sweep.quantize names ['gptq8'] missing from sweep.quantizers"),
    ({"methods": ["obs"]}, "sweep.methods.0 = 'obs': Input should be 'none', 'magnitude', 'wanda', 'sparsegpt' or 'admm'"),
    ({"quantizers": {"a b": {}}}, "names ['a b'] must use only letters, digits"),
    ({"dense": ["gptq5"]}, "sweep.dense names ['gptq5'] missing from sweep.quantizers"),
    ({"dense": ["none"]}, "sweep.dense names ['none'], which quantize nothing"),
    ({"quantized": {"methods": ["wanda"], "sparsities": [0.5], "quantize": ["none"]}},
     "points ['wanda-0.5-none'] are in both the sweep's own grid and sweep.quantized"),
    ({"methods": [], "quantized": {"methods": []}, "dense": []}, "the sweep has no points"),
])
def test_bad_sweep_names_key_value_and_allowed(sweep, expected):
    with pytest.raises(ParamsError) as err:
        parse_params({"sweep": sweep})
    assert expected in str(err.value)


def test_bad_combination_names_the_point_and_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = {"methods": ["wanda"], "sparsities": ["2of4", 0.5], "quantize": ["nm4"], "quantized": {"methods": []},
             "dense": [], "quantizers": {"nm4": {"method": "rtn", "format": "nm-int4"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sweep": sweep}))
    assert main(["sweep"]) == 2
    err = capsys.readouterr().err
    assert "sweep point 'wanda-0.5-nm4'" in err and "needs an N:M prune.sparsity" in err
    assert main(["sweep", "--point", "wanda-0.9-nm4"]) == 2
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_pareto_front():
    #            small+bad  mid        large+good  dominated  duplicate of mid
    cost, loss = [0.4, 0.6, 1.1, 1.2, 0.6], [30.0, 20.0, 15.0, 25.0, 20.0]
    assert pareto_front(cost, loss) == [True, True, True, False, True]


def test_summary_table_and_plots(tmp_path):
    rows = [{"name": f"{m}-{p}-none", "method": m, "pattern": p, "target": t, "quantize": "none", "format": "bitmask",
             "ppl_dense": 10.0, "ppl": ppl, "bytes_per_weight": b, "sparsity": t}
            for m, p, t, ppl, b in [("wanda", "0.5", 0.5, 12.0, 1.13), ("wanda", "0.7", 0.7, 30.0, 0.73),
                                    ("magnitude", "0.5", 0.5, 14.0, 1.13), ("magnitude", "2:4", 0.5, 16.0, 1.125)]]
    table = sweep_table(rows)
    assert table["pareto"].tolist() == [True, True, False, True]
    plot_ppl_vs_sparsity(table, tmp_path / "sparsity.png")
    plot_pareto(table, tmp_path / "pareto.png")
    assert (tmp_path / "sparsity.png").stat().st_size > 0 and (tmp_path / "pareto.png").stat().st_size > 0


def _sweep_in(directory: Path, monkeypatch, params: Params, runner) -> list[dict]:
    from flows.sweep import sweep

    directory.mkdir()
    monkeypatch.chdir(directory)
    return sweep.with_options(task_runner=runner)(params)


def _without_timings(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in results]


@pytest.mark.slow
def test_sweep_flow_on_a_dask_cluster_matches_the_sequential_run(tmp_path, monkeypatch, llama_folder, corpus_file):
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep_runner

    params = Params.model_validate(full_params(llama_folder, corpus_file, methods=["magnitude", "wanda"],
                                               sparsities=[0.5, "2of4"], quantize=["none", "gptq4"],
                                               quantizers={"none": {}, "gptq4": GPTQ4}))
    # The same intra-op threads as each of the 2 Dask workers: GPTQ's float sums, and so a few
    # rounded codes, depend on how many threads add them up.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        with prefect_test_harness(server_startup_timeout=180):   # a busy 2-core CI machine
            sequential = _sweep_in(tmp_path / "sequential", monkeypatch, params, sweep_runner(1))
            fanned_out = _sweep_in(tmp_path / "dask", monkeypatch, params, sweep_runner(2))   # 2 processes
    finally:
        torch.set_num_threads(threads)
    assert [r["name"] for r in fanned_out] == list(sweep_points(params))
    assert _without_timings(fanned_out) == _without_timings(sequential)
    wanda = {r["name"]: r for r in fanned_out if r["method"] == "wanda"}
    assert wanda["wanda-2of4-gptq4"]["format"] == "nm-int4" and wanda["wanda-2of4-none"]["ppl_packed"] is None
    assert wanda["wanda-0.5-gptq4"]["bytes_per_weight"] < wanda["wanda-0.5-none"]["bytes_per_weight"]
    # each point wrote only its own directory and result; the shared artifacts exist once
    assert sorted(p.name for p in Path("data/sweep").iterdir()) == sorted(r["name"] for r in fanned_out)
    assert sorted(p.name for p in Path("data").iterdir()) == ["calibration", "eval_dense", "model", "sweep"]
    assert json.loads(Path("results/sweep/wanda-0.5-none.json").read_text()) == wanda["wanda-0.5-none"]
    assert len(Path("reports/sweep.csv").read_text().splitlines()) == 1 + len(fanned_out)
    assert Path("reports/sweep_pareto.png").is_file() and Path("reports/sweep_sparsity.png").is_file()


@pytest.mark.slow
def test_dvc_repro_sweep_shares_the_root_stages(tmp_path, llama_folder, corpus_file):
    params = full_params(llama_folder, corpus_file, methods=["wanda"], sparsities=[0.5],
                         quantize=["none", "gptq4"], quantizers={"none": {}, "gptq4": GPTQ4}, dense=["gptq4"])
    run = dvc_workspace(tmp_path, ("dvc.yaml", "tasks", "kernels", "sweep/dvc.yaml"), params)
    first = run("dvc", "repro", "sweep/dvc.yaml")
    ran = {line.split("'")[1] for line in first.splitlines() if line.startswith("Running stage")}
    assert ran == {"model", "calibrate", "evaluate_dense", "sweep/dvc.yaml:point@wanda-0.5-none",
                   "sweep/dvc.yaml:point@wanda-0.5-gptq4", "sweep/dvc.yaml:dense@dense-gptq4", "sweep/dvc.yaml:summary"}
    results = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results" / "sweep").glob("*.json")}
    assert set(results) == {"wanda-0.5-none", "wanda-0.5-gptq4", "dense-gptq4"}
    assert results["wanda-0.5-gptq4"]["ppl_packed"] > 0 and results["wanda-0.5-none"]["format"] == "bitmask"
    dense = results["dense-gptq4"]   # quantized alone: nothing pruned, the dense perplexity not measured twice
    assert (dense["method"], dense["format"], dense["target"]) == ("none", "int4", 0.0)
    assert dense["ppl_pruned"] == dense["ppl_dense"] and dense["ppl_packed"] > 0
    assert dense["bytes_per_weight"] > results["wanda-0.5-gptq4"]["bytes_per_weight"]
    assert (tmp_path / "reports" / "sweep_pareto.png").is_file()
    assert "Running stage" not in run("dvc", "repro", "sweep/dvc.yaml")
    params["prune"]["sparsity"] = 0.6          # the root pipeline's own prune: no point depends on it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert "up to date" in run("dvc", "status", "sweep/dvc.yaml")
