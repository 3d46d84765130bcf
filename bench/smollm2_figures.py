"""The pruning and quantization figures of the README on the packaged SmolLM2-135M.

Runs the stage functions directly (no DVC), sharing data/model and data/calibration from
`make run`, and appends one row per setting to bench/results/smollm2-figures.json as soon as
it is measured (a partial run keeps what it finished). Perplexity: the first
`--windows` held-out windows of 512 tokens, the same windows for every row.

    .venv/bin/python bench/smollm2_figures.py [--windows 32] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from tasks.config import EvaluateConfig, PackConfig, PruneConfig, QuantizeConfig, SequentialConfig
from tasks.evaluation.perplexity import read_perplexity
from tasks.stages.common import StageContext
from tasks.stages.evaluate import evaluate_artifact
from tasks.stages.pack import pack
from tasks.stages.prune import prune as prune_stage
from tasks.stages.quantize import quantize as quantize_stage

OUT = Path("bench/results/smollm2-figures.json")
MODEL, CALIBRATION = Path("data/model"), Path("data/calibration")
GPTQ4 = {"method": "gptq", "bits": 4, "group_size": 64}

# name → (prune section, quantize section or None, pack format or None)
SETTINGS = {
    "dense": (None, None, None),
    "magnitude-50": ({"method": "magnitude", "sparsity": 0.5}, None, None),
    "wanda-50": ({"method": "wanda", "sparsity": 0.5}, None, None),
    "sparsegpt-50": ({"method": "sparsegpt", "sparsity": 0.5}, None, None),
    "sparsegpt-50+gptq4": ({"method": "sparsegpt", "sparsity": 0.5}, GPTQ4, "bitmask-int4"),
    "sparsegpt-50+gptq4-actorder": ({"method": "sparsegpt", "sparsity": 0.5}, {**GPTQ4, "act_order": True}, "bitmask-int4"),
    "admm-50+gptq4-actorder": ({"method": "admm", "sparsity": 0.5}, {**GPTQ4, "act_order": True}, "bitmask-int4"),
    "sparsegpt-50+gptq4-joint": ({"method": "sparsegpt", "sparsity": 0.5}, {**GPTQ4, "joint": True}, "bitmask-int4"),
    "sparsegpt-50+gptq4-joint-actorder": ({"method": "sparsegpt", "sparsity": 0.5}, {**GPTQ4, "joint": True, "act_order": True},
                                          "bitmask-int4"),
    "magnitude-2:4": ({"method": "magnitude", "sparsity": "2:4"}, None, None),
    "wanda-2:4": ({"method": "wanda", "sparsity": "2:4"}, None, None),
    "sparsegpt-2:4": ({"method": "sparsegpt", "sparsity": "2:4"}, None, None),
    "sparsegpt-2:4+gptq4": ({"method": "sparsegpt", "sparsity": "2:4"}, GPTQ4, "nm-int4"),
    "sparsegpt-wandamask-50": ({"method": "sparsegpt", "sparsity": 0.5, "sparsegpt": {"mask": "wanda"}}, None, None),
    "sparsegpt-rowmask-50": ({"method": "sparsegpt", "sparsity": 0.5, "sparsegpt": {"mask": "obs-row"}}, None, None),
    "sparsegpt-rowmask-owl-50": ({"method": "sparsegpt", "sparsity": 0.5, "sparsegpt": {"mask": "obs-row"},
                                  "owl": {"enabled": True}}, None, None),
    "admm-50": ({"method": "admm", "sparsity": 0.5}, None, None),
    "admm-owl-50": ({"method": "admm", "sparsity": 0.5, "owl": {"enabled": True}}, None, None),
    "admm-2:4": ({"method": "admm", "sparsity": "2:4"}, None, None),
    "admm-60": ({"method": "admm", "sparsity": 0.6}, None, None),
    "admm-70": ({"method": "admm", "sparsity": 0.7}, None, None),
    "wanda-owl-50": ({"method": "wanda", "sparsity": 0.5, "owl": {"enabled": True}}, None, None),
    "sparsegpt-owl-50": ({"method": "sparsegpt", "sparsity": 0.5, "owl": {"enabled": True}}, None, None),
    "wanda-60": ({"method": "wanda", "sparsity": 0.6}, None, None),
    "wanda-owl-60": ({"method": "wanda", "sparsity": 0.6, "owl": {"enabled": True}}, None, None),
    "sparsegpt-60": ({"method": "sparsegpt", "sparsity": 0.6}, None, None),
    "sparsegpt-owl-60": ({"method": "sparsegpt", "sparsity": 0.6, "owl": {"enabled": True}}, None, None),
    "wanda-70": ({"method": "wanda", "sparsity": 0.7}, None, None),
    "wanda-owl-70": ({"method": "wanda", "sparsity": 0.7, "owl": {"enabled": True}}, None, None),
    "sparsegpt-70": ({"method": "sparsegpt", "sparsity": 0.7}, None, None),
    "sparsegpt-owl-70": ({"method": "sparsegpt", "sparsity": 0.7, "owl": {"enabled": True}}, None, None),
    # OWL's m and lam tried for this model (the paper's 5 and 0.08 were chosen on LLaMA-7B)
    "wanda-owl-m10-60": ({"method": "wanda", "sparsity": 0.6, "owl": {"enabled": True, "m": 10.0}}, None, None),
    "wanda-owl-lam0.04-60": ({"method": "wanda", "sparsity": 0.6, "owl": {"enabled": True, "lam": 0.04}}, None, None),
    "wanda-owl-m10-lam0.04-60": ({"method": "wanda", "sparsity": 0.6, "owl": {"enabled": True, "m": 10.0, "lam": 0.04}},
                                 None, None),
    "wanda-owl-m10-50": ({"method": "wanda", "sparsity": 0.5, "owl": {"enabled": True, "m": 10.0}}, None, None),
    "sparsegpt-owl-m10-50": ({"method": "sparsegpt", "sparsity": 0.5, "owl": {"enabled": True, "m": 10.0}}, None, None),
    "wanda-owl-m10-70": ({"method": "wanda", "sparsity": 0.7, "owl": {"enabled": True, "m": 10.0}}, None, None),
    "sparsegpt-owl-m10-60": ({"method": "sparsegpt", "sparsity": 0.6, "owl": {"enabled": True, "m": 10.0}}, None, None),
    "sparsegpt-owl-m10-70": ({"method": "sparsegpt", "sparsity": 0.7, "owl": {"enabled": True, "m": 10.0}}, None, None),
}


def measure(name: str, prune, quantize, fmt, evaluate: EvaluateConfig, work: Path) -> dict:
    ctx, seq = StageContext(print), SequentialConfig()
    row: dict = {"name": name}
    if prune is None:
        model = MODEL
    else:
        cfg = PruneConfig(**prune)
        stats = work / "prune_run.json"
        began = time.perf_counter()
        model = prune_stage(cfg, seq, model=MODEL, calibration=CALIBRATION, out=work / "pruned", run_stats=stats,
                            ctx=ctx)
        row["prune_seconds"] = round(time.perf_counter() - began, 1)
        row["solve_seconds_per_layer"] = json.loads(stats.read_text())["solve_seconds_per_layer"]
        if quantize is not None:
            qcfg = QuantizeConfig(**quantize)
            began = time.perf_counter()
            quantized = quantize_stage(qcfg, seq, cfg, model=MODEL, pruned=model, calibration=CALIBRATION,
                                       out=work / "quantized", run_stats=work / "quantize_run.json", ctx=ctx)
            row["quantize_seconds"] = round(time.perf_counter() - began, 1)
            packed = pack(PackConfig(format=fmt), quantized=quantized, out=work / "packed", ctx=ctx)
            row["bytes_per_weight"] = json.loads((packed / "metadata.json").read_text())["bytes_per_weight"]
            model = quantized
    out = evaluate_artifact(evaluate, model=model, out=work / "eval", ctx=ctx)
    row["ppl"] = round(read_perplexity(out), 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=32)   # evaluate.max_windows of params.yaml
    parser.add_argument("--only", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    evaluate = EvaluateConfig(max_windows=args.windows)
    done = json.loads(OUT.read_text()) if OUT.is_file() else {"machine": platform.processor() or platform.machine(),
                                                             "eval_windows": args.windows, "rows": []}
    finished = {row["name"] for row in done["rows"]}
    for name in args.only:
        if name in finished:
            continue
        with tempfile.TemporaryDirectory(dir="data") as work:
            row = measure(name, *SETTINGS[name], evaluate, Path(work))
        print(json.dumps(row))
        done["rows"].append(row)
        OUT.write_text(json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    main()
