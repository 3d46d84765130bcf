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

from tasks.config import CalibrationConfig, EvaluateConfig, PruneConfig, QuantizeConfig, SequentialConfig
from tasks.evaluation.perplexity import read_perplexity
from tasks.stages.calibrate import calibrate
from tasks.stages.common import StageContext
from tasks.stages.evaluate import evaluate_artifact
from tasks.stages.prune import prune
from tasks.stages.quantize import quantize

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
    ctx, seq = StageContext(print), SequentialConfig()
    done = json.loads(OUT.read_text()) if OUT.is_file() else {"machine": platform.processor() or platform.machine(),
                                                             "eval_windows": args.windows, "rows": []}

    def record(seed: int, setting: str, model_dir: Path, work: Path) -> None:
        out = evaluate_artifact(evaluate, model=model_dir, out=work / f"eval-{setting}", ctx=ctx)
        done["rows"].append({"seed": seed, "setting": setting, "ppl": round(read_perplexity(out), 4)})
        print(json.dumps(done["rows"][-1]))
        OUT.write_text(json.dumps(done, indent=1) + "\n")

    for seed in args.seeds:
        with tempfile.TemporaryDirectory(dir="data") as tmp:
            work = Path(tmp)
            calibration = calibrate(CalibrationConfig(nsamples=32, seqlen=512, seed=seed), model=MODEL,
                                    out=work / "calibration", ctx=ctx)
            pruned = prune(prune_cfg, seq, model=MODEL, calibration=calibration, out=work / "pruned",
                           run_stats=work / "prune_run.json", ctx=ctx)
            finished = {row["setting"] for row in done["rows"] if row["seed"] == seed}
            if "sparsegpt-50" not in finished:
                record(seed, "sparsegpt-50", pruned, work)
            for name, section in QUANTIZERS.items():
                if f"sparsegpt-50+{name}" in finished:
                    continue
                quantized = quantize(QuantizeConfig(**section), seq, prune_cfg, model=MODEL, pruned=pruned,
                                     calibration=calibration, out=work / f"quantized-{name}",
                                     run_stats=work / "quantize_run.json", ctx=ctx)
                record(seed, f"sparsegpt-50+{name}", quantized, work)


if __name__ == "__main__":
    main()
