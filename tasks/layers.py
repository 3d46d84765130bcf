"""Find the parts of any decoder-only model that sequential pruning needs, without
per-family code.

- the decoder-layer list: the longest nn.ModuleList whose children share one class and
  hold Linear layers (Llama `model.layers`, OPT `model.decoder.layers`, GPT-2 `transformer.h`);
- the prunable modules of a layer: nn.Linear and GPT-2's Conv1D (weight stored transposed);
- each layer's call: positional hidden states plus whatever keyword arguments the model
  passes (attention masks, position ids, rotary embeddings, per-layer-type masks in Gemma 3),
  recorded once by a forward pre-hook and replayed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(is_prunable(m) for m in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__}: no decoder-layer list found (a ModuleList of "
                         "identical blocks holding Linear layers)")
    return best


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_view(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features): GPT-2's Conv1D stores it transposed."""
    return module.weight.data if isinstance(module, nn.Linear) else module.weight.data.t()


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    target = module.weight.data
    target.copy_((weight if isinstance(module, nn.Linear) else weight.t()).to(target.dtype))


def prunable_modules(layer: nn.Module, prefix: str, ignore: tuple[str, ...]) -> dict[str, nn.Module]:
    """Full name → module for the layer's Linear/Conv1D modules not matched by `ignore`."""
    found = {}
    for name, module in layer.named_modules():
        full = f"{prefix}.{name}"
        if is_prunable(module) and not any(fnmatch.fnmatchcase(full, pat) for pat in ignore):
            found[full] = module
    return found


class _Stop(Exception):
    """Raised by the capture hook once layer 0's input is recorded."""


@dataclass
class LayerInputs:
    hidden: list[torch.Tensor]          # one (1, seqlen, hidden) tensor per calibration sample
    kwargs: list[dict]                  # per decoder layer, the keyword arguments it is called with


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def move_kwargs(kwargs: dict, device) -> dict:
    return {key: _to(value, device) for key, value in kwargs.items()}


@torch.no_grad()
def capture_inputs(model: nn.Module, layers: nn.ModuleList, tokens: torch.Tensor,
                   store: torch.device, progress=None) -> LayerInputs:
    """Record the inputs of decoder layer 0 for every sample, and every layer's kwargs.

    The first sample runs through the whole model so that each layer's own kwargs are
    seen (Gemma 3 gives sliding and full attention layers different masks); the others
    stop at layer 0.
    """
    hidden: list[torch.Tensor] = []
    kwargs: list[dict] = [{} for _ in layers]
    first = True

    def record(index):
        def hook(module, args, kw):
            if index == 0:
                hidden.append(args[0].detach().to(store))
            if first:
                kwargs[index] = {k: _detach(v) for k, v in kw.items()
                                 if k not in ("past_key_value", "past_key_values", "use_cache")}
            if not first:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for row in tokens:
            try:
                model(row.unsqueeze(0), use_cache=False)
            except _Stop:
                pass
            first = False
            if progress:
                progress()
    finally:
        for handle in handles:
            handle.remove()
    return LayerInputs(hidden, kwargs)


def layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor (recent transformers) or a tuple led by it."""
    return output[0] if isinstance(output, tuple) else output
