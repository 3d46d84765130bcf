"""Export quantized Linear layers as a compressed-tensors `pack-quantized` checkpoint.

The layout is the one compressed-tensors 0.20.0 reads (compressors/pack_quantized), the
format vLLM and transformers load (vLLM's kernels take 4- and 8-bit codes only; vLLM is not
tested here). For a Linear weight W (N, K) with b-bit codes, G groups:

    <layer>.weight_packed      int32 (N, ceil(K·b/32))   codes densely packed, no padding bits:
                                 code k at bits [k·b mod 32, …) of word k·b // 32, spilling into
                                 the next word when it straddles one; stored value = q
                                 (compressed-tensors' signed code q − 2^(b−1), plus its offset)
    <layer>.weight_scale       float16 (N, G)            G = 1 for per-row (strategy "channel")
    <layer>.weight_zero_point  int32 (ceil(N·b/32), G)   asymmetric only: zeros packed the same
                                 way along N (dim 0); symmetric checkpoints carry none
    <layer>.weight_shape       int64 (2,) = [N, K]

compressed-tensors dequantizes (q_s − z_s)·s with q_s = q − 2^(b−1), z_s = z − 2^(b−1), which
is our (q − z)·s; symmetric means z_s = 0, i.e. our z = 2^(b−1). The float16 product it
computes is the correctly rounded float16 of our exact float32 value, so both agree bit for bit
in float16. Pruned weights are ordinary codes q = z (stored densely). Group quantization needs
g | K (compressed-tensors rejects a partial last group).

Scales stay float16 even for bfloat16 models: that is exact; a loader that casts them to
bfloat16 rounds them.

Sparsity: pruned weights are ordinary codes q = z, stored densely, so the config declares them in
compressed-tensors' `sparsity_config` with format "dense" (the identity compressor): the layers,
their fraction of zero weights and the structure ("unstructured" or "N:M"). Loaders read it as
metadata; vLLM would pick its 2:4 kernels from it only for 8-bit activations, which we never write.

Loaders, as checked with compressed-tensors 0.20.0 and transformers 5.23: compressed-tensors'
dequantizer reads any export, and a plain `AutoModelForCausalLM.from_pretrained(dir)` loads every
export the CLI writes (one QuantSpec). Symmetric ones load compressed and are decompressed at the
first forward pass. Asymmetric ones cannot load compressed there, whoever wrote them
(compressed-tensors sizes the zero points unpacked on its meta-device path: [N, G] against the
stored [N·b/32, G]; llm-compressor issue #1618), so their config also says `"dequantize": true`,
which transformers reads as a loading option and dequantizes at load; compressed-tensors and vLLM
ignore the key. transformers dequantizes with the first config group's scheme, so the key is
written only for a single asymmetric spec.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from tasks.errors import UserError
from tasks.formats.artifact import (MAX_SHARD_BYTES, PACKED_FORMAT, REST_FILE, load_packed_tensors, plan_shards,
                                    write_shards)
from tasks.formats.packing import DTYPES, codec_of, unpack_quantized
from tasks.io.artifacts import METADATA, ArtifactError, write_artifact
from tasks.io.model import load_model_dir
from tasks.quantization.artifact import load_codes
from tasks.quantization.grid import Quantized, QuantSpec, expand_groups

COMPRESSED_TENSORS_VERSION = "0.20.0"  # the compressed-tensors release whose layout this writes
FORMAT = "pack-quantized"


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (R, C) → int32 (R, ceil(C·bits/32)): a little-endian bit stream per row."""
    rows, cols = codes.shape
    bit_index = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.unsqueeze(-1) >> bit_index) & 1).reshape(rows, cols * bits)
    stream = torch.nn.functional.pad(stream, (0, -stream.shape[1] % 32))
    weights = torch.arange(8, dtype=torch.uint8, device=codes.device)
    packed = (stream.reshape(rows, -1, 8) << weights).sum(-1, dtype=torch.uint8)
    # byte 4w + i is bits 8i … 8i+7 of word w on little-endian hosts (x86, ARM)
    return packed.reshape(rows, -1).view(torch.int32)


