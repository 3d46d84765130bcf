"""Perplexity with the WikiText-2 protocol, and the eval artifact that holds it (with the
zero-shot accuracies of tasks/evaluation/zero_shot.py where evaluate.tasks names any).

Documents of the held-out split are joined with "\\n\\n" and tokenized once; the stream is
cut into non-overlapping windows of `seqlen` tokens (the tail dropped), each led by BOS
where the model expects one. Perplexity = exp(mean next-token NLL over every predicted
token of every window), computed in float64.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from tasks.errors import UserError
from tasks.text import corpus
from tasks.io.artifacts import artifact_digest, read_metadata, write_artifact
from tasks.io.model import expects_bos

if TYPE_CHECKING:
    from tasks.evaluation.zero_shot import Scores

KIND, VERSION = "perplexity", 1


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device,
               progress: Callable[[], None] | None = None) -> float:
    """windows: (n, seqlen) token ids. Returns exp of the mean NLL of tokens 1…seqlen−1."""
    if windows.numel() == 0:
        raise UserError("no evaluation windows: the held-out text is shorter than one evaluate.seqlen window")
    model.to(device)
    total_nll = 0.0
    total_tokens = 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits[:, :-1].float()     # (b, seqlen-1, vocab)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        if not torch.isfinite(nll):
            raise FloatingPointError("the model produced a non-finite loss (NaN/Inf logits)")
        total_nll += float(nll.double())
        total_tokens += batch[:, 1:].numel()
        if progress:
            progress()
    return math.exp(total_nll / total_tokens)


def bos_id(tokenizer, add_bos: bool | str) -> int | None:
    """The BOS id to lead every window with, or None; add_bos "auto" asks the tokenizer."""
    wanted = expects_bos(tokenizer) if add_bos == "auto" else add_bos
    if wanted and tokenizer.bos_token_id is None:
        raise UserError("evaluate.add_bos = true but the tokenizer has no BOS token")
    return tokenizer.bos_token_id if wanted else None


def evaluation_windows(cfg, tokenizer) -> torch.Tensor:
    """The held-out windows of the `evaluate` section (cfg: EvaluateConfig)."""
    stream = corpus.tokenize_documents(corpus.load_split(cfg.dataset, "test"), tokenizer)
    windows = corpus.windows(stream, cfg.seqlen, bos_id(tokenizer, cfg.add_bos))
    return windows[: cfg.max_windows] if cfg.max_windows else windows


def measure(cfg, model: nn.Module, tokenizer, model_dir: Path, out: Path, ctx, scores: Scores | None = None) -> Path:
    """Perplexity of `model` (loaded from the artifact `model_dir`) → out/perplexity.json, with
    `scores`' accuracies (zero_shot.score) where given. cfg: EvaluateConfig;
    ctx: tasks/stages/common.StageContext."""
    windows = evaluation_windows(cfg, tokenizer)
    tick = ctx.progress(-(-len(windows) // cfg.batch_size), f"perplexity {model_dir.name}") if ctx.progress else None
    ppl = perplexity(model, windows, cfg.batch_size, torch.device(cfg.device), tick)
    ctx.log(f"{model_dir}: perplexity {ppl:.3f} over {windows.numel()} tokens")
    result = {"perplexity": ppl, "windows": len(windows), "tokens": windows.numel()}
    if scores is not None:
        for task, acc in scores.accuracy.items():
            ctx.log(f"{model_dir}: {task} accuracy {acc:.4f} over {scores.items[task]} items")
        result |= {"accuracy": scores.accuracy, "items": scores.items}
    meta = {"config": cfg.model_dump(mode="json"), "key": ctx.key, "inputs": {"model": artifact_digest(model_dir)},
            **result}
    return write_artifact(out, KIND, VERSION, meta,
                          lambda tmp: (tmp / "perplexity.json").write_text(json.dumps(result, indent=2) + "\n"))


def read_perplexity(directory: Path) -> float:
    return read_metadata(directory, KIND, VERSION)["perplexity"]


def read_accuracy(directory: Path) -> dict[str, float]:
    """Task → zero-shot accuracy of an eval artifact ({} when it scored no task)."""
    return read_metadata(directory, KIND, VERSION).get("accuracy", {})
