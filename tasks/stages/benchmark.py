"""The `benchmark` stage's body: kernel rows (kernels/benchmark.py) and batch-1 decode of packed
Llama-shaped models against their dense twin, as one JSON-ready dict; and writing it.

    result = run(**benchmark_section, model_shapes=model_shapes(Path("data/packed")), log=print)
    write_results(result, Path("bench/results/benchmark.json"), Path("bench/results/speedup.png"))

With CUDA: rows for `shapes` and the packed model's own (N, K) shapes, at every batch, then decode.
Without: "gpu": null, a note, and the CPU reference path on the model's own shapes only
(`cpu_batches`, `cpu_reps`; the first of `shapes` when there is no model), so that `dvc repro`
stays within a minute on a laptop.

Decode: a Llama-2-7B-shaped model (hidden 4096, intermediate 11008, 32 heads, vocabulary 32000)
with `decode_layers` decoder layers and random fp16 weights, built on the GPU (no download).
Greedy batch-1 decode of `decode_tokens` tokens from a static KV cache, each step one CUDA graph
replay (captured after eager warm-up steps, which also make the dispatch decisions and autotune;
eager steps if the capture fails, said in the row). Then the same model with its decoder Linears
packed in each of `decode_formats` (RTN int4/int8 codes; 2:4 or 50% magnitude pruning for the
N:M and bitmask layouts) as PackedLinear modules, which run through kernels/dispatch.py.
A row: format, layers, params_B (the dense twin's), tokens_per_s, speedup (tokens/s over the dense
twin's), ms_per_token, weight_GB (every parameter and buffer of the model as run), workspace_GB
(the allocator's peak while capturing and decoding, above what was allocated before warm-up: the
KV cache, activations, a torch path's dequantized weights, the graph's pool; the one-time dispatch
races during warm-up are not in it), cuda_graph and finite (the last logits).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from kernels import benchmark as ops
from kernels.dispatch import PackedWeight, default_dispatcher, library_version
from kernels.timing import copy_gbps, cuda_span_ms, l2_bytes
from tasks.formats.artifact import load_metadata
from tasks.engine.layers import find_decoder_layers, prunable_modules
from tasks.formats.packing import BITMASK, NM as NM_LAYOUT, codec_of, pack_weight
from tasks.serving.packed_model import PackedLinear
from tasks.pruning.patterns import NM, Unstructured, mask_from_scores
from tasks.quantization.grid import QuantSpec, rtn
from tasks.stages.common import StageContext

if TYPE_CHECKING:
    from tasks.config import BenchmarkConfig

NO_CUDA_NOTE = "no CUDA device: timed the CPU reference path"
LLAMA = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
             vocab_size=32000, max_position_embeddings=4096)
WARM_STEPS = 3
Log = Callable[[str], None]


def model_shapes(packed_dir: Path) -> list[tuple[int, int]]:
    """The distinct (N, K) of a packed artifact's layers, in model order."""
    layers = load_metadata(packed_dir)["layers"].values()
    return list(dict.fromkeys(tuple(layer["shape"]) for layer in layers))


# ----------------------------------------------------------------------------- decode

def pack_matrix(w: torch.Tensor, fmt: str, group_size: int, bias: torch.Tensor | None = None) -> PackedLinear:
    """W (N, K) packed in `fmt` by the pack stage's code: magnitude 2:4 (N:M layouts) or 50% (bitmask
    layouts), RTN codes."""
    codec = codec_of(fmt)
    pattern = NM(2, 4) if codec.layout is NM_LAYOUT else Unstructured(0.5) if codec.layout is BITMASK else None
    mask = mask_from_scores(w.abs().float(), pattern) if pattern else None
    quantized = rtn(w, QuantSpec(codec.code_bits, group_size, False), mask) if codec.code_bits else None
    layer, tensors = pack_weight(w, fmt, mask=mask, quantized=quantized,
                                 nm=(2, 4) if codec.layout is NM_LAYOUT else None, dtype=torch.float16)
    return PackedLinear(layer, tensors, bias)


