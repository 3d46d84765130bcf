"""Packed-model artifact on disk: safetensors shards plus metadata.json, written atomically
through tasks/io/artifacts.py (kind "prunepipe-packed", version = the packed format version).

    <dir>/model.safetensors                      (or model-00001-of-0000S.safetensors, …)
          tensor "<layer>.<tensor>", e.g. "model.layers.0.mlp.up_proj.qweight"
    <dir>/metadata.json
          {"kind": "prunepipe-packed", "version": 2,
           "layers": {layer: {LayerFormat fields…, "tensors": {tensor: file}}},
           "files":  {file: sha256 hex}, "libraries": {…}, …the caller's metadata…}

A layer's tensors always share one shard. Loading checks the version and every file's
sha256 before reading, so an altered or truncated file fails loudly, naming the file; an
artifact of an older version (1: bitmask values not chunked) asks for `dvc repro pack`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasks.io.artifacts import METADATA, ArtifactError, read_metadata, write_artifact
from tasks.formats.packing import FORMAT_VERSION, LayerFormat

PACKED_FORMAT = "prunepipe-packed"
MAX_SHARD_BYTES = 4 << 30
REST_FILE = "rest.safetensors"   # every tensor of the model that is not a packed Linear

Layers = dict[str, tuple[LayerFormat, dict[str, torch.Tensor]]]


def shard_names(count: int) -> list[str]:
    """Hugging Face file names: model.safetensors, or model-0000i-of-0000S.safetensors."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def plan_shards(units: dict[str, dict[str, torch.Tensor]],
                max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, dict[str, torch.Tensor]]:
    """Group units (prefix → {name: tensor}) into shards {file: {key: tensor}}; tensor key
    "<prefix>.<name>" ("<name>" for prefix ""). A unit is never split across shards; tensors
    must not share memory (safetensors refuses, e.g. tied embeddings: pass them once)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for prefix, tensors in units.items():
        unit_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if shards[-1] and size + unit_bytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1].update({f"{prefix}.{name}" if prefix else name: t.contiguous() for name, t in tensors.items()})
        size += unit_bytes
    return dict(zip(shard_names(len(shards)), shards))


def write_shards(shards: dict[str, dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        for name, shard in shards.items():
            save_file(shard, directory / name, metadata={"format": "pt"})
    return write


def save_packed(directory: str | os.PathLike, layers: Layers, metadata: dict | None = None, *,
                max_shard_bytes: int = MAX_SHARD_BYTES,
                also: Callable[[Path], None] | None = None) -> Path:
    """Write packed layers {name: (LayerFormat, tensors)} and metadata.json, atomically.
    `also(tmp_dir)` may add files of its own (config, tokenizer, the unpacked rest)."""
    shards = plan_shards({name: tensors for name, (_, tensors) in layers.items()}, max_shard_bytes)
    where = {key: file for file, shard in shards.items() for key in shard}
    meta = {**(metadata or {}),
            "layers": {name: {**dataclasses.asdict(layer), "tensors": {t: where[f"{name}.{t}"] for t in tensors}}
                       for name, (layer, tensors) in layers.items()}}

    def write(tmp: Path) -> None:
        write_shards(shards)(tmp)
        if also:
            also(tmp)

    return write_artifact(Path(directory), PACKED_FORMAT, FORMAT_VERSION, meta, write)


def load_metadata(directory: str | os.PathLike, verify: bool = False) -> dict:
    """metadata.json of a packed artifact, after checking its kind and version."""
    check_not_older(Path(directory))
    return read_metadata(Path(directory), PACKED_FORMAT, FORMAT_VERSION, verify=verify)


def check_not_older(directory: Path) -> None:
    """One line for a packed artifact an older prunepipe wrote (its layout changed since): re-pack.
    Anything else wrong with metadata.json is read_metadata's to name."""
    try:
        meta = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError):
        return
    version = meta.get("version") if isinstance(meta, dict) and meta.get("kind") == PACKED_FORMAT else None
    if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
        raise ArtifactError(f"{directory / METADATA}: {PACKED_FORMAT} version {version} is older than the "
                            f"version {FORMAT_VERSION} this prunepipe reads (docs/formats.md); re-run `dvc repro pack`")


def load_packed_tensors(directory: str | os.PathLike) -> Layers:
    """Read a packed artifact back as {layer: (LayerFormat, tensors)}, verifying every file."""
    metadata = load_metadata(directory, verify=True)
    files = {file for entry in metadata["layers"].values() for file in entry["tensors"].values()}
    if unlisted := files - metadata["files"].keys():
        raise ArtifactError(f"{Path(directory) / METADATA}: layers name unlisted files {sorted(unlisted)}; "
                            "the artifact is altered (re-run the pack stage)")
    loaded = {name: load_file(Path(directory) / name) for name in files}
    return {name: (LayerFormat.from_dict(entry),
                   {tensor: loaded[file][f"{name}.{tensor}"] for tensor, file in entry["tensors"].items()})
            for name, entry in metadata["layers"].items()}
