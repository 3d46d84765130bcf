"""Prune a Llama-7B-shaped model with random weights (no download): seconds per layer and peak memory.

The model is built from LLaMA-7B's config with `--layers` decoder layers (every layer is the
same shape, so per-layer figures need only a few) and stays on the host; `prune_model` moves one
layer at a time to `--device`. Each mode is one fresh model: activations kept on the device, and
offloaded to the host (`sequential.offload_activations`). Writes bench/results/<tag>-llama7b-prune.json.

    python3 bench/llama7b_prune.py --device cuda            # the GPU figure of the pruning issue
    python3 bench/llama7b_prune.py --device cpu --layers 1 --nsamples 4 --seqlen 128   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tasks.config import PruneConfig, SequentialConfig
from tasks.pruning.pruners import prune_model
from tasks.stages.common import peak_host_bytes, seconds_per_layer

GIB = 2**30
LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6}


def build(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_7B, num_hidden_layers=layers)).eval()


def device_memory(peak: int, activations: int, offload: bool) -> dict:
    """Peak GPU memory, and what is left of it without the calibration activations it holds (none
    when offloaded). On the CPU there is no device memory apart from the host's."""
    if not peak:
        return {}
    return {"peak_device_gib": round(peak / GIB, 3),
            "peak_device_minus_activations_gib": round((peak - (0 if offload else activations)) / GIB, 3)}


def run(args, offload: bool) -> dict:
    model = build(args.layers)
    tokens = torch.randint(0, LLAMA_7B["vocab_size"], (args.nsamples, args.seqlen),
                           generator=torch.Generator().manual_seed(0))
    cfg = PruneConfig(method=args.method, sparsity=0.5, device=args.device)
    seq = SequentialConfig(batch_size=args.batch_size, offload_activations=offload)
    began = time.perf_counter()
    report = prune_model(model, tokens, cfg, seq, log=print)
    seconds = time.perf_counter() - began
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    activations = args.nsamples * args.seqlen * LLAMA_7B["hidden_size"] * 4
    return {"offload_activations": offload, "seconds": round(seconds, 1),
            "seconds_per_layer": round(seconds / args.layers, 2),
            "solve_seconds_per_layer": seconds_per_layer(report.records),
            "activation_gib": round(activations / GIB, 3), **device_memory(report.peak_device_bytes, activations, offload),
            "sparsity": sorted({round(r.sparsity, 4) for r in report.records}), "finite": bool(finite)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--method", default="sparsegpt", choices=["sparsegpt", "wanda", "admm"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=128)   # the SparseGPT paper's calibration
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tag", default=None, help="result file prefix (default: the device kind)")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    result = {"machine": gpu or platform.processor() or platform.machine(), "torch": torch.__version__,
              "model": "Llama-7B shape, random weights", **{k: v for k, v in vars(args).items() if k != "tag"},
              "runs": [run(args, offload) for offload in (False, True)], "peak_host_gib": round(peak_host_bytes() / GIB, 2)}
    out = Path("bench/results") / f"{args.tag or ('h200' if gpu and 'H200' in gpu else args.device)}-llama7b-prune.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
