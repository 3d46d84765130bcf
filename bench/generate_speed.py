"""Greedy generation speed on the CPU: the dense model against its packed twin (`load_packed`),
the packed weights decoded once at load and at every call. Writes bench/results/cpu-generate.json;
the README's generation table comes from it.

    .venv/bin/python bench/generate_speed.py [--tokens 64] [--call-tokens 8] [--repeats 3]

The packed artifact is built in a temporary folder by the pipeline's own stages from the packaged
SmolLM2-135M-Instruct: magnitude 50% unstructured, RTN 4-bit in groups of 64 (asymmetric), packed
as `bitmask-int4`, the default format with the default model's shapes (speed depends on those, not
on which weights were pruned: magnitude and RTN only keep the build short). Dense is the same
model's float32 `data/model` artifact. Each run generates a fixed number of tokens (no early stop)
from one chat prompt. The modes run back to back within each repeat. On a shared machine other
processes slow some runs down by several times, so the figures are the fastest run of each mode
(the least disturbed: tokens_per_s, vs_dense), with the medians beside them (median_tokens_per_s,
and median_vs_dense: the median of each repeat's ratio to its own dense run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from prunepipe import load_packed
from tasks.config import CalibrationConfig, ModelConfig, PackConfig, PruneConfig, QuantizeConfig, SequentialConfig
from tasks.io.model import load_model_dir
from tasks.serving.generate import prompt_ids
from tasks.stages.calibrate import calibrate
from tasks.stages.common import StageContext
from tasks.stages.model import model as model_stage
from tasks.stages.pack import pack
from tasks.stages.prune import prune
from tasks.stages.quantize import quantize

OUT = Path("bench/results/cpu-generate.json")
PROMPT = "Explain in two sentences why pruning a neural network makes it smaller."
PRUNE = PruneConfig(method="magnitude", sparsity=0.5)
QUANTIZE = QuantizeConfig(method="rtn", bits=4, group_size=64, symmetric=False)
FORMAT = "bitmask-int4"


def build(root: Path) -> tuple[Path, Path]:
    """data/model and data/packed of the packaged model under root, by the stages."""
    ctx, seq, data = StageContext(print), SequentialConfig(), root / "data"
    model_stage(ModelConfig(), out=data / "model", ctx=ctx)
    calibrate(CalibrationConfig(nsamples=4, seqlen=64), model=data / "model", out=data / "calibration", ctx=ctx)
    prune(PRUNE, seq, model=data / "model", calibration=data / "calibration", out=data / "pruned",
          run_stats=root / "prune_run.json", ctx=ctx)
    quantize(QUANTIZE, seq, PRUNE, model=data / "model", pruned=data / "pruned", calibration=data / "calibration",
             out=data / "quantized", run_stats=root / "quantize_run.json", ctx=ctx)
    pack(PackConfig(format=FORMAT), quantized=data / "quantized", out=data / "packed", ctx=ctx)
    return data / "model", data / "packed"


def model_bytes(model: torch.nn.Module) -> int:
    """Every parameter and buffer the model holds (tied tensors once)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.inference_mode()
def time_generate(model, ids: torch.Tensor, tokens: int) -> float:
    """Seconds for greedy generation of exactly `tokens` new tokens (prompt prefill included)."""
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                         do_sample=False, use_cache=True, pad_token_id=0)
    seconds = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == tokens
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per run, dense and decoded at load")
    parser.add_argument("--call-tokens", type=int, default=4, help="new tokens per run, decoded at every call")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dense_dir, packed_dir = build(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(packed_dir)
        ids = prompt_ids(tokenizer, PROMPT, chat=True)
        models, load_s = {}, {}
        for mode, load in [("dense", lambda: load_model_dir(dense_dir)[0].eval()),
                           ("packed, decoded at load", lambda: load_packed(packed_dir, decode="load")),
                           ("packed, decoded at every call", lambda: load_packed(packed_dir, decode="call"))]:
            start = time.perf_counter()
            models[mode] = load()
            load_s[mode] = time.perf_counter() - start
        tokens = {mode: args.call_tokens if "every call" in mode else args.tokens for mode in models}
        for mode, model in models.items():   # warm-up: first-call allocations, lazy inits
            time_generate(model, ids, 2)
        seconds = {mode: [] for mode in models}
        for _ in range(args.repeats):
            for mode, model in models.items():
                seconds[mode].append(time_generate(model, ids, tokens[mode]))
                print(f"{mode}: {tokens[mode] / seconds[mode][-1]:.2f} tokens/s")

    rows = []
    for mode, model in models.items():
        rates = [tokens[mode] / s for s in seconds[mode]]
        ratios = [rate * dense / args.tokens for rate, dense in zip(rates, seconds["dense"])]
        best = max(rates)
        rows.append({"model": mode, "new_tokens": tokens[mode], "tokens_per_s": round(best, 3),
                     "vs_dense": round(best * min(seconds["dense"]) / args.tokens, 3),
                     "median_tokens_per_s": round(statistics.median(rates), 3),
                     "median_vs_dense": round(statistics.median(ratios), 3),
                     "runs_s": [round(s, 3) for s in seconds[mode]],
                     "load_s": round(load_s[mode], 2), "model_MB": round(model_bytes(model) / 1e6, 1)})
    result = {
        "model": "packaged SmolLM2-135M-Instruct, float32", "packed": f"{PRUNE.method} {PRUNE.sparsity}, "
        f"RTN {QUANTIZE.bits}-bit g{QUANTIZE.group_size} asymmetric, {FORMAT}",
        "prompt_tokens": ids.shape[1], "repeats": args.repeats,
        "statistic": "fastest run of each mode; medians over repeats beside them",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(f"{row['model']:32s} {row['tokens_per_s']:8.2f} tokens/s  {row['vs_dense']:.3f}x dense  "
              f"{row['model_MB']:7.1f} MB  load {row['load_s']} s")


if __name__ == "__main__":
    main()
