"""GPTQ with act-order (Frantar et al. 2022): the columns in descending order of diag(H), each
group's parameters fixed up front (static groups), so the packed layout is unchanged. The
OBS engine of tasks/pruning/sparsegpt.py does the work on the permuted W and H.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from tasks.pruning.patterns import Pattern
from tasks.pruning.sparsegpt import sparsegpt
from tasks.quantization.grid import Quantized, QuantSpec, StaticGroupQuantizer, rtn

if TYPE_CHECKING:
    from tasks.config import QuantizeConfig

Log = Callable[[str], None]


def spec_of(cfg: QuantizeConfig) -> QuantSpec:
    return QuantSpec(cfg.bits, cfg.group_size, cfg.symmetric)


def solver_dtype(cfg: QuantizeConfig) -> torch.dtype:
    return getattr(torch, cfg.solver_dtype)


def gptq_act_order(W: torch.Tensor, H: torch.Tensor, cfg: QuantizeConfig, pattern: Pattern | None,
                   mask: torch.Tensor | None, row_masks: bool, log: Log) -> tuple[Quantized, torch.Tensor]:
    """GPTQ with the columns in descending order of diag(H) and static groups: every group's
    parameters are fixed before the quantizing pass, then the engine runs on the permuted W and H.

    Pruned W (pattern None, mask = its zeros): the groups are sized on W itself. Joint (a pattern,
    with or without a given mask, on the dense W): they are sized on a pruning-only pass in the
    same order first, on the weights it keeps as that pass leaves them, so no range is widened by
    a weight about to be pruned; the quantizing pass then chooses its own mask, as joint mode
    does in order.
    """
    order = torch.argsort(torch.diag(H), descending=True, stable=True)
    W_order, H_order = W[:, order], H[order][:, order]
    mask_order = None if mask is None else mask[:, order]

    def run(quantizer: StaticGroupQuantizer | None) -> tuple[torch.Tensor, torch.Tensor]:
        result = sparsegpt(W_order, H_order, pattern, blocksize=cfg.blocksize, percdamp=cfg.percdamp,
                           quantizer=quantizer, mask=mask_order, row_masks=row_masks, log=log,
                           precision=solver_dtype(cfg))
        return _unpermute(result.weight, order), _unpermute(result.mask, order)

    sized, zero = (W, mask) if pattern is None else run(None)  # a pruned W: nothing left to prune
    hook = StaticGroupQuantizer(rtn(sized, spec_of(cfg), mask=zero), order)
    weight, pruned = run(hook)
    return hook.result(pruned), weight


def _unpermute(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The columns of t, which are columns order[0], order[1], … of a weight, back in the weight's order."""
    out = torch.empty_like(t)
    out[:, order] = t
    return out
