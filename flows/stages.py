"""One Prefect flow per pipeline stage, each a thin shell around a tasks.pipeline function.

Under `dvc repro` DVC owns caching between stages, so the stage flows run their task with
caching off. The same tasks carry a cache key for the `compress` flow (flows/compress.py):
config section + input artifact digests + code digest; `cached_call` makes a hit stand
only while the output artifact exists, written for that key, with intact files.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import BaseModel
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from tqdm.auto import tqdm

from flows.benchmark import benchmark_flow
from tasks import pipeline
from tasks.config import Params
from tasks.reports.metrics import build_metrics, layer_table, plot_layer_sparsity

DATA = Path("data")
MODEL, CALIBRATION, PRUNED = DATA / "model", DATA / "calibration", DATA / "pruned"
QUANTIZED, PACKED = DATA / "quantized", DATA / "packed"
EVAL_DENSE, EVAL_PRUNED = DATA / "eval_dense", DATA / "eval_pruned"
EVAL_QUANTIZED, EVAL_PACKED = DATA / "eval_quantized", DATA / "eval_packed"
METRICS = Path("metrics.json")
REPORTS = Path("reports")
SPARSITY_CSV, SPARSITY_PNG = REPORTS / "layer_sparsity.csv", REPORTS / "layer_sparsity.png"
PRUNE_RUN, QUANTIZE_RUN = REPORTS / "prune_run.json", REPORTS / "quantize_run.json"


def _stage_key(parameters: dict) -> str:
    configs = {k: v for k, v in parameters.items() if isinstance(v, BaseModel)}
    inputs = [Path(v) for k, v in parameters.items() if k.endswith("_dir")]
    return pipeline.stage_key(configs, inputs)


def cached_call(stage, **parameters) -> str:
    """Run a stage task under its cache; a hit stands only while its output is intact.

    Prefect has no "the cached result's files are gone" test, so the caller refreshes the
    cache entry whenever the output artifact is missing, altered or made for another key.
    """
    intact = pipeline.output_matches(Path(parameters["out"]), _stage_key(parameters))
    policy = CacheKeyFnPolicy(cache_key_fn=lambda context, inputs: _stage_key(inputs))
    return stage.with_options(cache_policy=policy, persist_result=True, refresh_cache=not intact)(**parameters)


def _progress(total: int, label: str):
    bar = tqdm(total=total, desc=label, unit="step", dynamic_ncols=True)
    return lambda: (bar.update(), bar.close() if bar.n >= total else None)


def _log(message: str) -> None:
    get_run_logger().info(message)


stage_task = task(cache_policy=NO_CACHE, persist_result=False)   # DVC's default; see cached_call


@stage_task
def model_task(cfg, out: str) -> str:
    return str(pipeline.build_model(cfg, Path(out), _log))


@stage_task
def calibrate_task(cfg, model_dir: str, out: str) -> str:
    return str(pipeline.calibrate(cfg, Path(model_dir), Path(out), _log))


@stage_task
def prune_task(cfg, model_dir: str, calibration_dir: str, out: str, run_stats: str = str(PRUNE_RUN)) -> str:
    return str(pipeline.prune(cfg, Path(model_dir), Path(calibration_dir), Path(out), _log, _progress,
                              Path(run_stats)))


@stage_task
def quantize_task(cfg, prune_cfg, model_dir: str, pruned_dir: str, calibration_dir: str, out: str,
                  run_stats: str = str(QUANTIZE_RUN)) -> str:
    return str(pipeline.quantize(cfg, prune_cfg, Path(model_dir), Path(pruned_dir), Path(calibration_dir),
                                 Path(out), _log, _progress, Path(run_stats)))


@stage_task
def pack_task(cfg, quantize_cfg, prune_cfg, quantized_dir: str, out: str) -> str:
    return str(pipeline.pack(cfg, quantize_cfg, prune_cfg, Path(quantized_dir), Path(out), _log))


@stage_task
def evaluate_task(cfg, model_dir: str, out: str) -> str:
    return str(pipeline.evaluate_model(cfg, Path(model_dir), Path(out), _log, _progress))


@task
def report_task(pruned_dir: str, quantized_dir: str, packed_dir: str, evals: dict[str, str]) -> dict:
    """metrics.json plus the per-layer sparsity table and plot (small files kept in git).
    evals: "dense", "pruned", "quantized", "packed" → perplexity artifact."""
    records = json.loads((Path(quantized_dir) / "layers.json").read_text())
    meta = json.loads((Path(pruned_dir) / "metadata.json").read_text())
    packed = json.loads((Path(packed_dir) / "metadata.json").read_text())
    ppl = {name: pipeline.read_perplexity(Path(path)) for name, path in evals.items()}
    metrics = build_metrics(ppl, json.loads(PRUNE_RUN.read_text()), packed, records)
    REPORTS.mkdir(exist_ok=True)
    table = layer_table(records)
    table.to_csv(SPARSITY_CSV, index=False)
    cfg = meta["config"]
    plot_layer_sparsity(table, SPARSITY_PNG, f"{cfg['method']} at {cfg['sparsity']}")
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    get_run_logger().info(json.dumps(metrics))
    return metrics


@flow(name="model")
def model_flow(params: Params) -> str:
    return model_task(params.model, str(MODEL))


@flow(name="calibrate")
def calibrate_flow(params: Params) -> str:
    return calibrate_task(params.calibration, str(MODEL), str(CALIBRATION))


@flow(name="prune")
def prune_flow(params: Params) -> str:
    return prune_task(params.prune, str(MODEL), str(CALIBRATION), str(PRUNED))


@flow(name="evaluate-dense")
def evaluate_dense_flow(params: Params) -> str:
    return evaluate_task(params.evaluate, str(MODEL), str(EVAL_DENSE))


@flow(name="quantize")
def quantize_flow(params: Params) -> str:
    return quantize_task(params.quantize, params.prune, str(MODEL), str(PRUNED), str(CALIBRATION),
                                   str(QUANTIZED))


@flow(name="pack")
def pack_flow(params: Params) -> str:
    return pack_task(params.pack, params.quantize, params.prune, str(QUANTIZED), str(PACKED))


@flow(name="evaluate")
def evaluate_flow(params: Params) -> dict:
    evals = {"dense": str(EVAL_DENSE)}
    for name, model, out in (("pruned", PRUNED, EVAL_PRUNED), ("quantized", QUANTIZED, EVAL_QUANTIZED),
                             ("packed", PACKED, EVAL_PACKED)):
        evals[name] = evaluate_task(params.evaluate, str(model), str(out))
    return report_task(str(PRUNED), str(QUANTIZED), str(PACKED), evals)


STAGES = {"model": model_flow, "calibrate": calibrate_flow, "prune": prune_flow,
          "quantize": quantize_flow, "pack": pack_flow,
          "evaluate_dense": evaluate_dense_flow, "evaluate": evaluate_flow, "benchmark": benchmark_flow}