def weight_args(spec: QuantSpec) -> dict:
    """compressed-tensors QuantizationArgs of a weight quantized with spec."""
    per_row = spec.group_size == -1
    return {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "group_size": None if per_row else spec.group_size,
        "strategy": "channel" if per_row else "group",
        "dynamic": False,
        "actorder": None,
        "block_structure": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def sparsity_config(quantized: Mapping[str, Quantized], structure: str) -> dict:
    """compressed-tensors' SparsityCompressionConfig of weights stored densely: {} when no weight
    is zero. structure: "unstructured" or "N:M" (e.g. "2:4")."""
    zeros = sum(int((q.codes == expand_groups(q.zeros, q.spec.group_size, q.shape[1])).sum())
                for q in quantized.values())
    if not zeros:
        return {}
    total = sum(q.shape[0] * q.shape[1] for q in quantized.values())
    return {"format": "dense", "targets": sorted(quantized), "ignore": [], "global_sparsity": zeros / total,
            "sparsity_structure": structure}


def quantization_config(specs: Mapping[str, QuantSpec], sparsity: dict | None = None) -> dict:
    """`quantization_config` of config.json: one config group per distinct spec, targeting
    its layers by exact module name (so unlisted Linear layers, e.g. lm_head, stay dense)."""
    groups: dict[QuantSpec, list[str]] = {}
    for name, spec in specs.items():
        groups.setdefault(spec, []).append(name)
    ordered = sorted(groups.items(), key=lambda item: (item[0].bits, item[0].group_size, item[0].symmetric))
    # transformers' only loading path for asymmetric pack-quantized weights (module docstring)
    dequantize = {"dequantize": True} if len(groups) == 1 and not next(iter(groups)).symmetric else {}
    return {
        "version": COMPRESSED_TENSORS_VERSION,
        "quant_method": "compressed-tensors",
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {
                "targets": sorted(names),
                "weights": weight_args(spec),
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
            for i, (spec, names) in enumerate(ordered)
        },
        "ignore": [],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": sparsity or {},
        "transform_config": {},
        **dequantize,
    }


def compressed_layer(name: str, q: Quantized) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one layer (local names: weight_packed, …)."""
    spec = q.spec
    rows, cols = q.shape
    if spec.group_size != -1 and cols % spec.group_size:
        raise ValueError(f"{name}: compressed-tensors needs group_size {spec.group_size} to divide K={cols}")
    tensors = {
        "weight_packed": pack_int32(q.codes, spec.bits),
        "weight_scale": q.scales.contiguous(),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if spec.symmetric:
        if (q.zeros != 1 << (spec.bits - 1)).any():
            raise ValueError(f"{name}: symmetric quantization needs every zero = {1 << (spec.bits - 1)}")
    else:
        tensors["weight_zero_point"] = pack_int32(q.zeros.T.contiguous(), spec.bits).T.contiguous()
    return tensors


def export_pack_quantized(
    out_dir: str | os.PathLike,
    config: dict,
    quantized: Mapping[str, Quantized],
    dense: Mapping[str, torch.Tensor],
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    also: Callable[[Path], None] | None = None,
    structure: str = "unstructured",
) -> Path:
    """Write a Hugging Face checkpoint directory, atomically.

    config: the source model's config.json dict (copied; quantization_config is set).
    quantized: Linear module name (e.g. "model.layers.0.mlp.up_proj") → Quantized weight.
    dense: every other state-dict tensor under its full name (embeddings, norms, biases,
    lm_head.weight, …), written as given. Shards over max_shard_bytes get an index file.
    also(tmp_dir) may add files of its own (the tokenizer). structure: the zeros' pattern,
    "unstructured" or "N:M", declared in sparsity_config.
    """
    clash = sorted(f"{name}.weight" for name in quantized if f"{name}.weight" in dense)
    if clash:
        raise ValueError(f"dense tensors also given quantized: {clash[:3]}")
    config = copy.deepcopy(config)
    config["quantization_config"] = quantization_config({name: q.spec for name, q in quantized.items()},
                                                        sparsity_config(quantized, structure))
    units = {name: compressed_layer(name, q) for name, q in quantized.items()}
    # dense tensors are grouped by module so that a module's parameters share a shard
    for key, tensor in dense.items():
        module, _, param = key.rpartition(".")
        units.setdefault(module, {})[param] = tensor
    shards = plan_shards(units, max_shard_bytes)

    def write(tmp: Path) -> None:
        write_shards(shards)(tmp)
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for unit in units.values() for t in unit.values())
            where = {key: file for file, shard in shards.items() for key in shard}
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(where.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if also:
            also(tmp)

    return write_artifact(Path(out_dir), "compressed-tensors-export", 1,
                          {"compressed_tensors": COMPRESSED_TENSORS_VERSION}, write)


def _float(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def structure_of(meta: dict) -> str:
    """The sparsity structure an artifact's metadata records: "N:M" or "unstructured"."""
    return f"{meta['nm'][0]}:{meta['nm'][1]}" if meta.get("nm") else "unstructured"


def _from_quantized(source: Path) -> tuple[dict, dict[str, Quantized], dict[str, torch.Tensor], str]:
    model, _, meta = load_model_dir(source)
    quantized = load_codes(source, meta.get("spec"))
    if not quantized:
        raise UserError(f"{source}: holds no quantized codes (quantize.method none); nothing to export")
    dense = {k: v for k, v in model.state_dict().items() if k.removesuffix(".weight") not in quantized}
    if getattr(model.config, "tie_word_embeddings", False):
        dense.pop("lm_head.weight", None)   # tied to the embeddings: stored once
    return model.config.to_dict(), quantized, _float(dense, torch.float16), structure_of(meta)


def _from_packed(source: Path) -> tuple[dict, dict[str, Quantized], dict[str, torch.Tensor], str]:
    layers = load_packed_tensors(source)
    if floats := sorted({layer.format for layer, _ in layers.values() if codec_of(layer.format).code_bits is None}):
        raise UserError(f"{source}: packed as {', '.join(floats)} (float values, no quantized codes); export "
                        "needs an int format (pack.format int4, nm-int4, bitmask-int4, …) or --from quantized")
    quantized = {name: unpack_quantized(tensors, layer) for name, (layer, tensors) in layers.items()}
    dtype = DTYPES[next(iter(layers.values()))[0].dtype]
    config = json.loads((source / "config.json").read_text())
    structure = structure_of(json.loads((source / METADATA).read_text()))
    return config, quantized, _float(load_file(source / REST_FILE), dtype), structure


def export_artifact(source: Path, out: Path) -> Path:
    """`prunepipe export`: the quantize stage's artifact (a Hugging Face folder with codes) or the
    pack stage's (int formats) as a compressed-tensors checkpoint in `out`, with the tokenizer."""
    from transformers import AutoTokenizer

    source = Path(source)
    if not (source / METADATA).is_file():
        raise ArtifactError(f"{source}: no artifact there (run `dvc repro` or `prunepipe run` first)")
    packed = json.loads((source / METADATA).read_text()).get("kind") == PACKED_FORMAT
    config, quantized, dense, structure = (_from_packed if packed else _from_quantized)(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return export_pack_quantized(out, config, quantized, dense, also=tokenizer.save_pretrained, structure=structure)
