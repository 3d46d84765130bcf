"""The stage graph, declared once. For each stage: its function, the params.yaml sections it
reads (passed positionally, in this order), its input artifacts and its outputs (passed as
keywords), and its code: the folders and files whose change reruns it. dvc.yaml
(`prunepipe dvc-yaml`), the stage flows, the `compress` flow and the sweep are derived from
this table; tests/test_graph.py fails when dvc.yaml drifts from it or a stage imports a
module its code does not cover.

The cache key of a run (the `compress` flow's, recorded in every artifact) is derived from
the same declaration: the stage's config sections by name, its inputs' digests by name, and
the digest of its code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tasks.io.artifacts import METADATA, ArtifactError, file_sha256, read_metadata

ROOT = Path(__file__).resolve().parents[2]   # the folder holding tasks/ and kernels/


@dataclass(frozen=True)
class Output:
    path: Path
    cache: bool = True     # False: a small file kept in git (a metric, a table, a plot)
    kind: str = "outs"     # "outs", "metrics" or "plots": where dvc.yaml lists it
    plot: dict = field(default_factory=dict)   # DVC plot properties


@dataclass(frozen=True)
class Stage:
    name: str
    function: str                    # "module:function"
    params: tuple[str, ...]
    inputs: dict[str, Path]
    outputs: dict[str, Output]
    code: tuple[str, ...]            # what its own function imports; code_deps() adds the upstream stages'

    def load(self) -> Callable:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


def _code(stage_module: str, *folders: str) -> tuple[str, ...]:
    return (f"tasks/stages/{stage_module}.py", "tasks/stages/common.py", "tasks/errors.py", "tasks/io", *folders)


DATA, REPORTS = Path("data"), Path("reports")
MODEL, CALIBRATION, PRUNED = DATA / "model", DATA / "calibration", DATA / "pruned"
QUANTIZED, PACKED, EVAL_DENSE = DATA / "quantized", DATA / "packed", DATA / "eval_dense"
PRUNE_RUN, QUANTIZE_RUN = REPORTS / "prune_run.json", REPORTS / "quantize_run.json"
METRICS = Path("metrics.json")
SPARSITY_CSV, SPARSITY_PNG = REPORTS / "layer_sparsity.csv", REPORTS / "layer_sparsity.png"
BENCH_JSON, SPEEDUP_PNG = Path("bench/results/benchmark.json"), Path("bench/results/speedup.png")

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("model", "tasks.stages.model:model", ("model",), {}, {"out": Output(MODEL)}, _code("model")),
    Stage("calibrate", "tasks.stages.calibrate:calibrate", ("calibration",), {"model": MODEL},
          {"out": Output(CALIBRATION)}, _code("calibrate", "tasks/text")),
    Stage("evaluate_dense", "tasks.stages.evaluate_dense:evaluate_dense", ("evaluate",), {"model": MODEL},
          {"out": Output(EVAL_DENSE)}, _code("evaluate_dense", "tasks/text", "tasks/evaluation")),
    Stage("prune", "tasks.stages.prune:prune", ("prune", "sequential"), {"model": MODEL, "calibration": CALIBRATION},
          {"out": Output(PRUNED), "run_stats": Output(PRUNE_RUN, cache=False, kind="metrics")},
          _code("prune", "tasks/stages/calibrate.py", "tasks/text", "tasks/engine", "tasks/pruning")),
    Stage("quantize", "tasks.stages.quantize:quantize", ("quantize", "sequential", "prune"),
          {"model": MODEL, "pruned": PRUNED, "calibration": CALIBRATION},
          {"out": Output(QUANTIZED), "run_stats": Output(QUANTIZE_RUN, cache=False, kind="metrics")},
          _code("quantize", "tasks/stages/calibrate.py", "tasks/text", "tasks/engine", "tasks/pruning",
                "tasks/quantization")),
    Stage("pack", "tasks.stages.pack:pack", ("pack",), {"quantized": QUANTIZED}, {"out": Output(PACKED)},
          _code("pack", "tasks/engine", "tasks/formats", "tasks/quantization")),
    Stage("evaluate", "tasks.stages.evaluate:evaluate", ("evaluate",),
          {"pruned": PRUNED, "quantized": QUANTIZED, "packed": PACKED, "eval_dense": EVAL_DENSE,
           "prune_run": PRUNE_RUN},
          {"eval_pruned": Output(DATA / "eval_pruned"), "eval_quantized": Output(DATA / "eval_quantized"),
           "eval_packed": Output(DATA / "eval_packed"), "sparsity_png": Output(SPARSITY_PNG, cache=False),
           "metrics": Output(METRICS, cache=False, kind="metrics"),
           "sparsity_csv": Output(SPARSITY_CSV, cache=False, kind="plots", plot={
               "x": "layer", "title": "Sparsity per decoder layer", "x_label": "decoder layer",
               "y_label": "sparsity"})},
          _code("evaluate", "tasks/text", "tasks/evaluation", "tasks/formats", "tasks/serving", "tasks/quantization",
                "kernels")),
    Stage("benchmark", "tasks.stages.benchmark:benchmark", ("benchmark",), {"packed": PACKED},
          {"results": Output(BENCH_JSON, cache=False), "plot": Output(SPEEDUP_PNG, cache=False)},
          _code("benchmark", "tasks/engine", "tasks/formats", "tasks/serving", "tasks/pruning", "tasks/quantization",
                "tasks/reports", "kernels")),
)}

# The `compress` flow's chain: every stage but the benchmark, whose numbers describe the
# machine, not the model.
COMPRESS = tuple(name for name in STAGES if name != "benchmark")

# ---------------------------------------------------------------- the sweep (sweep/dvc.yaml)
# A point runs prune → evaluate (pruned) → [quantize] → pack → [evaluate (packed)] on the root
# pipeline's model, calibration and dense perplexity; tasks/stages/sweep.py builds its Params.
# The perplexity of one model artifact (Hugging Face folder or packed), as the evaluate stage
# measures each of its three models.
PERPLEXITY = Stage("perplexity", "tasks.stages.evaluate:evaluate_artifact", ("evaluate",), {"model": PRUNED},
                   {"out": Output(DATA / "eval_pruned")}, STAGES["evaluate"].code)
SWEEP_SHARED = ("model", "calibrate", "evaluate_dense")   # run once, before the points
SWEEP_POINT_STAGES = ("prune", "quantize", "pack", "evaluate")
SWEEP_POINT_INPUTS = (MODEL, CALIBRATION, EVAL_DENSE)
SWEEP_DATA, RESULTS = DATA / "sweep", Path("results/sweep")
SWEEP_CSV = REPORTS / "sweep.csv"
SWEEP_SPARSITY_PNG, SWEEP_PARETO_PNG = REPORTS / "sweep_sparsity.png", REPORTS / "sweep_pareto.png"
SWEEP_POINT_PARAMS = ("prune.ignore", "prune.device", "prune.sparsegpt", "prune.admm", "prune.owl", "sequential",
                      "quantize.act_order", "quantize.blocksize", "quantize.percdamp", "quantize.device",
                      "pack.dtype", "evaluate")


def sweep_point_code() -> tuple[str, ...]:
    code = [path for name in SWEEP_POINT_STAGES for path in code_deps(STAGES[name])]
    return tuple(dict.fromkeys([*code, "tasks/stages/sweep.py", "tasks/config.py"]))


def producers(stage: Stage) -> list[Stage]:
    """The stages whose outputs `stage` reads."""
    return [other for other in STAGES.values() if {o.path for o in other.outputs.values()} & set(stage.inputs.values())]


def code_deps(stage: Stage) -> tuple[str, ...]:
    """The stage's code and that of every stage upstream of it: a change to a module reruns each
    stage that imports it and, at once, every stage downstream (`dvc status` lists them all)."""
    code = [*stage.code, *(path for producer in producers(stage) for path in code_deps(producer))]
    return tuple(dict.fromkeys(code))


# ---------------------------------------------------------------- cache keys


def code_digest(paths: tuple[str, ...]) -> str:
    """sha256 over the Python files under `paths` (folders or files, relative to ROOT)."""
    digest = hashlib.sha256()
    for entry in paths:
        root = ROOT / entry
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def input_digest(path: Path) -> str:
    """An artifact's digest (its metadata lists every file's sha256), or a plain file's."""
    path = Path(path)
    return file_sha256(path / METADATA if path.is_dir() else path)


def stage_key(stage: Stage, configs: dict, inputs: dict[str, Path]) -> str:
    """Cache key of a run: config sections by name (pydantic models), input digests by name, code."""
    payload = json.dumps({"stage": stage.name,
                          "config": {name: cfg.model_dump(mode="json") for name, cfg in configs.items()},
                          "inputs": {name: input_digest(path) for name, path in inputs.items()},
                          "code": code_digest(code_deps(stage))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def outputs_match(paths: list[Path], key: str) -> bool:
    """True when every path is a complete artifact written for exactly this key, files intact
    (a plain file, such as metrics.json, only needs to exist)."""
    for path in map(Path, paths):
        if not path.is_dir():
            if not path.is_file():
                return False
            continue
        try:
            meta = json.loads((path / METADATA).read_text())
            if meta.get("key") != key or not read_metadata(path, meta["kind"], meta["version"]):
                return False
        except (OSError, ValueError, KeyError, ArtifactError):
            return False
    return True
