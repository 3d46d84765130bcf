"""Packed-model artifact on disk: safetensors shards plus metadata.json, written atomically.

    <dir>/model.safetensors                      (or model-00001-of-0000S.safetensors, …)
          tensor "<layer>.<tensor>", e.g. "model.layers.0.mlp.up_proj.qweight"
    <dir>/metadata.json
          {"format": "prunepipe-packed", "version": 1,
           "layers": {layer: {LayerFormat fields…, "tensors": {tensor: file}}},
           "files":  {file: sha256 hex},
           "extra":  {…caller's metadata…}}

A layer's tensors always share one shard. Loading checks the version and every file's
sha256 before reading, so an altered or truncated file fails loudly, naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasks.pack import FORMAT_VERSION, LayerFormat

PACKED_FORMAT = "prunepipe-packed"
METADATA_FILE = "metadata.json"
MAX_SHARD_BYTES = 4 << 30

Layers = dict[str, tuple[LayerFormat, dict[str, torch.Tensor]]]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `directory` to fill; on success it replaces `directory`.

    Readers never see a half-written directory; on error the temporary one is removed.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            # a non-empty directory cannot be renamed over: move the old one aside first
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shard_names(count: int) -> list[str]:
    """Hugging Face file names: model.safetensors, or model-0000i-of-0000S.safetensors."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(
    directory: Path, units: dict[str, dict[str, torch.Tensor]], max_shard_bytes: int = MAX_SHARD_BYTES
) -> dict[str, str]:
    """Write units (prefix → {name: tensor}) as safetensors shards; tensor key "<prefix>.<name>"
    ("<name>" for prefix ""). A unit is never split across shards; tensors must not share
    memory (safetensors refuses, e.g. tied embeddings: pass them once).
    Returns {full tensor key: file name}.
    """
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for prefix, tensors in units.items():
        unit_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if shards[-1] and size + unit_bytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1].update({f"{prefix}.{name}" if prefix else name: t.contiguous() for name, t in tensors.items()})
        size += unit_bytes
    where = {}
    for name, shard in zip(shard_names(len(shards)), shards):
        save_file(shard, directory / name, metadata={"format": "pt"})
        where |= dict.fromkeys(shard, name)
    return where


def save_packed(
    directory: str | os.PathLike,
    layers: Layers,
    extra_metadata: dict | None = None,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write packed layers {name: (LayerFormat, tensors)} and metadata.json, atomically."""
    with atomic_directory(directory) as tmp:
        where = write_shards(tmp, {name: tensors for name, (_, tensors) in layers.items()}, max_shard_bytes)
        metadata = {
            "format": PACKED_FORMAT,
            "version": FORMAT_VERSION,
            "layers": {
                name: {**dataclasses.asdict(layer), "tensors": {t: where[f"{name}.{t}"] for t in tensors}}
                for name, (layer, tensors) in layers.items()
            },
            "files": {f: sha256_file(tmp / f) for f in sorted(set(where.values()))},
            "extra": extra_metadata or {},
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return Path(directory)


def load_metadata(directory: str | os.PathLike) -> dict:
    """metadata.json of a packed artifact, after checking its format name and version."""
    path = Path(directory) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no packed-model metadata here") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is altered or truncated") from None
    if not isinstance(metadata, dict) or metadata.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path}: not a prunepipe packed model (format must be {PACKED_FORMAT!r})")
    if metadata.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: packed format version {metadata.get('version')!r} is not supported; "
            f"this prunepipe reads version {FORMAT_VERSION}"
        )
    return metadata


def verify_files(directory: str | os.PathLike, metadata: dict) -> None:
    """Raise ValueError naming the first file that is missing or whose sha256 differs."""
    for name, expected in metadata["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            raise ValueError(f"{path}: file listed in {METADATA_FILE} is missing")
        if sha256_file(path) != expected:
            raise ValueError(f"{path}: sha256 does not match {METADATA_FILE}; the file is altered or truncated")


def load_packed_tensors(directory: str | os.PathLike) -> Layers:
    """Read a packed artifact back as {layer: (LayerFormat, tensors)}, verifying every file."""
    metadata = load_metadata(directory)
    verify_files(directory, metadata)
    files = {name: load_file(Path(directory) / name) for name in metadata["files"]}
    layers = {}
    for name, entry in metadata["layers"].items():
        tensors = {}
        for tensor, file in entry["tensors"].items():
            if file not in files:
                raise ValueError(f"{Path(directory) / METADATA_FILE}: layer {name} names unlisted file {file}")
            tensors[tensor] = files[file][f"{name}.{tensor}"]
        layers[name] = (LayerFormat.from_dict(entry), tensors)
    return layers
