"""The stages as plain functions: read input artifacts → call the algorithm → write the output
artifact → return its path. flows/ wraps each in a Prefect task; tests call them directly.

Artifacts (all under data/, each with metadata.json, see tasks/io/artifacts.py):
    data/model/        Hugging Face folder: config, tokenizer, model.safetensors
    data/calibration/  tokens.safetensors: input_ids (nsamples, seqlen) int64
    data/eval_dense/   perplexity.json of the unpruned model
    data/pruned/       Hugging Face folder of the pruned model + layers.json (per-Linear report)
    data/quantized/    Hugging Face folder of the fake-quantized model + codes.safetensors
    data/packed/       packed Linears (tasks/formats/artifact.py) + rest.safetensors + config, tokenizer
    data/eval_*/       perplexity.json of the dense, pruned, quantized and packed models
"""

from __future__ import annotations

import hashlib
import json
import resource
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from tasks.io import corpus
from tasks.formats.artifact import PACKED_FORMAT, save_packed
from tasks.io.artifacts import ArtifactError, artifact_digest, read_metadata, write_artifact
from tasks.config import CalibrationConfig, EvaluateConfig, ModelConfig, PackConfig, PruneConfig, QuantizeConfig
from tasks.errors import UserError
from tasks.reports.perplexity import perplexity
from tasks.quantization.gptq import spec_of
from tasks.quantization.quantizers import check_group_size, quantize_model
from tasks.engine.layers import find_decoder_layers, prunable_modules, weight_view
from tasks.engine.memory import check_memory, sequential_estimate
from tasks.io.model import (ModelSourceError, check_finite, context_length, expects_bos, load_model_dir,
                         load_source, resolve_source, save_model)
from tasks.formats.packing import DTYPES, pack_weight
from tasks.formats.packed_model import REST_FILE, decode_packed, load_packed
from tasks.pruning.patterns import NM as NMPattern
from tasks.pruning.pruners import NEEDS_HESSIAN, check_prunable, prune_model
from tasks.quantization.grid import Quantized

Log = Callable[[str], None]
Progress = Callable[[int, str], Callable[[], None]]
CALIBRATION_KIND, EVAL_KIND, VERSION = "calibration", "perplexity", 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def code_digest() -> str:
    """sha256 over the library's source: a code change invalidates every cached stage."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def stage_key(configs: dict[str, BaseModel], inputs: list[Path]) -> str:
    """Cache key of a stage run: its config sections (by parameter name), its inputs'
    digests and the code. flows/stages.py derives the same key from a task's parameters."""
    payload = json.dumps({"config": {name: cfg.model_dump(mode="json") for name, cfg in configs.items()},
                          "inputs": [artifact_digest(p) for p in inputs], "code": code_digest()}, sort_keys=True)
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
        raise UserError("evaluate.add_bos = 'true' but the tokenizer has no BOS token")
    return tokenizer.bos_token_id if wanted else None


def build_model(cfg: ModelConfig, out: Path, log: Log) -> Path:
    src = resolve_source(cfg.source)
    log(f"loading {src.kind} model from {src.location} {src.gguf_file or ''}")
    model, tokenizer = load_source(src, _DTYPES[cfg.dtype], cfg.trust_remote_code)
    check_finite(model, f"model.source = {cfg.source!r}")
    meta = {"config": cfg.model_dump(mode="json"), "source": asdict(src), "key": stage_key({"cfg": cfg}, []),
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    return save_model(model, tokenizer, out, meta)


def calibrate(cfg: CalibrationConfig, model_dir: Path, out: Path, log: Log) -> Path:
    read_metadata(model_dir, "model", 1, verify=False)
    check_seqlen(cfg.seqlen, model_dir, "calibration.seqlen")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = corpus.load_split(cfg.dataset, "train")
    stream = corpus.tokenize_documents(docs, tokenizer)
    log(f"calibration split: {len(docs)} documents, {stream.numel()} tokens")
    tokens = corpus.sample_windows(stream, cfg.nsamples, cfg.seqlen, cfg.seed, _bos_id(tokenizer, "auto"))
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key({"cfg": cfg}, [model_dir]),
            "inputs": {"model": artifact_digest(model_dir)}, "train_tokens": stream.numel()}
    return write_artifact(out, CALIBRATION_KIND, VERSION, meta,
                          lambda tmp: save_file({"input_ids": tokens.contiguous()}, tmp / "tokens.safetensors"))


def load_calibration(directory: Path) -> torch.Tensor:
    read_metadata(directory, CALIBRATION_KIND, VERSION)
    return load_file(directory / "tokens.safetensors")["input_ids"]


