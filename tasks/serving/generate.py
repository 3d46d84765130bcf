"""Greedy text generation from a loaded model, streamed piece by piece, with its speed.

    stats = generate(model, tokenizer, "prompt", max_new_tokens=64, emit=print_piece)

The model's own `generate()` runs with its KV cache (each step feeds one new token); `emit`
gets the text as the tokenizer finalizes it (whole words where it can).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TextStreamer


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    seconds: float        # the whole generate() call: prefill of the prompt, then decoding

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


class _Streamer(TextStreamer):
    """TextStreamer that hands its text to a callback instead of printing it."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.emit(text + ("\n" if stream_end else ""))


def prompt_ids(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    """(1, T) token ids: the prompt as a user turn of the tokenizer's chat template when `chat`
    and the tokenizer has one, else the text as it is."""
    if chat and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]
    return tokenizer(prompt, return_tensors="pt").input_ids


@torch.inference_mode()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, emit: Callable[[str], None] = lambda text: None,
             chat: bool = True) -> GenerationStats:
    """Greedy decoding of up to max_new_tokens after `prompt` (stops at the end-of-text token)."""
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, prompt, chat).to(device)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         use_cache=True, streamer=_Streamer(tokenizer, emit),
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else tokenizer.eos_token_id)
    seconds = time.perf_counter() - start
    return GenerationStats(ids.shape[1], out.shape[1] - ids.shape[1], seconds)
