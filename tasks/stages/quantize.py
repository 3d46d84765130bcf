"""Stage `quantize`: the pruned model (or, with `quantize.joint`, the dense one, pruned here)
and the calibration windows → data/quantized/: the fake-quantized Hugging Face folder, its
codes (tasks/quantization/artifact.py), layers.json, and in metadata.json what `pack` needs:
the quantization spec and the N:M pattern of the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.engine.memory import check_memory, sequential_estimate
from tasks.io.artifacts import artifact_digest, read_metadata
from tasks.stages.calibrate import load_calibration
from tasks.io.model import MODEL_KIND, MODEL_VERSION, load_model_dir, save_model
from tasks.pruning.patterns import NM, parse_pattern
from tasks.quantization.artifact import spec_metadata, write_codes
from tasks.quantization.gptq import spec_of
from tasks.quantization.quantizers import check_group_size, quantize_model
from tasks.stages.common import StageContext, layer_records, write_run_stats

if TYPE_CHECKING:
    from tasks.config import PruneConfig, QuantizeConfig, SequentialConfig


def quantize(cfg: QuantizeConfig, seq: SequentialConfig, prune_cfg: PruneConfig, *, model: Path, pruned: Path,
             calibration: Path, out: Path, run_stats: Path, ctx: StageContext) -> Path:
    """prune_cfg: the `prune` section, which only joint mode uses (it prunes here); otherwise the
    weights' pattern is the pruned artifact's own."""
    source = model if cfg.joint else pruned
    pattern = (prune_cfg.pattern if cfg.joint
               else parse_pattern(read_metadata(pruned, MODEL_KIND, MODEL_VERSION)["config"]["sparsity"]))
    tokens = load_calibration(calibration)
    if cfg.method == "gptq":
        check_memory(sequential_estimate(source, *tokens.shape, seq.batch_size, cfg.device, seq.offload_activations,
                                         True),
                     cfg.device, "quantize (gptq)")
    loaded, tokenizer, _ = load_model_dir(source)
    check_group_size(loaded, cfg)
    quantized, records, seconds, peak = {}, json.loads((pruned / "layers.json").read_text()), 0.0, 0
    if cfg.method != "none":
        report = quantize_model(loaded, tokens, cfg, prune_cfg, seq, ctx.log, ctx.progress)
        quantized, seconds, peak = report.quantized, report.seconds, report.peak_device_bytes
        records = layer_records(report.records) if cfg.joint else records
    section = {"quantize": cfg.model_dump(mode="json"), "sequential": seq.model_dump(mode="json")}
    if cfg.joint:
        section["prune"] = prune_cfg.model_dump(mode="json")
    inputs = {"model": model, "pruned": pruned, "calibration": calibration}
    meta = {"config": section, "key": ctx.key, "inputs": {name: artifact_digest(p) for name, p in inputs.items()},
            "spec": spec_metadata(spec_of(cfg) if quantized else None),
            "nm": [pattern.n, pattern.m] if isinstance(pattern, NM) else None}
    write_run_stats(run_stats, {"quantize_seconds": seconds, "peak_device_bytes": peak})

    def extra(tmp: Path) -> None:
        (tmp / "layers.json").write_text(json.dumps(records, indent=1) + "\n")
        write_codes(quantized, tmp)

    ctx.log(f"quantized {len(quantized)} Linear layers ({cfg.method}) in {seconds:.1f} s")
    return save_model(loaded, tokenizer, out, meta, extra)
