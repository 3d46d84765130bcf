"""The stages as plain functions: read input artifacts → call the algorithm → write the output
artifact → return its path. flows/ wraps each in a Prefect task; tests call them directly.

Artifacts (all under data/, each with metadata.json, see tasks/artifacts.py):
    data/model/        Hugging Face folder: config, tokenizer, model.safetensors
    data/calibration/  tokens.safetensors: input_ids (nsamples, seqlen) int64
    data/eval_dense/   perplexity.json of the unpruned model
    data/pruned/       Hugging Face folder of the pruned model + layers.json (per-Linear report)
"""

from __future__ import annotations

import hashlib
import json
import resource
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasks import corpus
from tasks.artifacts import ArtifactError, artifact_digest, read_metadata, write_artifact
from tasks.config import CalibrationConfig, EvaluateConfig, ModelConfig, PruneConfig
from tasks.evaluate import perplexity
from tasks.model import (ModelSourceError, check_finite, context_length, expects_bos, load_model_dir,
                         load_source, resolve_source, save_model)
from tasks.prune import prune_model

Log = Callable[[str], None]
Progress = Callable[[int, str], Callable[[], None]]
CALIBRATION_KIND, EVAL_KIND, VERSION = "calibration", "perplexity", 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def code_digest() -> str:
    """sha256 over the library's source: a code change invalidates every cached stage."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def stage_key(section: dict, inputs: list[Path]) -> str:
    """Cache key of a stage run: its config section, its inputs' digests and the code."""
    payload = json.dumps({"config": section, "inputs": [artifact_digest(p) for p in inputs],
                          "code": code_digest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def output_matches(out: Path, key: str) -> bool:
    """True when `out` is a complete artifact written for exactly this key, files intact."""
    try:
        meta = json.loads((Path(out) / "metadata.json").read_text())
        return meta.get("key") == key and bool(read_metadata(out, meta["kind"], meta["version"]))
    except (OSError, ValueError, KeyError, ArtifactError):
        return False


def peak_host_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _bos_id(tokenizer, add_bos: str) -> int | None:
    wanted = expects_bos(tokenizer) if add_bos == "auto" else add_bos == "true"
    if wanted and tokenizer.bos_token_id is None:
        raise ValueError("evaluate.add_bos = 'true' but the tokenizer has no BOS token")
    return tokenizer.bos_token_id if wanted else None


def build_model(cfg: ModelConfig, out: Path, log: Log) -> Path:
    src = resolve_source(cfg.source)
    log(f"loading {src.kind} model from {src.location} {src.gguf_file or ''}")
    model, tokenizer = load_source(src, _DTYPES[cfg.dtype], cfg.trust_remote_code)
    check_finite(model, f"model.source = {cfg.source!r}")
    meta = {"config": cfg.model_dump(mode="json"), "source": asdict(src), "key": stage_key(cfg.model_dump(mode="json"), []),
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    return save_model(model, tokenizer, out, meta)


def calibrate(cfg: CalibrationConfig, model_dir: Path, out: Path, log: Log) -> Path:
    read_metadata(model_dir, "model", 1, verify=False)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = corpus.load_split(cfg.dataset, "train")
    stream = corpus.tokenize_documents(docs, tokenizer)
    log(f"calibration split: {len(docs)} documents, {stream.numel()} tokens")
    tokens = corpus.sample_windows(stream, cfg.nsamples, cfg.seqlen, cfg.seed, _bos_id(tokenizer, "auto"))
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key(cfg.model_dump(mode="json"), [model_dir]),
            "inputs": {"model": artifact_digest(model_dir)}, "train_tokens": stream.numel()}
    return write_artifact(out, CALIBRATION_KIND, VERSION, meta,
                          lambda tmp: save_file({"input_ids": tokens.contiguous()}, tmp / "tokens.safetensors"))


def load_calibration(directory: Path) -> torch.Tensor:
    read_metadata(directory, CALIBRATION_KIND, VERSION)
    return load_file(directory / "tokens.safetensors")["input_ids"]


def check_seqlen(seqlen: int, model, key: str) -> None:
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise ModelSourceError(f"{key} = {seqlen} exceeds the model's context of {limit} tokens")


def prune(cfg: PruneConfig, model_dir: Path, calibration_dir: Path, out: Path, log: Log,
          progress: Progress | None = None) -> Path:
    model, tokenizer, model_meta = load_model_dir(model_dir)
    tokens = load_calibration(calibration_dir)
    report = prune_model(model, tokens, cfg, log, progress)
    records = [asdict(r) for r in report.records]
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key(cfg.model_dump(mode="json"), [model_dir, calibration_dir]),
            "inputs": {"model": artifact_digest(model_dir), "calibration": artifact_digest(calibration_dir)},
            "prune_seconds": report.seconds, "peak_device_bytes": report.peak_device_bytes,
            "peak_host_bytes": peak_host_bytes()}

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "layers.json").write_text(json.dumps(records, indent=1) + "\n")

    log(f"pruned {len(records)} Linear layers in {report.seconds:.1f} s")
    return write_artifact(out, "model", 1, meta, write)


def evaluation_windows(cfg: EvaluateConfig, tokenizer) -> torch.Tensor:
    stream = corpus.tokenize_documents(corpus.load_split(cfg.dataset, "test"), tokenizer)
    windows = corpus.windows(stream, cfg.seqlen, _bos_id(tokenizer, cfg.add_bos))
    return windows[: cfg.max_windows] if cfg.max_windows else windows


def evaluate_model(cfg: EvaluateConfig, model_dir: Path, out: Path, log: Log,
                   progress: Progress | None = None) -> Path:
    """Perplexity of one model artifact on the held-out split → out/perplexity.json."""
    model, tokenizer, _ = load_model_dir(model_dir)
    check_seqlen(cfg.seqlen, model, "evaluate.seqlen")
    windows = evaluation_windows(cfg, tokenizer)
    tick = progress(-(-len(windows) // cfg.batch_size), f"perplexity {model_dir.name}") if progress else None
    ppl = perplexity(model, windows, cfg.batch_size, torch.device(cfg.device), tick)
    log(f"{model_dir}: perplexity {ppl:.3f} over {windows.numel()} tokens")
    result = {"perplexity": ppl, "windows": len(windows), "tokens": windows.numel()}
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key(cfg.model_dump(mode="json"), [model_dir]),
            "inputs": {"model": artifact_digest(model_dir)}, **result}
    return write_artifact(out, EVAL_KIND, VERSION, meta,
                          lambda tmp: (tmp / "perplexity.json").write_text(json.dumps(result, indent=2) + "\n"))


def read_perplexity(directory: Path) -> float:
    return read_metadata(directory, EVAL_KIND, VERSION)["perplexity"]
