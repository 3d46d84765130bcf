"""SparseGPT: one-shot pruning with optimal-brain-surgeon weight reconstruction.

Paper: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
ICML 2023, Algorithm 1. Reference implementation: github.com/IST-DASLab/sparsegpt, `SparseGPT.fasterprune`.

Shapes: W (rows, cols) = (out_features, in_features); calibration inputs X (cols, n); H = 2·XXᵀ/n (cols, cols).

Problem, per Linear: minimise ‖WX − ŴX‖² subject to Ŵ having the sparsity pattern. Columns (inputs) are
pruned/quantized one at a time, left to right; the error of column j is moved onto the columns not yet
done, F = {j, …, cols−1}, by the OBS update (every row at once, since H is shared by all rows):
    δW[:, F] = −(w − q) / [H_F⁻¹]_jj · (H_F⁻¹)_{j,:},     loss of column j = Σ_rows (w − q)² / [H_F⁻¹]_jj / 2
where w = W[:, j] and q is w with the pruned entries zeroed (then quantized if asked).
H_F⁻¹ depends neither on the row nor on the mask, and row j of the upper Cholesky factor U of H⁻¹
(H⁻¹ = UᵀU) is (H_F⁻¹)_{j,:} / √[H_F⁻¹]_jj. With d = U_jj the update is
    W[:, j:] −= ((w − q)/d) ⊗ U[j, j:],     loss = ((w − q)/d)² / 2.
Columns go in blocks of `blocksize`: each column's rank-1 update reaches the rest of its block immediately;
the updates of the columns after the block are batched into one matmul, Err1 @ U[block, after] ("lazy batch").

Mask selection, saliency w² / d² (lower is pruned), as in the reference:
- unstructured s: at the start of each block, over all rows of the block together, so the count is exact per
  block (the int(rows·width·s) lowest of its rows·width entries, ties by position), not per row. The
  reference's `tmp <= sort(tmp)[k]` takes k + 1 (more on ties); here exactly k, so s = 0 prunes nothing.
  With `row_masks`, the int(width·s) lowest of each row of the block instead;
- N:M: when a group of M columns is reached, the M−N lowest of each row, from the weights updated so far;
  with a quantizer, every group of the block at the block start instead, so that a quantization group
  starting there knows which of its weights will be zero (it must not size its range on them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from tasks.pruning.patterns import NM, Pattern, Unstructured, mask_from_scores


class ColumnQuantizer(Protocol):
    """Fake-quantizes one column while SparseGPT runs (GPTQ when no pattern is given).

    W: (rows, cols) float32 working weights. Column j and the rest of its block are up to date and
    W[:, j] already has its pruned entries zeroed; columns after the block are stale (their lazy update is
    pending), so a GPTQ quantizer with groups that computes its parameters at j % group_size == 0 from
    W[:, j:j + group_size] needs blocksize % group_size == 0 — the caller's job. `pruned` (rows, cols) bool,
    True = pruned, is final for every column of the current block and earlier; later blocks are not chosen
    yet (all False). Must modify neither. Returns the fake-quantized column j, shape (rows,).
    """

    def __call__(self, W: torch.Tensor, j: int, pruned: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ObsResult:
    weight: torch.Tensor  # (rows, cols) float32: pruned entries exactly 0, quantized if a quantizer was given
    mask: torch.Tensor  # (rows, cols) bool, True = pruned
    damp: float  # absolute dampening λ added to diag(H), after any retries
    error: float  # Σ over columns and rows of (w − q)² / d² / 2, the loss the reference prints


def sparsegpt(
    W: torch.Tensor,
    H: torch.Tensor,
    pattern: Pattern | None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    quantizer: ColumnQuantizer | None = None,
    mask: torch.Tensor | None = None,
    row_masks: bool = False,
    max_damp_retries: int = 6,
    log: Callable[[str], None] = lambda s: None,
    precision: torch.dtype = torch.float32,
) -> ObsResult:
    """Prune (and optionally quantize) W with SparseGPT. Neither W nor H is modified.

    pattern None prunes nothing: with a quantizer this is GPTQ; with neither, only dead-input columns change
    (to 0). A given `mask` (rows, cols) bool, True = pruned, is used instead of selecting one (pattern is then
    ignored) and the OBS update still runs. Dampening λ = percdamp·mean(diag H), ×10 per failed Cholesky
    (from 1e-4·mean(diag H) when percdamp is 0), RuntimeError after `max_damp_retries` retries.
    """
    rows, cols = W.shape
    _check_inputs(W, H, pattern, blocksize, mask)
    select = pattern if mask is None else None
    H = H.detach().to(precision, copy=True)
    # Work on Wᵀ (cols, rows): a column of W is then a contiguous row, so the per-column rank-1
    # update is one contiguous addr_ (several times faster on CPU than on strided columns).
    # W (rows, cols) below is a view of it for the quantizer hook and the mask selection.
    Wt = W.detach().to(precision).t().contiguous()
    W = Wt.t()
    _drop_dead_inputs(W, H)
    pruned_t = (torch.zeros(cols, rows, dtype=torch.bool, device=Wt.device) if mask is None
                else mask.to(Wt.device).t().contiguous())
    pruned = pruned_t.t()  # (rows, cols) view for the quantizer hook
    loss = torch.zeros((), dtype=precision, device=Wt.device)  # kept on device: no sync per block

    with _ieee_fp32_matmul():
        U, damp = _damped_inverse_cholesky(H, percdamp, max_damp_retries, log)
        d2 = torch.diag(U) ** 2  # [H_F⁻¹]_jj, the OBS denominators
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            W1, M1 = Wt[i1:i2], pruned_t[i1:i2]  # (block, rows) views into the working copies
            U1 = U[i1:i2, i1:i2]
            if isinstance(select, Unstructured):
                scores = W1.t() ** 2 / d2[i1:i2]
                M1[:] = (mask_from_scores(scores, select) if row_masks else _block_mask(scores, select.sparsity)).t()
            elif isinstance(select, NM) and quantizer is not None:
                M1[:] = mask_from_scores(W1.t() ** 2 / d2[i1:i2], select).t()
            Err1 = torch.zeros_like(W1)
            for i in range(i2 - i1):
                if isinstance(select, NM) and quantizer is None and i % select.m == 0:
                    group = slice(i, i + select.m)
                    M1[group] = mask_from_scores(W1[group].t() ** 2 / d2[i1:i2][group], select).t()
                w = W1[i].clone()
                W1[i] = w.masked_fill(M1[i], 0.0)
                if quantizer is not None:
                    # Quantization may move a zero off 0 (zero-point); pruned entries stay exactly 0.
                    W1[i] = quantizer(W, i1 + i, pruned).masked_fill(M1[i], 0.0)
                err = (w - W1[i]) / U1[i, i]
                W1[i + 1:].addr_(U1[i, i + 1:], err, alpha=-1.0)
                Err1[i] = err
            Wt[i2:] -= U[i1:i2, i2:].T @ Err1
            loss += Err1.pow(2).sum() / 2

    return ObsResult(weight=W.float().contiguous(), mask=pruned_t.t().contiguous(), damp=damp, error=loss.item())


def sparsegpt_reference(
    W: torch.Tensor, H: torch.Tensor, pattern: Pattern | None, *, blocksize: int, percdamp: float,
    row_masks: bool = False,
) -> ObsResult:
    """SparseGPT straight from the paper's equations, in float64, for tests and as documentation.

    No Cholesky factor and no lazy batches: the inverse Hessians H_F⁻¹ of the shrinking column sets come from
    an explicit inverse by Gaussian elimination of one column at a time (paper eq. 3),
        H_{F∖j}⁻¹ = (H_F⁻¹ − H_F⁻¹[:, j] H_F⁻¹[j, :] / [H_F⁻¹]_jj) without row and column j,
    and every OBS update is applied to all remaining columns at once. The masks are chosen by the same rule
    as `sparsegpt` (so unstructured needs the block boundaries). Returns float64 weights; no damping retries.
    """
    rows, cols = W.shape
    W = W.detach().to(torch.float64, copy=True)
    H = H.detach().to(torch.float64, copy=True)
    _drop_dead_inputs(W, H)
    damp = percdamp * torch.diag(H).mean().item()
    Hinv = torch.linalg.inv(H + damp * torch.eye(cols, dtype=H.dtype, device=H.device))

    obs_rows = []  # obs_rows[j] = (H_F⁻¹)_{j, F} for F = {j, …, cols−1}; it depends on H only
    for _ in range(cols):
        obs_rows.append(Hinv[0].clone())
        Hinv = (Hinv - torch.outer(Hinv[:, 0], Hinv[0]) / Hinv[0, 0])[1:, 1:]
    d2 = torch.stack([row[0] for row in obs_rows])  # [H_F⁻¹]_jj

    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    loss = 0.0
    for j in range(cols):
        if isinstance(pattern, Unstructured) and j % blocksize == 0:
            block = slice(j, min(j + blocksize, cols))
            scores = W[:, block] ** 2 / d2[block]
            pruned[:, block] = mask_from_scores(scores, pattern) if row_masks else _block_mask(scores, pattern.sparsity)
        if isinstance(pattern, NM) and j % pattern.m == 0:
            group = slice(j, j + pattern.m)
            pruned[:, group] = mask_from_scores(W[:, group] ** 2 / d2[group], pattern)
        w = W[:, j].clone()
        q = w.masked_fill(pruned[:, j], 0.0)
        W[:, j:] -= torch.outer((w - q) / d2[j], obs_rows[j])
        W[:, j] = q  # equal up to rounding already; exact zeros for the pruned entries
        loss += ((w - q) ** 2 / d2[j]).sum().item() / 2

    return ObsResult(weight=W, mask=pruned, damp=damp, error=loss)


def _check_inputs(
    W: torch.Tensor, H: torch.Tensor, pattern: Pattern | None, blocksize: int, mask: torch.Tensor | None
) -> None:
    if W.dim() != 2:
        raise ValueError(f"W must be (rows, cols), got shape {tuple(W.shape)}")
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H must be (cols, cols) = ({cols}, {cols}) for W {tuple(W.shape)}, got {tuple(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError("H has NaN or inf entries (did the calibration statistics overflow?)")
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if mask is not None and (mask.shape != W.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(W.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if mask is None and isinstance(pattern, NM) and (cols % pattern.m or blocksize % pattern.m):
        # A group must not straddle two blocks: it is chosen from the block's current weights.
        raise ValueError(f"{pattern} needs cols ({cols}) and blocksize ({blocksize}) to be multiples of {pattern.m}")


def _drop_dead_inputs(W: torch.Tensor, H: torch.Tensor) -> None:
    """In place: an input that is always 0 (H_jj = 0) gets H_jj = 1, so H stays invertible, and W[:, j] = 0."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0


