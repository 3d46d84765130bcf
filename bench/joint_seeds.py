"""Joint SparseGPT + GPTQ against prune-then-quantize, over calibration seeds (SmolLM2-135M).

One calibration set per seed (32 × 512 tokens of the packaged corpus), one SparseGPT 50% prune
shared by the sequential settings, then 4-bit GPTQ g64: min/max in column order, act-order,
and joint (SparseGPT + GPTQ in one pass from the dense model) in column order and act-order. Perplexity on
the first `--windows` held-out windows. Rows go to bench/results/smollm2-joint-seeds.json as
they finish; settings already there are skipped.

    .venv/bin/python bench/joint_seeds.py [--seeds 1 2] [--windows 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

from tasks import pipeline
from tasks.config import CalibrationConfig, EvaluateConfig, PruneConfig, QuantizeConfig

OUT = Path("bench/results/smollm2-joint-seeds.json")
MODEL = Path("data/model")
GPTQ4 = {"method": "gptq", "bits": 4, "group_size": 64}
QUANTIZERS = {"gptq4": {**GPTQ4, "act_order": False}, "gptq4-actorder": {**GPTQ4, "act_order": True},
              "gptq4-joint": {**GPTQ4, "act_order": False, "joint": True},
              "gptq4-joint-actorder": {**GPTQ4, "act_order": True, "joint": True}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--windows", type=int, default=32)
    args = parser.parse_args()
    evaluate = EvaluateConfig(max_windows=args.windows)
    prune_cfg = PruneConfig(method="sparsegpt", sparsity=0.5)
    done = json.loads(OUT.read_text()) if OUT.is_file() else {"machine": platform.processor() or platform.machine(),
                                                             "eval_windows": args.windows, "rows": []}

    def record(seed: int, setting: str, model_dir: Path, work: Path) -> None:
        out = pipeline.evaluate_model(evaluate, model_dir, work / f"eval-{setting}", print)
        done["rows"].append({"seed": seed, "setting": setting, "ppl": round(pipeline.read_perplexity(out), 4)})
        print(json.dumps(done["rows"][-1]))
        OUT.write_text(json.dumps(done, indent=1) + "\n")

    for seed in args.seeds:
        with tempfile.TemporaryDirectory(dir="data") as tmp:
            work = Path(tmp)
            calibration = pipeline.calibrate(CalibrationConfig(nsamples=32, seqlen=512, seed=seed), MODEL,
                                             work / "calibration", print)
            pruned = pipeline.prune(prune_cfg, MODEL, calibration, work / "pruned", print)
            finished = {row["setting"] for row in done["rows"] if row["seed"] == seed}
            if "sparsegpt-50" not in finished:
                record(seed, "sparsegpt-50", pruned, work)
            for name, section in QUANTIZERS.items():
                if f"sparsegpt-50+{name}" in finished:
                    continue
                quantized = pipeline.quantize(QuantizeConfig(**section), prune_cfg, MODEL, pruned, calibration,
                                              work / f"quantized-{name}", print)
                record(seed, f"sparsegpt-50+{name}", quantized, work)


if __name__ == "__main__":
    main()
