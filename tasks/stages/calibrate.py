"""Stage `calibrate`: `calibration.nsamples` random windows of the corpus's training split,
tokenized by the model's tokenizer → data/calibration/: tokens.safetensors holding input_ids
(nsamples, seqlen) int64, which prune and quantize read with `load_calibration`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from tasks.io.artifacts import artifact_digest, read_metadata, write_artifact
from tasks.io.model import MODEL_KIND, MODEL_VERSION, check_seqlen, expects_bos
from tasks.stages.common import StageContext
from tasks.text import corpus

if TYPE_CHECKING:
    from tasks.config import CalibrationConfig

KIND, VERSION, TOKENS = "calibration", 1, "tokens.safetensors"


def calibrate(cfg: CalibrationConfig, *, model: Path, out: Path, ctx: StageContext) -> Path:
    read_metadata(model, MODEL_KIND, MODEL_VERSION, verify=False)
    check_seqlen(cfg.seqlen, model, "calibration.seqlen")
    tokenizer = AutoTokenizer.from_pretrained(model)
    docs = corpus.load_split(cfg.dataset, "train")
    stream = corpus.tokenize_documents(docs, tokenizer)
    ctx.log(f"calibration split: {len(docs)} documents, {stream.numel()} tokens")
    bos = tokenizer.bos_token_id if expects_bos(tokenizer) else None
    tokens = corpus.sample_windows(stream, cfg.nsamples, cfg.seqlen, cfg.seed, bos)
    meta = {"config": cfg.model_dump(mode="json"), "key": ctx.key,
            "inputs": {"model": artifact_digest(model)}, "train_tokens": stream.numel()}
    return write_artifact(out, KIND, VERSION, meta,
                          lambda tmp: save_file({"input_ids": tokens.contiguous()}, tmp / TOKENS))


def load_calibration(directory: Path) -> torch.Tensor:
    read_metadata(directory, KIND, VERSION)
    return load_file(directory / TOKENS)["input_ids"]
