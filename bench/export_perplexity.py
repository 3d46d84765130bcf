"""Perplexity of the serving export against the quantized model it comes from, on the pipeline's
own artifacts. Writes bench/results/export-perplexity.json; the README's figure comes from it.

    .venv/bin/python bench/export_perplexity.py [--from packed|quantized]   # after `make run`

Exports data/packed (or data/quantized) with `prunepipe export` into a temporary folder, loads
it with a plain `AutoModelForCausalLM.from_pretrained(dir, dtype=float32)`, and measures both
models on the `evaluate` defaults of params.yaml (the first 32 held-out windows of 512 tokens of
the packaged Wikipedia text), the same windows `ppl_quantized` is measured on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tasks.config import EvaluateConfig
from tasks.evaluation.perplexity import evaluation_windows, perplexity
from tasks.io.model import load_model_dir
from tasks.serving.compressed_tensors import export_artifact

OUT = Path("bench/results/export-perplexity.json")
EVALUATE = EvaluateConfig(max_windows=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=("packed", "quantized"), default="packed")
    args = parser.parse_args()

    quantized, tokenizer, _ = load_model_dir(Path("data/quantized"))
    windows = evaluation_windows(EVALUATE, tokenizer)
    start = time.perf_counter()
    want = perplexity(quantized, windows, EVALUATE.batch_size, torch.device("cpu"))
    del quantized
    with tempfile.TemporaryDirectory() as tmp:
        out = export_artifact(Path("data") / args.source, Path(tmp) / "serve")
        config = json.loads((out / "config.json").read_text())["quantization_config"]
        exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        got = perplexity(exported, windows, EVALUATE.batch_size, torch.device("cpu"))
    result = {"source": f"data/{args.source}", "windows": len(windows), "tokens": windows.numel(),
              "ppl_quantized": want, "ppl_export": got, "relative_difference": got / want - 1,
              "export_loaded_with": "AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)",
              "dequantize_key": config.get("dequantize", False),
              "sparsity_config": {k: v for k, v in config["sparsity_config"].items() if k != "targets"},
              "sparse_layers": len(config["sparsity_config"].get("targets", [])),
              "seconds": round(time.perf_counter() - start, 1)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ppl_quantized {want:.4f}  export {got:.4f}  relative {got / want - 1:+.2e}")


if __name__ == "__main__":
    main()
