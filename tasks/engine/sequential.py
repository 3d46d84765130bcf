"""The sequential layer-by-layer pass that pruning and GPTQ share, as the SparseGPT and Wanda
papers run it.

Capture the inputs of the first decoder layer for every calibration sample; then, for each
decoder layer in turn: move it to the compute device, run the samples through it once with
forward hooks accumulating each Linear's input statistics (Linears fed the same tensor,
such as q/k/v and gate/up, share one accumulator), apply an operation to every Linear
(prune it, quantize it), and run the samples through the updated layer to produce the next
layer's inputs. Only one decoder layer, its activations and its statistics live on the
device; the rest of the model stays on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tasks.engine.layers import (capture_inputs, find_decoder_layers, layer_output, move_kwargs, prunable_modules,
                                 set_weight, weight_view)

if TYPE_CHECKING:
    from tasks.config import SequentialConfig


class InputStats:
    """Running statistics of one Linear's input X (tokens, cols), accumulated in float32.

    sumsq_j = Σ_t x_tj² (Wanda's ‖X_j‖₂²); H = 2·XᵀX / n as a running mean (SparseGPT).
    """

    def __init__(self, cols: int, device: torch.device, hessian: bool):
        self.count = 0
        self.sumsq = torch.zeros(cols, dtype=torch.float32, device=device)
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()                    # (tokens, cols)
        tokens = x.shape[0]
        self.sumsq += (x * x).sum(0)
        if self.hessian is not None:
            self.hessian *= self.count / (self.count + tokens)
            x = x * (2.0 / (self.count + tokens)) ** 0.5
            self.hessian += x.T @ x
        self.count += tokens


@dataclass(frozen=True)
class LinearRecord:
    layer: int
    name: str          # full module name, e.g. model.layers.3.self_attn.q_proj
    kind: str          # last name component, e.g. q_proj
    rows: int
    cols: int
    sparsity: float    # measured fraction of zeros
    seconds: float
    target: float | None = None   # the layer's sparsity target (varies per layer under OWL)


@torch.no_grad()
def collect_stats(layer: nn.Module, modules: dict[str, nn.Module], hidden: list[torch.Tensor],
                  kwargs: dict, device: torch.device, hessian: bool) -> dict[str, InputStats]:
    """One pass of the samples through `layer`; module name → statistics of its input."""
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
               for name, module in modules.items()]
    owner: dict[str, str] = {}
    stats: dict[str, InputStats] = {}
    try:
        for h in hidden:
            seen.clear()
            layer(h.to(device), **kwargs)
            if not owner:  # modules whose input is the very same tensor share one accumulator
                first_by_input: dict[tuple, str] = {}
                owner = {name: first_by_input.setdefault((x.data_ptr(), tuple(x.shape)), name)
                         for name, x in seen.items()}
                stats = {name: InputStats(seen[name].shape[-1], device, hessian) for name in set(owner.values())}
            for name, acc in stats.items():
                acc.add(seen[name])
    finally:
        for handle in handles:
            handle.remove()
    return {name: stats[owner[name]] for name in modules}


LinearOp = Callable[[int, str, torch.Tensor, InputStats], torch.Tensor]


@dataclass(frozen=True)
class Sequential:
    """Where and how the layer-by-layer pass runs."""

    device: torch.device
    store: torch.device            # where calibration activations live between layers
    ignore: tuple[str, ...] = ()
    hessian: bool = False          # accumulate H = 2XXᵀ/n (SparseGPT, GPTQ), not only ‖X_j‖²
    batch: int = 8                 # calibration samples per layer call: larger matmuls, same sums


@torch.no_grad()
def run_sequential(model: nn.Module, tokens: torch.Tensor, how: Sequential, op: LinearOp,
                   progress=None, label: str = "layers") -> list[LinearRecord]:
    """The sequential pass: for each decoder layer, input statistics of its Linears from one
    forward pass, `op(layer_index, name, W (rows, cols) float32, stats) → new W` for each, then
    the updated layer's outputs become the next layer's inputs. All calibration rows share
    one length and no padding, so the masks recorded from row 0 hold for every row."""
    model.eval()  # dropout (OPT, GPT-2) would make the statistics noisy
    prefix, layers = find_decoder_layers(model)
    tick = progress(len(tokens), "capture layer-0 inputs") if progress else None
    inputs = capture_inputs(model, layers, tokens, store=how.store, progress=tick)
    # Samples travel through the layers in batches; the recorded kwargs (masks, rotary
    # embeddings) have batch dimension 1 and broadcast over them. Each batch is replaced by its
    # output in place, so the activations are held once, plus one batch.
    hidden = []
    while inputs.hidden:
        hidden.append(torch.cat(inputs.hidden[:how.batch]))
        del inputs.hidden[:how.batch]
    tick = progress(len(layers), label) if progress else None
    records: list[LinearRecord] = []
    for index, layer in enumerate(layers):
        layer.to(how.device)
        kwargs = move_kwargs(inputs.kwargs[index], how.device)
        modules = prunable_modules(layer, f"{prefix}.{index}", how.ignore)
        stats = collect_stats(layer, modules, hidden, kwargs, how.device, how.hessian)
        for name, module in modules.items():
            began = time.perf_counter()
            W = weight_view(module).float()
            updated = op(index, name, W, stats[name])
            if updated is not W:
                set_weight(module, updated)
            records.append(LinearRecord(index, name, name.rsplit(".", 1)[-1], *W.shape,
                                        sparsity=float((updated == 0).float().mean()),
                                        seconds=time.perf_counter() - began))
        del stats
        for b, h in enumerate(hidden):
            hidden[b] = layer_output(layer(h.to(how.device), **kwargs)).to(how.store)
        layer.to("cpu")
        if tick:
            tick()
    return records


def sequential_setup(cfg: SequentialConfig, device: str, ignore: tuple[str, ...], hessian: bool) -> Sequential:
    compute = torch.device(device)
    if compute.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute)
    store = torch.device("cpu") if cfg.offload_activations else compute
    return Sequential(compute, store, ignore, hessian, cfg.batch_size)


def peak_device_bytes(how: Sequential) -> int:
    return torch.cuda.max_memory_allocated(how.device) if how.device.type == "cuda" else 0
