"""Stage `prune`: the dense model and the calibration windows → data/pruned/ (a Hugging Face
folder with layers.json, the per-Linear report), and the run's seconds and peak memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.engine.memory import check_memory, sequential_estimate
from tasks.io.artifacts import artifact_digest
from tasks.stages.calibrate import load_calibration
from tasks.io.model import load_model_dir, save_model
from tasks.pruning.pruners import NEEDS_HESSIAN, check_prunable, prune_model
from tasks.stages.common import StageContext, layer_records, seconds_per_layer, write_run_stats

if TYPE_CHECKING:
    from tasks.config import PruneConfig, SequentialConfig


def write_layers(records: list[dict]):
    return lambda tmp: (tmp / "layers.json").write_text(json.dumps(records, indent=1) + "\n")


def prune(cfg: PruneConfig, seq: SequentialConfig, *, model: Path, calibration: Path, out: Path,
          run_stats: Path, ctx: StageContext) -> Path:
    tokens = load_calibration(calibration)
    need = sequential_estimate(model, *tokens.shape, seq.batch_size, cfg.device, seq.offload_activations,
                               cfg.method in NEEDS_HESSIAN)
    check_memory(need, cfg.device, f"prune ({cfg.method})")
    loaded, tokenizer, _ = load_model_dir(model)
    check_prunable(loaded, cfg, ctx.log)
    report = prune_model(loaded, tokens, cfg, seq, ctx.log, ctx.progress)
    records = layer_records(report.records)
    meta = {"config": cfg.model_dump(mode="json"), "key": ctx.key,
            "inputs": {"model": artifact_digest(model), "calibration": artifact_digest(calibration)}}
    write_run_stats(run_stats, {"prune_seconds": report.seconds, "peak_device_bytes": report.peak_device_bytes,
                                "solve_seconds_per_layer": seconds_per_layer(report.records)})
    ctx.log(f"pruned {len(records)} Linear layers in {report.seconds:.1f} s")
    return save_model(loaded, tokenizer, out, meta, write_layers(records))
