"""Stage `model`: resolve `model.source`, load it as a float causal LM, write data/model/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tasks.io.model import check_finite, load_source, resolve_source, save_model
from tasks.stages.common import StageContext

if TYPE_CHECKING:
    from tasks.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model(cfg: ModelConfig, *, out: Path, ctx: StageContext) -> Path:
    src = resolve_source(cfg.source, cfg.allow_pickle)
    ctx.log(f"loading {src.kind} model from {src.location} {src.gguf_file or ''}")
    loaded, tokenizer = load_source(src, DTYPES[cfg.dtype], cfg.trust_remote_code, cfg.allow_pickle)
    check_finite(loaded, f"model.source = {cfg.source!r}")
    meta = {"config": cfg.model_dump(mode="json"), "source": src.record(cfg.source), "key": ctx.key,
            "architecture": type(loaded).__name__, "parameters": sum(p.numel() for p in loaded.parameters())}
    return save_model(loaded, tokenizer, out, meta)
