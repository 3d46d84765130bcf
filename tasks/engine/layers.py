"""Find the parts of any decoder-only model that sequential pruning needs, without
per-family code.

- the decoder-layer list: the longest outermost nn.ModuleList whose children share one class
  and hold Linear layers (Llama `model.layers`, OPT `model.decoder.layers`, GPT-2
  `transformer.h`; never a list of experts inside a block);
- the prunable modules of a layer: nn.Linear and GPT-2's Conv1D (weight stored transposed);
- each layer's call: the hidden states plus whatever other arguments the model passes
  (attention masks, position ids, rotary embeddings, per-layer-type masks and rotary in
  Gemma 3; GPT-2 passes its mask positionally), recorded per layer by a forward pre-hook
  as keywords named from the layer's forward signature, and replayed as
  `layer(hidden, **kwargs)`.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from tasks.errors import UserError


class UnsupportedModel(UserError):
    """The model's structure is not one the sequential pass can walk (model.source)."""


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, list) of the decoder layers. Lists nested inside another candidate's
    blocks (per-expert Linears of a mixture-of-experts layer) are not candidates themselves;
    among the rest the longest wins, the first found on a tie."""
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(is_prunable(m) for m in module[0].modules()):
            continue
        candidates.append((name, module))
    outer = [(name, module) for name, module in candidates
             if not any(other and name.startswith(other + ".") for other, _ in candidates)]
    best = max(outer, key=lambda item: len(item[1]), default=None)
    if best is None:
        raise UnsupportedModel(f"model.source: {type(model).__name__} has no decoder-layer list (a ModuleList of "
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


def _map(value, fn):
    """Apply fn to every tensor in a (nested) tuple/list/dict; other values pass through."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):      # a namedtuple
        return type(value)(*(_map(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _detach(value):
    return _map(value, torch.Tensor.detach)


def _to(value, device):
    return _map(value, lambda t: t.to(device))


def move_kwargs(kwargs: dict, device) -> dict:
    return {key: _to(value, device) for key, value in kwargs.items()}


# Not replayed: the KV cache and its switch (pruning runs each layer once per sample).
_DROPPED = frozenset({"past_key_value", "past_key_values", "layer_past", "use_cache"})


def split_call(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """Split a call of a decoder layer into (hidden states, every other argument as a
    keyword), so that `module(hidden, **keywords)` repeats the call.

    Some layers take more positional arguments (GPT-2's block gets the cache, the attention
    mask and the encoder states positionally) or the hidden states as a keyword; both are
    named from the forward signature. The KV cache and `use_cache` are dropped.
    """
    named = dict(kwargs)
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if args:
        hidden, rest = args[0], args[1:]
    elif params and params[0].name in named:
        hidden, rest = named.pop(params[0].name), ()
    else:
        raise UnsupportedModel(f"model.source: {type(module).__name__} was called without hidden states as its "
                               "first argument")
    if rest:
        if len(args) > len(params) or any(p.kind is p.POSITIONAL_ONLY for p in params[1:len(args)]):
            raise UnsupportedModel(f"model.source: {type(module).__name__} is called with {len(args)} positional "
                                   f"arguments that cannot all be passed by name "
                                   f"(forward{inspect.signature(module.forward)})")
        for param, value in zip(params[1:], rest):
            if param.name in named:
                raise UnsupportedModel(f"model.source: {type(module).__name__}: argument {param.name!r} given twice")
            named[param.name] = value
    return hidden, {key: _detach(value) for key, value in named.items() if key not in _DROPPED}


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
            if index == 0 or first:
                states, keywords = split_call(module, args, kw)
            if index == 0:
                hidden.append(states.detach().to(store))
            if first:
                kwargs[index] = keywords
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
