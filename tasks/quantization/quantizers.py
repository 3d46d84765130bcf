"""Quantize the decoder-layer Linears of a pruned model, keeping every pruned zero.

- rtn: round to nearest, per group (tasks/quantization/grid.py); needs no calibration.
- gptq (Frantar et al. 2022): the sequential pass of tasks/engine/sequential.py with the Hessian
  H = 2XXᵀ/n of each Linear's input; the OBS engine of tasks/pruning/sparsegpt.py runs with the
  existing zeros as a fixed mask and a GroupQuantizer column hook, so each column's
  rounding error is spread over the columns not yet quantized, and zeros stay zeros.
  With act_order, the columns go in descending order of diag(H) and every group's
  parameters are fixed before the pass (static groups), so the packed layout is unchanged
  (tasks/quantization/gptq.py).
- joint: the same engine from the *dense* model chooses the mask (SparseGPT) and
  quantizes (GPTQ) in one pass; with act_order, the groups are sized on a pruning-only
  pass in the same column order first (unstructured masks only).

A pruned weight always gets code = zero-point, so it dequantizes to exactly 0.0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from tasks.engine.layers import find_decoder_layers, prunable_modules, set_weight, weight_view
from tasks.engine.sequential import InputStats, LinearRecord, peak_device_bytes, run_sequential, sequential_setup
from tasks.errors import UserError
from tasks.pruning.patterns import Unstructured, mask_from_scores
from tasks.pruning.pruners import owl_layer_sparsities, wanda_scores
from tasks.pruning.sparsegpt import sparsegpt
from tasks.quantization.gptq import gptq_act_order, solver_dtype, spec_of
from tasks.quantization.grid import GroupQuantizer, Quantized, rtn

if TYPE_CHECKING:
    from tasks.config import PruneConfig, QuantizeConfig, SequentialConfig

Log = Callable[[str], None]


@dataclass(frozen=True)
class QuantizeReport:
    quantized: dict[str, Quantized]    # module name → codes, scales, zeros
    records: list[LinearRecord]
    seconds: float
    peak_device_bytes: int


@torch.no_grad()
def quantize_rtn(model: nn.Module, cfg: QuantizeConfig) -> dict[str, Quantized]:
    prefix, layers = find_decoder_layers(model)
    quantized = {}
    for index, layer in enumerate(layers):
        for name, module in prunable_modules(layer, f"{prefix}.{index}", ()).items():
            W = weight_view(module).float()
            quantized[name] = rtn(W, spec_of(cfg), mask=W == 0)
            set_weight(module, quantized[name].dequantize())
    return quantized


def check_group_size(model: nn.Module, cfg: QuantizeConfig) -> None:
    """Before any work: the group size divides the input width of every decoder Linear
    (a ragged last group would not survive the export that serving engines load)."""
    if cfg.method == "none" or cfg.group_size == -1:
        return
    prefix, layers = find_decoder_layers(model)
    for index, layer in enumerate(layers):
        for name, module in prunable_modules(layer, f"{prefix}.{index}", ()).items():
            cols = weight_view(module).shape[1]
            if cols % cfg.group_size:
                fits = [g for g in (32, 64, 128) if cols % g == 0]
                raise UserError(f"quantize.group_size = {cfg.group_size} does not divide the input width {cols} "
                                 f"of {name}; allowed here: -1{''.join(f', {g}' for g in fits)}")


def quantize_model(model: nn.Module, tokens: torch.Tensor, cfg: QuantizeConfig, prune_cfg: PruneConfig,
                   seq: SequentialConfig, log: Log = print, progress=None) -> QuantizeReport:
    """Quantize `model` in place (fake-quantized float weights) and return the codes.

    Without `cfg.joint` the model is the pruned one; with it, the dense one, pruned here
    by SparseGPT with `prune_cfg` in the same pass.
    """
    start = time.perf_counter()
    if cfg.method == "rtn":
        return QuantizeReport(quantize_rtn(model, cfg), [], time.perf_counter() - start, 0)
    how = sequential_setup(seq, cfg.device, (), hessian=True)
    targets = None
    if cfg.joint and prune_cfg.owl.enabled:
        targets = owl_layer_sparsities(model, tokens, prune_cfg, how, log, progress)
    quantized: dict[str, Quantized] = {}

    def op(index: int, name: str, W: torch.Tensor, stats: InputStats) -> torch.Tensor:
        if cfg.joint:
            pattern = Unstructured(targets[index]) if targets else prune_cfg.pattern
            mask = mask_from_scores(wanda_scores(W, stats), pattern) if prune_cfg.sparsegpt.mask == "wanda" else None
        else:
            pattern, mask = None, W == 0
        row_masks = prune_cfg.sparsegpt.mask == "obs-row"
        if cfg.act_order:
            quantized[name], weight = gptq_act_order(W, stats.hessian, cfg, pattern, mask, row_masks, log)
            return weight
        hook = GroupQuantizer(spec_of(cfg))
        result = sparsegpt(W, stats.hessian, pattern, blocksize=cfg.blocksize, percdamp=cfg.percdamp,
                           quantizer=hook, mask=mask, row_masks=row_masks, log=log, precision=solver_dtype(cfg))
        quantized[name] = hook.result(result.mask)
        return result.weight

    label = f"{'sparsegpt+' if cfg.joint else ''}gptq {cfg.bits}-bit"
    records = run_sequential(model, tokens, how, op, progress, label)
    return QuantizeReport(quantized, records, time.perf_counter() - start, peak_device_bytes(how))
