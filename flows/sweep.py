"""The sweep (params.yaml `sweep`, tasks/stages/sweep.py) as Prefect flows.

    prunepipe sweep [--workers N | --address HOST:PORT]   `sweep`: shared stages once, then one
                                                           task per point, then the summary
    prunepipe sweep --point NAME                           one point (each DVC matrix stage)
    prunepipe sweep --summary                              table and plots (DVC's summary stage)

The model, calibration and dense perplexity are written before the fan-out and only read
after it; each point writes only data/sweep/<name>/ and results/sweep/<name>.json, both
atomically, so points finishing together never touch the same file. With one worker the
points run one after the other; with more, on a Dask cluster, each worker runs one point at
a time with its share of the CPU cores, or its own GPU (worker i of a local cluster
computes on GPU i).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.logs import DEBUG_ENV, quiet_dask, quiet_user_errors
from flows.params import ParamsError, load_params
from flows.stages import run_stage
from tasks.config import Params
from tasks.io.artifacts import ArtifactError, write_json
from tasks.evaluation.perplexity import read_perplexity
from tasks.reports.summary import plot_pareto, plot_ppl_vs_sparsity, sweep_table
from tasks.stages.graph import (EVAL_DENSE, PERPLEXITY, RESULTS, STAGES, SWEEP_CSV, SWEEP_DATA, SWEEP_PARETO_PNG,
                                SWEEP_SHARED, SWEEP_SPARSITY_PNG)
from tasks.stages.sweep import SweepPoint, point_result, sweep_points


def expand(params: Params) -> dict[str, SweepPoint]:
    try:
        return sweep_points(params)
    except ValueError as err:
        raise ParamsError(f"invalid sweep: {err}") from None


POINT_NAME = re.compile(r"[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+){1,2}")


def select(params: Params, name: str) -> SweepPoint:
    """The point `name` ("<method>-<sparsity>-<quantize>" or "dense-<quantize>"), or DVC's
    address of its stage ("sweep/dvc.yaml:point@<name>", which sweep/dvc.yaml's command passes
    from $DVC_STAGE so that no value from params.yaml is ever part of a shell command)."""
    if "@" in name:
        name = name.rpartition(":")[2].partition("@")[2]
    if not POINT_NAME.fullmatch(name):
        raise ParamsError(f"sweep point {name!r}: not a point name (<method>-<sparsity>-<quantize> or "
                          "dense-<quantize>, letters, digits, '_' and '.' between the dashes)")
    points = expand(params)
    if name not in points:
        raise ParamsError(f"no sweep point {name!r}; the sweep's points: {', '.join(points)}")
    return points[name]


def _read(directory: str, name: str = "metadata.json"):
    return json.loads((Path(directory) / name).read_text())


def _pin_gpu() -> None:
    """Worker i of a local Dask cluster computes on GPU i (modulo the GPUs there are)."""
    if not torch.cuda.is_available():
        return
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:   # not in a Dask worker
        return
    if isinstance(name, int):
        torch.cuda.set_device(name % torch.cuda.device_count())


@task(cache_policy=NO_CACHE, persist_result=False)
def point_task(point: SweepPoint, cache: bool) -> dict:
    """One point's stages into data/sweep/<name>/, then results/sweep/<name>.json.
    cache: each stage under its task cache (the `sweep` flow) or uncached (under DVC)."""
    _pin_gpu()
    if not os.environ.get(DEBUG_ENV):
        quiet_user_errors()   # on a Dask worker, its console would print Prefect's tracebacks
    start = time.perf_counter()
    p, out = point.params, SWEEP_DATA / point.name
    pruned = run_stage(STAGES["prune"], p, cache=cache,
                       outputs={"out": str(out / "pruned"), "run_stats": str(out / "prune_run.json")})["out"]
    evals = {"dense": EVAL_DENSE, "pruned": EVAL_DENSE if p.prune.method == "none" else
             run_stage(PERPLEXITY, p, inputs={"model": pruned}, outputs={"out": str(out / "eval_pruned")},
                       cache=cache)["out"]}
    # Unquantized points run quantize as `none` and pack their float weights: bytes per weight
    # for the Pareto front.
    quantized = run_stage(STAGES["quantize"], p, inputs={"pruned": pruned},
                          outputs={"out": str(out / "quantized"), "run_stats": str(out / "quantize_run.json")},
                          cache=cache)["out"]
    packed = run_stage(STAGES["pack"], p, inputs={"quantized": quantized}, outputs={"out": str(out / "packed")},
                       cache=cache)["out"]
    if point.quantized:
        evals["packed"] = run_stage(PERPLEXITY, p, inputs={"model": packed}, outputs={"out": str(out / "eval_packed")},
                                    cache=cache)["out"]
    ppl = {name: read_perplexity(Path(path)) for name, path in evals.items()}
    result = point_result(point, ppl, _read(out, "prune_run.json"), _read(packed), _read(quantized, "layers.json"),
                          time.perf_counter() - start)
    write_json(RESULTS / f"{point.name}.json", result)
    return result


@task
def summary_task(params: Params) -> list[dict]:
    """reports/sweep.csv and the two sweep plots, from the results of the current points."""
    paths = [RESULTS / f"{name}.json" for name in expand(params)]
    if missing := [str(path) for path in paths if not path.is_file()]:
        raise ArtifactError(f"no result yet for {', '.join(missing)} "
                            "(run `dvc repro sweep/dvc.yaml` or `prunepipe sweep`)")
    table = sweep_table([json.loads(path.read_text()) for path in paths])
    SWEEP_CSV.parent.mkdir(exist_ok=True)
    table.to_csv(SWEEP_CSV, index=False)
    plot_ppl_vs_sparsity(table, SWEEP_SPARSITY_PNG)
    plot_pareto(table, SWEEP_PARETO_PNG)
    return table.to_dict("records")


def sweep_runner(workers: int = 1, address: str | None = None) -> TaskRunner:
    """One point at a time in this process, or a Dask cluster: a local one of `workers`
    processes, or the one at `address` (start one worker per GPU there, e.g. dask-cuda)."""
    if address is None and workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    quiet_dask()
    if address is not None:
        return DaskTaskRunner(address=address)
    # Dask gives each worker OMP_NUM_THREADS=1; a point may use its share of the cores instead.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": {"OMP_NUM_THREADS": threads}})


@flow(name="sweep", task_runner=ThreadPoolTaskRunner(max_workers=1))
def sweep(params: Params) -> list[dict]:
    points = expand(params)
    for name in SWEEP_SHARED:
        run_stage(STAGES[name], params, cache=True)
    futures = [point_task.submit(point, True) for point in points.values()]
    results = [future.result() for future in futures]
    summary_task(params)
    return results


@flow(name="sweep-point")
def sweep_point_flow(point: SweepPoint) -> dict:
    return point_task(point, cache=False)


@flow(name="sweep-summary")
def sweep_summary_flow(params: Params) -> list[dict]:
    return summary_task(params)


@flow(name="sweep-from-params")
def sweep_from_params(params_file: str = "params.yaml", workers: int = 1, address: str | None = None,
                      overrides: dict[str, Any] | None = None) -> list[dict]:
    """Deployment entry point (prefect.yaml): read params.yaml when the run starts, with
    `overrides` ({"section.key": value}) on top."""
    params = load_params(Path(params_file), overrides)
    return sweep.with_options(task_runner=sweep_runner(workers, address))(params)
