"""Stage `pack`: every decoder Linear of the quantized model in `pack.format` → data/packed/
(tasks/formats/artifact.py), the rest of the model as rest.safetensors. The quantization spec
and the N:M pattern come from the quantized artifact's metadata, not from params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from tasks.engine.layers import find_decoder_layers, prunable_modules, weight_view
from tasks.errors import UserError
from tasks.formats.artifact import REST_FILE, save_packed
from tasks.formats.packing import DTYPES, NM, codec_of, pack_weight
from tasks.io.artifacts import METADATA, ArtifactError, artifact_digest
from tasks.io.model import load_model_dir
from tasks.quantization.artifact import load_codes
from tasks.stages.common import StageContext

if TYPE_CHECKING:
    from tasks.config import PackConfig


def check_packable(fmt: str, meta: dict, quantized: Path) -> None:
    """Before any work: the format's needs (codes, an N:M pattern) are in the artifact."""
    codec = codec_of(fmt)
    where = quantized / METADATA
    if "spec" not in meta or "nm" not in meta:
        raise ArtifactError(f"{where}: no quantization spec or N:M pattern (written by an older prunepipe); "
                            "re-run the quantize stage")
    if codec.code_bits is not None and meta["spec"] is None:
        raise UserError(f"pack.format = {fmt!r} stores quantized codes but {where} holds none "
                        "(quantize.method none); choose a float format (dense, nm, bitmask) or quantize")
    if codec.code_bits is not None and meta["spec"]["bits"] > codec.code_bits:
        raise UserError(f"pack.format = {fmt!r} stores at most {codec.code_bits}-bit codes but {where} holds "
                        f"{meta['spec']['bits']}-bit ones")
    if codec.layout is NM and meta["nm"] is None:
        raise UserError(f"pack.format = {fmt!r} needs N:M weights but {where} records unstructured sparsity")


def pack(cfg: PackConfig, *, quantized: Path, out: Path, ctx: StageContext) -> Path:
    """Pack every decoder Linear of the quantized model in `cfg.format`; the rest stays as is."""
    loaded, tokenizer, meta = load_model_dir(quantized)
    check_packable(cfg.format, meta, quantized)
    codes = load_codes(quantized, meta["spec"])
    nm = tuple(meta["nm"]) if meta["nm"] else None
    prefix, layers = find_decoder_layers(loaded)
    packed = {}
    for index, layer in enumerate(layers):
        for name, module in prunable_modules(layer, f"{prefix}.{index}", ()).items():
            W = weight_view(module)
            packed[name] = pack_weight(W, cfg.format, mask=W == 0, quantized=codes.get(name), nm=nm,
                                       dtype=DTYPES[cfg.dtype])
    packed_bytes = sum(t.numel() * t.element_size() for _, tensors in packed.values() for t in tensors.values())
    weights = sum(layer.shape[0] * layer.shape[1] for layer, _ in packed.values())
    rest = {k: v for k, v in loaded.state_dict().items() if k.removesuffix(".weight") not in packed}
    if getattr(loaded.config, "tie_word_embeddings", False):
        rest.pop("lm_head.weight", None)   # tied to the embeddings: stored once
    meta = {"config": {"pack": cfg.model_dump(mode="json")}, "key": ctx.key,
            "inputs": {"quantized": artifact_digest(quantized)}, "spec": meta["spec"], "nm": meta["nm"],
            "bytes_per_weight": packed_bytes / weights, "packed_bytes": packed_bytes, "weights": weights}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in rest.items()}, tmp / REST_FILE)
        loaded.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    ctx.log(f"packed {len(packed)} Linear layers as {cfg.format}: {meta['bytes_per_weight']:.4f} bytes per weight")
    return save_packed(out, packed, meta, also=write)
