"""Pruning methods and the model-level pruning pass (tasks/engine/sequential.py runs it).

Methods (scores compared within each output row, or each group of M inputs for N:M):
- none: every weight kept (sparsity 0), no calibration pass: quantization alone
- magnitude: |W_ij|
- wanda (Sun et al. 2023): |W_ij| · ‖X_j‖₂
- sparsegpt (Frantar & Alistarh 2023): OBS reconstruction, see tasks/pruning/sparsegpt.py
- admm (Boža 2024): the reconstruction solved to its optimum with a gradual mask, see tasks/pruning/admm.py

With OWL (tasks/pruning/owl.py) a first pass through the dense layers measures each layer's
outlier ratio, which sets that layer's own sparsity around the target.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from tasks.engine.layers import find_decoder_layers, prunable_modules, weight_view
from tasks.engine.sequential import (InputStats, LinearRecord, Sequential, peak_device_bytes, run_sequential,
                                    sequential_setup)
from tasks.errors import UserError
from tasks.pruning.admm import admm_prune
from tasks.pruning.owl import outlier_ratio, owl_sparsities
from tasks.pruning.patterns import NM, Pattern, Unstructured, mask_from_scores
from tasks.pruning.sparsegpt import sparsegpt

if TYPE_CHECKING:
    from tasks.config import PruneConfig, SequentialConfig

Log = Callable[[str], None]


@dataclass(frozen=True)
class Pruned:
    weight: torch.Tensor   # (rows, cols) float32
    mask: torch.Tensor     # (rows, cols) bool, True = pruned


def prune_magnitude(W: torch.Tensor, stats: InputStats, pattern: Pattern, cfg: PruneConfig, log: Log) -> Pruned:
    mask = mask_from_scores(W.abs(), pattern)
    return Pruned(W.masked_fill(mask, 0.0), mask)


def wanda_scores(W: torch.Tensor, stats: InputStats) -> torch.Tensor:
    return W.abs() * stats.sumsq.sqrt().to(W.device)


def prune_wanda(W: torch.Tensor, stats: InputStats, pattern: Pattern, cfg: PruneConfig, log: Log) -> Pruned:
    mask = mask_from_scores(wanda_scores(W, stats), pattern)
    return Pruned(W.masked_fill(mask, 0.0), mask)


def prune_sparsegpt(W: torch.Tensor, stats: InputStats, pattern: Pattern, cfg: PruneConfig, log: Log) -> Pruned:
    opts = cfg.sparsegpt
    mask = mask_from_scores(wanda_scores(W, stats), pattern) if opts.mask == "wanda" else None
    result = sparsegpt(W, stats.hessian, pattern, blocksize=opts.blocksize, percdamp=opts.percdamp,
                       mask=mask, row_masks=opts.mask == "obs-row", log=log)
    return Pruned(result.weight, result.mask)


def prune_admm(W: torch.Tensor, stats: InputStats, pattern: Pattern, cfg: PruneConfig, log: Log) -> Pruned:
    weight, mask = admm_prune(W, stats.hessian, pattern, iterations=cfg.admm.iterations, percdamp=cfg.admm.percdamp)
    return Pruned(weight, mask)


PRUNERS: dict[str, Callable[..., Pruned]] = {
    "magnitude": prune_magnitude,
    "wanda": prune_wanda,
    "sparsegpt": prune_sparsegpt,
    "admm": prune_admm,
}


NEEDS_HESSIAN = {"sparsegpt", "admm"}


@dataclass(frozen=True)
class PruneReport:
    records: list[LinearRecord]
    seconds: float
    peak_device_bytes: int


def kept_records(model: nn.Module, ignore: tuple[str, ...]) -> list[LinearRecord]:
    """prune.method none: the report of the weights as they are, without a calibration pass
    (a dense point of the sweep, or quantization alone)."""
    prefix, layers = find_decoder_layers(model)
    return [LinearRecord(index, name, name.rsplit(".", 1)[-1], *weight_view(module).shape,
                         sparsity=float((weight_view(module) == 0).float().mean()), seconds=0.0, target=0.0)
            for index, layer in enumerate(layers)
            for name, module in prunable_modules(layer, f"{prefix}.{index}", ignore).items()]


def owl_layer_sparsities(model: nn.Module, tokens: torch.Tensor, cfg: PruneConfig, how: Sequential,
                         log: Log, progress=None) -> list[float]:
    """OWL's first pass over the dense model: each layer's outlier ratio of its Wanda scores."""
    scores: dict[int, list[torch.Tensor]] = {}

    def measure(index: int, name: str, W: torch.Tensor, stats: InputStats) -> torch.Tensor:
        scores.setdefault(index, []).append(wanda_scores(W, stats))
        return W

    run_sequential(model, tokens, how, measure, progress, "OWL outlier ratios")
    ratios = [outlier_ratio(scores[i], cfg.owl.m) for i in sorted(scores)]
    sparsities = owl_sparsities(ratios, cfg.pattern.sparsity, cfg.owl.lam)
    log("OWL layer sparsities: " + " ".join(f"{s:.3f}" for s in sparsities))
    return sparsities


def check_prunable(model: nn.Module, cfg: PruneConfig, log: Log) -> None:
    """Before any work: the pattern fits every layer's input width, and each `ignore`
    pattern matches something (a pattern that matches nothing is likely a typo: a warning)."""
    prefix, layers = find_decoder_layers(model)
    modules = {name: m for i, layer in enumerate(layers) for name, m in prunable_modules(layer, f"{prefix}.{i}", ()).items()}
    if isinstance(cfg.pattern, NM):
        for name, module in modules.items():
            cols = weight_view(module).shape[1]
            if cols % cfg.pattern.m:
                raise UserError(f"prune.sparsity = {cfg.sparsity!r}: M = {cfg.pattern.m} does not divide the input "
                                 f"width {cols} of {name}; choose an M that divides it or add it to prune.ignore")
    for pattern in cfg.ignore:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in modules):
            log(f"warning: prune.ignore pattern {pattern!r} matches no decoder-layer Linear "
                f"(names look like {next(iter(modules))!r})")


def prune_model(model: nn.Module, tokens: torch.Tensor, cfg: PruneConfig, seq: SequentialConfig, log: Log = print,
                progress: Callable[[int, str], Callable[[], None]] | None = None) -> PruneReport:
    """Prune `model` in place, layer by layer. tokens: (nsamples, seqlen) calibration ids.

    `progress(total, label)` returns a callable to advance a progress bar by one step.
    """
    start = time.perf_counter()
    if cfg.method == "none":
        return PruneReport(kept_records(model, cfg.ignore), time.perf_counter() - start, 0)
    how = sequential_setup(seq, cfg.device, cfg.ignore, cfg.method in NEEDS_HESSIAN)
    targets = None
    if cfg.owl.enabled:
        targets = owl_layer_sparsities(model, tokens, cfg, replace(how, hessian=False), log, progress)
    prune = PRUNERS[cfg.method]

    def op(index: int, name: str, W: torch.Tensor, stats: InputStats) -> torch.Tensor:
        pattern = Unstructured(targets[index]) if targets else cfg.pattern
        return prune(W, stats, pattern, cfg, log).weight

    records = run_sequential(model, tokens, how, op, progress, f"{cfg.method} {cfg.sparsity}")
    records = [replace(r, target=targets[r.layer] if targets else cfg.pattern.fraction) for r in records]
    return PruneReport(records, time.perf_counter() - start, peak_device_bytes(how))
