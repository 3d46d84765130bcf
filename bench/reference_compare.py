"""Our SparseGPT and Wanda against llm-compressor's, on the packaged SmolLM2-135M.

For each setting: prune with prunepipe (the prune stage) and with llm-compressor
(bench/reference/prune.py, run by the reference environment's Python) from the same
data/model and data/calibration of `make run`, evaluate both on the same held-out windows
with our evaluation, and compare masks Linear by Linear. One row per setting is appended to
bench/results/smollm2-reference.json as soon as it is measured; finished rows are skipped.

    make reference        # builds bench/reference/.venv, then runs this script
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from tasks.config import EvaluateConfig, PruneConfig, SequentialConfig
from tasks.evaluation.perplexity import evaluation_windows
from tasks.io.model import load_model_dir
from tasks.stages.common import StageContext
from tasks.stages.prune import prune
from tasks.evaluation.perplexity import perplexity

OUT = Path("bench/results/smollm2-reference.json")
MODEL, CALIBRATION = Path("data/model"), Path("data/calibration")
REFERENCE_PYTHON = Path("bench/reference/.venv/bin/python")

# name → (method, sparsity as params.yaml spells it, calibration samples per layer call).
# The batch size changes nothing but the order of floating-point sums, so the batch-4 rows show how
# far rounding alone moves each implementation's perplexity.
SETTINGS = {
    "sparsegpt-50": ("sparsegpt", "0.5", 8),
    "wanda-50": ("wanda", "0.5", 8),
    "sparsegpt-2:4": ("sparsegpt", "2:4", 8),
    "wanda-2:4": ("wanda", "2:4", 8),
    "sparsegpt-50-batch4": ("sparsegpt", "0.5", 4),
    "sparsegpt-2:4-batch4": ("sparsegpt", "2:4", 4),
}


def prune_reference(python: Path, method: str, sparsity: str, batch: int, out: Path) -> dict:
    command = [str(python), "bench/reference/prune.py", "--method", method, "--sparsity", sparsity,
               "--batch-size", str(batch), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-20:])
        sys.exit(f"the reference prune failed (exit {run.returncode}): {' '.join(command)}\n{tail}")
    return json.loads((out / "timing.json").read_text())


def prune_ours(method: str, sparsity: str, batch: int, work: Path) -> tuple[Path, dict]:
    cfg = PruneConfig(method=method, sparsity=sparsity if ":" in sparsity else float(sparsity))
    stats = work / "prune_run.json"
    pruned = prune(cfg, SequentialConfig(batch_size=batch), model=MODEL, calibration=CALIBRATION, out=work / "pruned",
                   run_stats=stats, ctx=StageContext(print))
    timing = json.loads(stats.read_text())
    return pruned, {k: timing[k] for k in ("prune_seconds", "solve_seconds_per_layer")}


def mask_agreement(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """Per decoder layer: the share of weights that both pruned or both kept, and ‖W_ours − W_ref‖ / ‖W_ref‖;
    the reference's achieved sparsity. Layer 0 sees the same inputs in both; later layers see inputs
    that the earlier layers' (slightly different) results produced."""
    same: dict[int, list[float]] = {}
    diff: dict[int, list[float]] = {}
    zeros = total = 0
    for name, W in reference.items():
        layer = int(name.split(".")[2])
        same.setdefault(layer, []).append(float(((ours[name] == 0) == (W == 0)).float().mean()))
        diff.setdefault(layer, []).append(float((ours[name] - W).norm() / W.norm()))
        zeros += int((W == 0).sum())
        total += W.numel()

    def per_layer(values: dict[int, list[float]], digits: int) -> list[float]:
        return [round(sum(v) / len(v), digits) for _, v in sorted(values.items())]

    return {"mask_agreement_per_layer": per_layer(same, 4), "weight_rel_diff_per_layer": per_layer(diff, 6),
            "reference_sparsity": round(zeros / total, 4)}


def evaluate(model, windows: torch.Tensor, cfg: EvaluateConfig) -> float:
    return round(perplexity(model, windows, cfg.batch_size, torch.device(cfg.device)), 4)


def measure(name: str, python: Path, cfg: EvaluateConfig, work: Path) -> dict:
    method, sparsity, batch = SETTINGS[name]
    print(f"{name}: pruning with llm-compressor (a few minutes, its log is shown only if it fails)", flush=True)
    reference_timing = prune_reference(python, method, sparsity, batch, work / "reference")
    pruned, our_timing = prune_ours(method, sparsity, batch, work)

    model, tokenizer, _ = load_model_dir(pruned)
    windows = evaluation_windows(cfg, tokenizer)
    ours = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("proj.weight")}
    ppl_ours = evaluate(model, windows, cfg)
    reference = load_file(work / "reference" / "weights.safetensors")
    if reference.keys() != ours.keys():
        sys.exit(f"{name}: the reference pruned {sorted(reference.keys() ^ ours.keys())[:4]} differently")
    model.load_state_dict(reference, strict=False)
    ppl_reference = evaluate(model, windows, cfg)
    return {"name": name, "ppl_ours": ppl_ours, "ppl_reference": ppl_reference,
            "ppl_ratio": round(ppl_ours / ppl_reference, 4),
            "ours": our_timing, "reference": reference_timing, **mask_agreement(ours, reference)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", type=Path, default=REFERENCE_PYTHON, help="the reference environment's Python")
    parser.add_argument("--windows", type=int, default=32)   # evaluate.max_windows of params.yaml
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    if not args.python.is_file():
        sys.exit(f"{args.python}: no reference environment; `make reference` builds it")
    cfg = EvaluateConfig(max_windows=args.windows)
    done = json.loads(OUT.read_text()) if OUT.is_file() else {
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "eval_windows": args.windows, "reference": "llmcompressor==0.14.0.1", "rows": []}
    finished = {row["name"] for row in done["rows"]}
    for name in args.only:
        if name in finished:
            continue
        with tempfile.TemporaryDirectory(dir="data") as work:
            row = measure(name, args.python, cfg, Path(work))
        print(json.dumps({k: v for k, v in row.items() if k not in ("ours", "reference")}))
        done["rows"].append(row)
        OUT.write_text(json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    main()