def pack_linear(linear: nn.Linear, fmt: str, group_size: int) -> PackedLinear:
    return pack_matrix(linear.weight.detach(), fmt, group_size, linear.bias)


def packer(fmt: str, w: torch.Tensor, group_size: int) -> PackedWeight:
    """kernels/benchmark.py's Packer: what a packed model holds for W, with its own fallback."""
    return pack_matrix(w, fmt, group_size).packed_weight()


def swap(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


def tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def decode_step(model: nn.Module, ids: torch.Tensor, cache) -> torch.Tensor:
    """One greedy step: ids (1, 1) ← argmax of the next-token logits, which are returned. No torch
    op in it reads a value back to the host (positions come from the static cache's device-side
    length; tests/test_benchmark.py checks), as CUDA graph capture needs."""
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
    ids.copy_(logits[:, -1].argmax(-1, keepdim=True))
    return logits


def decode_speed(model: nn.Module, tokens: int) -> dict:
    """Greedy batch-1 decode of `tokens` tokens, one CUDA graph replay per token (see the module doc)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=tokens + 3 * WARM_STEPS + 8)
    ids = torch.ones(1, 1, dtype=torch.long, device="cuda")
    out = {}

    def step() -> None:
        out["logits"] = decode_step(model, ids, cache)

    row = {"tokens": tokens, "weight_GB": tensor_bytes(model) / 1e9}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture wants
            for _ in range(WARM_STEPS):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the peak from here on: not the one-time dispatch races
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            advance, row["cuda_graph"] = graph.replay, True
        except Exception as err:  # noqa: BLE001 - fall back to eager steps, and say why
            advance, row["cuda_graph"], row["graph_error"] = step, False, ops.describe(err)
        ms = cuda_span_ms(advance, tokens)
    return {**row, "tokens_per_s": 1e3 * tokens / ms, "ms_per_token": ms / tokens,
            "workspace_GB": (torch.cuda.max_memory_allocated() - before) / 1e9,
            "finite": bool(torch.isfinite(out["logits"]).all())}


def decode_rows(layers: int, tokens: int, formats: Iterable[str], group_size: int, log: Log) -> list[dict]:
    """Dense fp16 twin first, then each packed format (module doc)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA, num_hidden_layers=layers),
                                                 dtype=torch.float16).eval()
    prefix, blocks = find_decoder_layers(model)
    dense = {name: module for i, block in enumerate(blocks)
             for name, module in prunable_modules(block, f"{prefix}.{i}", ()).items()}
    described = {"layers": layers, "params_B": sum(p.numel() for p in model.parameters()) / 1e9}
    rows = []
    for fmt in ("dense", *formats):
        start = time.monotonic()
        try:
            if fmt != "dense":
                swap(model, {name: pack_linear(linear, fmt, group_size) for name, linear in dense.items()})
            rows.append({**described, "format": fmt, **decode_speed(model, tokens)})
        except Exception as err:  # noqa: BLE001 - one format failing must not lose the others
            rows.append({**described, "format": fmt, "error": ops.describe(err)})
        finally:
            swap(model, dense)
            torch.cuda.empty_cache()
        if rows[0].get("tokens_per_s") and rows[-1].get("tokens_per_s"):
            rows[-1]["speedup"] = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
        log(f"decode {fmt}: {rows[-1]} ({time.monotonic() - start:.1f} s)")
    return rows


# ----------------------------------------------------------------------------- the stage

