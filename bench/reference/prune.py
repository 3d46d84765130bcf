"""Prune the packaged model with llm-compressor's SparseGPT / Wanda (the published implementations).

Runs in the reference virtual environment (bench/reference/requirements.txt), not in .venv:
llm-compressor pins an older transformers. It reads the model and the calibration windows that
`make run` wrote (data/model, data/calibration), so the reference sees exactly our inputs, and
writes the pruned decoder weights and its timings for bench/reference_compare.py to evaluate.

    /path/to/refvenv/bin/python bench/reference/prune.py --method sparsegpt --sparsity 0.5 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

MODIFIERS = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}


def timed_compress(modifier_class: type, seconds: list[float]) -> None:
    """Record how long each decoder layer's solve (compress_modules) takes."""
    original = modifier_class.compress_modules

    def compress_modules(self):
        calibrated = len(self._num_samples)  # 0 for the subgraphs around the decoder layers
        began = time.perf_counter()
        original(self)
        if calibrated:
            seconds.append(round(time.perf_counter() - began, 3))

    modifier_class.compress_modules = compress_modules


def modifier(method: str, sparsity: str):
    n_m = ":" in sparsity
    kwargs = {"sparsity": 0.5 if n_m else float(sparsity), "mask_structure": sparsity if n_m else "0:0",
              "targets": ["re:.*layers\\.\\d+\\..*proj$"]}
    if method == "sparsegpt":
        kwargs |= {"block_size": 128, "dampening_frac": 0.01}
    return MODIFIERS[method](**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=sorted(MODIFIERS), required=True)
    parser.add_argument("--sparsity", required=True, help="a fraction such as 0.5, or N:M such as 2:4")
    parser.add_argument("--model", type=Path, default=Path("data/model"))
    parser.add_argument("--calibration", type=Path, default=Path("data/calibration"))
    parser.add_argument("--batch-size", type=int, default=8)  # prune.batch_size of params.yaml
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokens = load_file(args.calibration / "tokens.safetensors")["input_ids"]
    data = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})
    recipe = modifier(args.method, args.sparsity)

    solve: list[float] = []
    timed_compress(type(recipe), solve)
    began = time.perf_counter()
    oneshot(model=model, tokenizer=str(args.model), dataset=data, recipe=recipe, pipeline="sequential",
            num_calibration_samples=len(tokens), max_seq_length=tokens.shape[1], batch_size=args.batch_size,
            shuffle_calibration_samples=False)
    seconds = time.perf_counter() - began

    args.out.mkdir(parents=True, exist_ok=True)
    weights = {name: p.detach().contiguous() for name, p in model.named_parameters() if name.endswith("proj.weight")}
    save_file(weights, args.out / "weights.safetensors")
    (args.out / "timing.json").write_text(json.dumps({"prune_seconds": round(seconds, 1),
                                                      "solve_seconds_per_layer": solve}) + "\n")


if __name__ == "__main__":
    main()
