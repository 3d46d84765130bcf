"""ADMM pruning: the layer-wise reconstruction problem solved to its optimum, with a gradual mask.

Paper: Boža, "Fast and Effective Weight Update for Pruned Large Language Models", TMLR 2024
(reference code: github.com/fmfi-compbio/admm-pruning).

Per Linear, minimise ‖WX − ŴX‖² over Ŵ with the sparsity pattern, H = 2XXᵀ/n as for SparseGPT.
SparseGPT updates each weight once, left to right, so kept weights left of a pruned one never
compensate for it; ADMM iterates to the least-squares optimum for the mask:

    V ← (H + ρI)⁻¹ (H·W + ρ(Z − U))     the unconstrained step, all rows at once (Wᵀ layout)
    Z ← (V + U) with the masked entries 0  the projection onto the pattern
    U ← U + V − Z                        the scaled dual

ρ grows by `RHO_GROWTH` every `RHO_EVERY` iterations, pulling V onto Z. That slows down near
the optimum, so conjugate gradients on Z's kept entries finish the least-squares solve.
The problem is preconditioned by the input norms d_j = √H_jj (W·d, D⁻¹HD⁻¹, unit diagonal),
so one dampening and one ρ fit every layer, and |Z + U| there is Wanda's score |W_ij|·‖X_j‖.

Mask: gradual, as the paper's ADMM-Grad: over the first `GRADUAL_SHARE` of the iterations the
share pruned rises as 1 − (1 − t/T)³ of the target, each step re-choosing the lowest |Z + U|
of each row (unstructured s: s times the share) or of each group of M (N:M: that share of the
M − N pruned per group, rounded, so 2:4 passes through 3:4); the rest refine the final mask
and its weights. A given `mask` is kept as is.
"""

from __future__ import annotations

import torch

from tasks.pruning.patterns import NM, Pattern, Unstructured, mask_from_scores

RHO_START, RHO_GROWTH, RHO_EVERY = 0.1, 1.5, 3
GRADUAL_SHARE = 0.6


def admm_prune(W: torch.Tensor, H: torch.Tensor, pattern: Pattern, *, iterations: int = 30,
               percdamp: float = 0.01, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune W (rows, cols) for the inputs whose H = 2XXᵀ/n is given; neither is modified.

    Returns (weight float32 (rows, cols) with exact zeros, mask bool (rows, cols), True = pruned).
    Dead inputs (H_jj = 0) are pruned, as SparseGPT drops them.
    """
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H must be (cols, cols) = ({cols}, {cols}) for W {tuple(W.shape)}, got {tuple(H.shape)}")
    H = H.detach().float()
    dead = torch.diag(H) == 0
    norm = torch.where(dead, 1.0, torch.diag(H).clamp(min=0).sqrt())
    Hn = H / norm[:, None] / norm[None, :]
    Hn[dead, dead] = 1.0
    Hn += percdamp * torch.eye(cols, dtype=Hn.dtype, device=Hn.device)
    target = (W.detach().float() * norm).masked_fill(dead, 0.0).t().contiguous()  # (cols, rows)
    HW = Hn @ target

    schedule = int(iterations * GRADUAL_SHARE) if mask is None else 0
    if mask is not None:
        keep = ~mask.t()
    elif schedule:
        keep = torch.ones_like(target, dtype=torch.bool)
    else:
        keep = ~mask_from_scores(target.abs().t(), pattern).t()
    rho = RHO_START
    Z, U = target * keep, torch.zeros_like(target)
    step = torch.linalg.inv(Hn + rho * torch.eye(cols, dtype=Hn.dtype, device=Hn.device))
    for t in range(iterations):
        V = step @ (HW + rho * (Z - U))
        if t < schedule and (partial := on_the_way(pattern, 1 - (1 - (t + 1) / schedule) ** 3)):
            keep = ~mask_from_scores((V + U).abs().t(), partial).t()
        Z = (V + U) * keep
        U += V - Z
        if t % RHO_EVERY == RHO_EVERY - 1:
            rho *= RHO_GROWTH
            step = torch.linalg.inv(Hn + rho * torch.eye(cols, dtype=Hn.dtype, device=Hn.device))
    keep &= ~dead[:, None]
    Z = _masked_least_squares(Hn, HW, Z * keep, keep, iterations)
    weight = (Z / norm[:, None]).t().contiguous()
    return weight, ~keep.t().contiguous()


def on_the_way(pattern: Pattern, share: float) -> Pattern | None:
    """The pattern that prunes `share` (0 to 1) of what `pattern` prunes; None: nothing yet."""
    if isinstance(pattern, NM):
        pruned = round((pattern.m - pattern.n) * share)
        return NM(pattern.m - pruned, pattern.m) if pruned else None
    return Unstructured(pattern.sparsity * share)


def _masked_least_squares(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor, keep: torch.Tensor,
                          steps: int, tol: float = 1e-6) -> torch.Tensor:
    """Conjugate gradients, one system per column, on the kept entries only: minimise
    ½xᵀAx − bᵀx over x with x = 0 where keep is False, from X (cols, rows). ADMM with a growing ρ
    slows down near the optimum; from its result, a few steps finish the job."""
    R = (B - A @ X) * keep
    P, rs = R.clone(), (R * R).sum(0)
    stop = tol * (B * keep).pow(2).sum(0)
    for _ in range(steps):
        if (rs <= stop).all():
            break
        AP = (A @ P) * keep
        alpha = rs / (P * AP).sum(0).clamp(min=torch.finfo(rs.dtype).tiny)
        X = X + alpha * P
        R = R - alpha * AP
        rs_new = (R * R).sum(0)
        P = R + (rs_new / rs.clamp(min=torch.finfo(rs.dtype).tiny)) * P
        rs = rs_new
    return X * keep