def _damped_inverse_cholesky(
    H: torch.Tensor, percdamp: float, max_retries: int, log: Callable[[str], None]
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + λI)⁻¹ and the λ used, λ ×10 for each failed factorisation."""
    mean_diag = torch.diag(H).mean().item()
    damp = percdamp * mean_diag
    tried = []
    for attempt in range(max_retries + 1):
        U = _inverse_cholesky(H, damp)
        if U is not None:
            return U, damp
        tried.append(damp)
        if attempt < max_retries:
            # ×10 cannot leave 0, so a zero dampening restarts from a small one.
            damp = 10 * damp if damp > 0 else 1e-4 * mean_diag
            log(f"sparsegpt: Cholesky failed with dampening {tried[-1]:.3g}; retrying with {damp:.3g}")
    raise RuntimeError(
        f"sparsegpt: H + λI is not positive definite for any dampening λ tried "
        f"({', '.join(f'{t:.3g}' for t in tried)}; mean(diag H) = {mean_diag:.3g}); "
        f"H should be 2·XXᵀ/n, positive semi-definite"
    )


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor of (H + damp·I)⁻¹, or None when either factorisation fails."""
    damped = H + damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(damped)
    if info.item() != 0:
        return None
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    return None if info.item() != 0 else U


def _block_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The int(numel·sparsity) lowest scores of the whole block, ties broken by row-major position."""
    return mask_from_scores(scores.reshape(1, -1), Unstructured(sparsity)).reshape(scores.shape)


@contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    """TF32 would add ~1e-3 relative error to every update; these matmuls need full float32."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