def run(*, shapes: Sequence[Sequence[int]], batches: Sequence[int], formats: Sequence[str], group_size: int,
        warmup: int, reps: int, max_ms: float, decode_layers: int, decode_tokens: int,
        decode_formats: Sequence[str], cpu_batches: Sequence[int], cpu_reps: int,
        model_shapes: Sequence[tuple[int, int]], log: Log, deadline: float | None = None,
        on_update: Callable[[dict], None] = lambda result: None) -> dict:
    """Everything the stage records; keyword arguments are params.yaml's `benchmark` keys, plus the
    packed model's shapes, optionally a time.monotonic() deadline for the kernel rows, and
    on_update(result so far), called after every shape × format and after decode."""
    settings = {"shapes": [list(s) for s in shapes], "batches": list(batches), "formats": list(formats),
                "group_size": group_size, "warmup": warmup, "reps": reps, "max_ms": max_ms,
                "decode_layers": decode_layers, "decode_tokens": decode_tokens,
                "decode_formats": list(decode_formats), "model_shapes": [list(s) for s in model_shapes]}
    libraries = {name: library_version(name) for name in ("torch", "triton", "transformers")}
    if not torch.cuda.is_available():
        cpu_shapes = list(model_shapes) or [tuple(shapes[0])]
        log(f"benchmark: {NO_CUDA_NOTE}: {cpu_shapes} at batches {list(cpu_batches)}")
        rows = ops.cpu_rows(cpu_shapes, cpu_batches, formats, group_size, packer, cpu_reps)
        return {"gpu": None, "note": NO_CUDA_NOTE, "libraries": libraries, "copy_GBps": None,
                "settings": {**settings, "cpu_batches": list(cpu_batches), "cpu_reps": cpu_reps},
                "rows": ops.add_speedups(rows), "decode": None}
    # the largest shapes first (the anchors'), so that a deadline cuts the small model shapes
    all_shapes = sorted(dict.fromkeys([*map(tuple, shapes), *map(tuple, model_shapes)]), key=lambda s: -s[0] * s[1])
    copy = copy_gbps()
    log(f"benchmark: {torch.cuda.get_device_name()}, copy {copy:.0f} GB/s")
    dispatcher = default_dispatcher()
    result = {"gpu": torch.cuda.get_device_name(), "libraries": {**libraries, "cuda": torch.version.cuda},
              "copy_GBps": copy, "l2_bytes": l2_bytes(), "settings": settings, "truncated": False, "rows": [],
              "decode": None, "dispatch": dispatcher.entries}

    def update(rows: list[dict]) -> None:
        result.update(rows=ops.add_speedups(rows), truncated=any(row["kernel"] == ops.DEADLINE for row in rows))
        on_update(result)

    update(ops.op_rows(all_shapes, batches, formats, group_size, ops.Timing(warmup, reps, max_ms), packer, dispatcher,
                       deadline, log, on_step=update))
    try:
        result["decode"] = decode_rows(decode_layers, decode_tokens, decode_formats, group_size, log) \
            if decode_layers else None
    except Exception as err:  # noqa: BLE001 - building the model failed: keep the kernel rows
        result["decode"] = [{"error": ops.describe(err)}]
    on_update(result)
    return {**result, "dispatch": dict(dispatcher.entries)}


def write_results(result: dict, json_path: Path, png_path: Path) -> None:
    """The JSON (atomically: a temporary sibling, then a rename), then the speedup plot."""
    from tasks.reports.summary import plot_speedup, speedup_table

    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, json_path)
    timed = [row for row in result["rows"] if row.get("ms")]
    png_tmp = png_path.with_name(f".{png_path.stem}.tmp{png_path.suffix}")
    plot_speedup(speedup_table(timed), png_tmp)
    os.replace(png_tmp, png_path)


def benchmark(cfg: BenchmarkConfig, *, packed: Path, results: Path, plot: Path, ctx: StageContext) -> Path:
    """The stage: rows for the packed model's shapes and `cfg`'s → results (JSON) and plot (PNG)."""
    result = run(**cfg.model_dump(), model_shapes=model_shapes(packed), log=ctx.log)
    write_results(result, results, plot)
    ctx.log(f"{results}: {len(result['rows'])} rows on {result['gpu'] or 'the CPU'}")
    return results
