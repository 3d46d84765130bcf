"""Perplexity with the WikiText-2 protocol.

Documents of the held-out split are joined with "\\n\\n" and tokenized once; the stream is
cut into non-overlapping windows of `seqlen` tokens (the tail dropped), each led by BOS
where the model expects one. Perplexity = exp(mean next-token NLL over every predicted
token of every window), computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device,
               progress: Callable[[], None] | None = None) -> float:
    """windows: (n, seqlen) token ids. Returns exp of the mean NLL of tokens 1…seqlen−1."""
    if windows.numel() == 0:
        raise ValueError("no evaluation windows: the held-out text is shorter than one window")
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