def check_seqlen(seqlen: int, model_dir: Path, key: str) -> None:
    from transformers import AutoConfig

    limit = context_length(AutoConfig.from_pretrained(model_dir))
    if limit is not None and seqlen > limit:
        raise ModelSourceError(f"{key} = {seqlen} exceeds the model's context of {limit} tokens")


def layer_records(records) -> list[dict]:
    """The per-Linear report that goes into an artifact: everything but the timings."""
    return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in records]


def seconds_per_layer(records) -> list[float]:
    layers: dict[int, float] = {}
    for r in records:
        layers[r.layer] = layers.get(r.layer, 0.0) + r.seconds
    return [round(layers[i], 3) for i in sorted(layers)]


def write_run_stats(path: Path | None, stats: dict) -> None:
    """Seconds and peak memory of a stage run. Kept outside the artifact, so that the same
    params and seed give a byte-identical artifact (and DVC hash) on every run."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**stats, "peak_host_bytes": peak_host_bytes()}, indent=2) + "\n")


def prune(cfg: PruneConfig, model_dir: Path, calibration_dir: Path, out: Path, log: Log,
          progress: Progress | None = None, run_stats: Path | None = None) -> Path:
    tokens = load_calibration(calibration_dir)
    need = sequential_estimate(model_dir, *tokens.shape, cfg.batch_size, cfg.device, cfg.offload_activations,
                               cfg.method in NEEDS_HESSIAN)
    check_memory(need, cfg.device, f"prune ({cfg.method})")
    model, tokenizer, _ = load_model_dir(model_dir)
    check_prunable(model, cfg, log)
    report = prune_model(model, tokens, cfg, log, progress)
    records = layer_records(report.records)
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key({"cfg": cfg}, [model_dir, calibration_dir]),
            "inputs": {"model": artifact_digest(model_dir), "calibration": artifact_digest(calibration_dir)}}
    write_run_stats(run_stats, {"prune_seconds": report.seconds, "peak_device_bytes": report.peak_device_bytes,
                                "solve_seconds_per_layer": seconds_per_layer(report.records)})

    write = _save_hf(model, tokenizer, records)
    log(f"pruned {len(records)} Linear layers in {report.seconds:.1f} s")
    return write_artifact(out, "model", 1, meta, write)


def _save_hf(model, tokenizer, records: list[dict]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "layers.json").write_text(json.dumps(records, indent=1) + "\n")
    return write


def quantize(cfg: QuantizeConfig, prune_cfg: PruneConfig, model_dir: Path, pruned_dir: Path,
             calibration_dir: Path, out: Path, log: Log, progress: Progress | None = None,
             run_stats: Path | None = None) -> Path:
    """Quantize the pruned model (or, with `joint`, prune and quantize the dense one)."""
    source = model_dir if cfg.joint else pruned_dir
    tokens = load_calibration(calibration_dir)
    if cfg.method == "gptq":
        check_memory(sequential_estimate(source, *tokens.shape, prune_cfg.batch_size, cfg.device,
                                         prune_cfg.offload_activations, True),
                     cfg.device, "quantize (gptq)")
    model, tokenizer, _ = load_model_dir(source)
    check_group_size(model, cfg)
    quantized, records, seconds, peak = {}, json.loads((pruned_dir / "layers.json").read_text()), 0.0, 0
    if cfg.method != "none":
        report = quantize_model(model, tokens, cfg, prune_cfg, log, progress)
        quantized, seconds, peak = report.quantized, report.seconds, report.peak_device_bytes
        records = layer_records(report.records) if cfg.joint else records
    section = {"quantize": cfg.model_dump(mode="json"), "prune": prune_cfg.model_dump(mode="json")}
    inputs = [model_dir, pruned_dir, calibration_dir]
    meta = {"config": section, "key": stage_key({"cfg": cfg, "prune_cfg": prune_cfg}, inputs),
            "inputs": {p.name: artifact_digest(p) for p in inputs}}
    write_run_stats(run_stats, {"quantize_seconds": seconds, "peak_device_bytes": peak})
    codes = {f"{name}.{part}": getattr(q, part).contiguous()
             for name, q in quantized.items() for part in ("codes", "scales", "zeros")}

    def write(tmp: Path) -> None:
        _save_hf(model, tokenizer, records)(tmp)
        if codes:
            save_file(codes, tmp / "codes.safetensors")

    log(f"quantized {len(quantized)} Linear layers ({cfg.method}) in {seconds:.1f} s")
    return write_artifact(out, "model", 1, meta, write)


def load_codes(quantized_dir: Path, cfg: QuantizeConfig) -> dict[str, Quantized]:
    path = quantized_dir / "codes.safetensors"
    if not path.is_file():
        return {}
    flat = load_file(path)
    spec = spec_of(cfg)
    names = {key.rsplit(".", 1)[0] for key in flat}
    return {name: Quantized(flat[f"{name}.codes"], flat[f"{name}.scales"], flat[f"{name}.zeros"], spec)
            for name in names}


def pack(cfg: PackConfig, quantize_cfg: QuantizeConfig, prune_cfg: PruneConfig, quantized_dir: Path,
         out: Path, log: Log) -> Path:
    """Pack every decoder Linear of the quantized model in `cfg.format`; the rest stays as is."""
    model, tokenizer, _ = load_model_dir(quantized_dir)
    codes = load_codes(quantized_dir, quantize_cfg)
    nm = (prune_cfg.pattern.n, prune_cfg.pattern.m) if isinstance(prune_cfg.pattern, NMPattern) else None
    prefix, layers = find_decoder_layers(model)
    packed = {}
    for index, layer in enumerate(layers):
        for name, module in prunable_modules(layer, f"{prefix}.{index}", ()).items():
            W = weight_view(module)
            packed[name] = pack_weight(W, cfg.format, mask=W == 0, quantized=codes.get(name), nm=nm,
                                       dtype=DTYPES[cfg.dtype])
    packed_bytes = sum(t.numel() * t.element_size() for _, tensors in packed.values() for t in tensors.values())
    weights = sum(layer.shape[0] * layer.shape[1] for layer, _ in packed.values())
    rest = {k: v for k, v in model.state_dict().items() if k.removesuffix(".weight") not in packed}
    if getattr(model.config, "tie_word_embeddings", False):
        rest.pop("lm_head.weight", None)   # tied to the embeddings: stored once
    section = {"pack": cfg.model_dump(mode="json"), "quantize": quantize_cfg.model_dump(mode="json"),
               "prune": prune_cfg.model_dump(mode="json")}
    key = stage_key({"cfg": cfg, "quantize_cfg": quantize_cfg, "prune_cfg": prune_cfg}, [quantized_dir])
    meta = {"config": section, "key": key,
             "bytes_per_weight": packed_bytes / weights, "packed_bytes": packed_bytes, "weights": weights}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in rest.items()}, tmp / REST_FILE)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    log(f"packed {len(packed)} Linear layers as {cfg.format}: {meta['bytes_per_weight']:.4f} bytes per weight")
    return save_packed(out, packed, meta, also=write)


def load_any_model(directory: Path):
    """A model artifact (Hugging Face folder) or a packed one, with its tokenizer."""
    from transformers import AutoTokenizer

    meta = directory / "metadata.json"
    if meta.is_file() and json.loads(meta.read_text()).get("kind") == PACKED_FORMAT:
        return decode_packed(load_packed(directory)), AutoTokenizer.from_pretrained(directory)
    model, tokenizer, _ = load_model_dir(directory)
    return model, tokenizer


def evaluation_windows(cfg: EvaluateConfig, tokenizer) -> torch.Tensor:
    stream = corpus.tokenize_documents(corpus.load_split(cfg.dataset, "test"), tokenizer)
    windows = corpus.windows(stream, cfg.seqlen, _bos_id(tokenizer, cfg.add_bos))
    return windows[: cfg.max_windows] if cfg.max_windows else windows


def evaluate_model(cfg: EvaluateConfig, model_dir: Path, out: Path, log: Log,
                   progress: Progress | None = None) -> Path:
    """Perplexity of one model artifact on the held-out split → out/perplexity.json."""
    check_seqlen(cfg.seqlen, model_dir, "evaluate.seqlen")
    model, tokenizer = load_any_model(model_dir)
    windows = evaluation_windows(cfg, tokenizer)
    tick = progress(-(-len(windows) // cfg.batch_size), f"perplexity {model_dir.name}") if progress else None
    ppl = perplexity(model, windows, cfg.batch_size, torch.device(cfg.device), tick)
    log(f"{model_dir}: perplexity {ppl:.3f} over {windows.numel()} tokens")
    result = {"perplexity": ppl, "windows": len(windows), "tokens": windows.numel()}
    meta = {"config": cfg.model_dump(mode="json"), "key": stage_key({"cfg": cfg}, [model_dir]),
            "inputs": {"model": artifact_digest(model_dir)}, **result}
    return write_artifact(out, EVAL_KIND, VERSION, meta,
                          lambda tmp: (tmp / "perplexity.json").write_text(json.dumps(result, indent=2) + "\n"))


def read_perplexity(directory: Path) -> float:
    return read_metadata(directory, EVAL_KIND, VERSION)["perplexity"]
