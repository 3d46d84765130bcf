"""SparseGPT: the blocked float32 engine against the float64 column-by-column reference, and its contracts."""

from __future__ import annotations

import pytest
import torch

from tasks.pruning.patterns import NM, Unstructured, mask_from_scores
from tasks.pruning.sparsegpt import sparsegpt, sparsegpt_reference


def calibration(cols: int, n: int, seed: int) -> torch.Tensor:
    """(cols, n) inputs with correlated features of unequal scale, as in LLM activations."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, cols, generator=g)
    A = torch.randn(cols, cols, generator=g) / cols**0.5
    scale = torch.exp(torch.randn(cols, generator=g))
    return ((Z @ A) * scale).T


def hessian(X: torch.Tensor) -> torch.Tensor:
    return 2 * X @ X.T / X.shape[1]


def output_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    return ((W - W_hat) @ X).norm().item()


class GridQuantizer:
    """Rounds column j to multiples of `step`, recording what it was called with."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.calls: list[int] = []
        self.columns: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []  # the `pruned` mask as each call saw it

    def __call__(self, W: torch.Tensor, j: int, pruned: torch.Tensor) -> torch.Tensor:
        self.calls.append(j)
        self.columns.append(W[:, j].clone())
        self.masks.append(pruned.clone())
        return torch.round(W[:, j] / self.step) * self.step


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4)], ids=str)
@pytest.mark.parametrize("rows, cols", [(16, 64), (48, 96), (48, 80)])  # 80: a last block of 16
def test_matches_float64_reference(rows, cols, pattern):
    torch.manual_seed(rows + cols)
    W = torch.randn(rows, cols)
    H = hessian(calibration(cols, 4 * cols, seed=cols))
    fast = sparsegpt(W, H, pattern, blocksize=32)
    ref = sparsegpt_reference(W, H, pattern, blocksize=32, percdamp=0.01)
    assert torch.equal(fast.mask, ref.mask)
    assert (fast.weight.double() - ref.weight).norm() <= 1e-6 * ref.weight.norm()
    assert fast.error == pytest.approx(ref.error, rel=1e-5)
    assert fast.damp == pytest.approx(ref.damp, rel=1e-6)


@pytest.mark.parametrize("rows, cols", [(16, 64), (48, 80)])
def test_row_masks_match_float64_reference_with_the_same_count_in_every_block_row(rows, cols):
    torch.manual_seed(rows * cols)
    W = torch.randn(rows, cols)
    H = hessian(calibration(cols, 4 * cols, seed=cols + 1))
    fast = sparsegpt(W, H, Unstructured(0.5), blocksize=32, row_masks=True)
    ref = sparsegpt_reference(W, H, Unstructured(0.5), blocksize=32, percdamp=0.01, row_masks=True)
    assert torch.equal(fast.mask, ref.mask)
    assert (fast.weight.double() - ref.weight).norm() <= 1e-6 * ref.weight.norm()
    for start in range(0, cols, 32):
        width = min(32, cols - start)
        assert (fast.mask[:, start:start + width].sum(1) == width // 2).all()


def test_prefix_mask_gives_least_squares_optimum():
    # Pruning columns 0..k-1 of every row, then OBS-updating the rest, is the exact constrained optimum:
    # min over V of ‖[W_P, W_R] − [0, V]‖²_H  ⇒  V = W_R + W_P H_PR H_RR⁻¹ (H damped as the engine does).
    torch.manual_seed(0)
    rows, cols, k = 8, 48, 20
    W = torch.randn(rows, cols)
    H = hessian(calibration(cols, 200, seed=1))
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[:, :k] = True
    result = sparsegpt(W, H, None, blocksize=16, mask=mask)
    Hd = H.double() + result.damp * torch.eye(cols, dtype=torch.float64)
    Wd = W.double()
    V = Wd[:, k:] + Wd[:, :k] @ Hd[:k, k:] @ torch.linalg.inv(Hd[k:, k:])
    assert torch.equal(result.mask, mask)
    assert (result.weight[:, :k] == 0).all()
    assert (result.weight[:, k:].double() - V).norm() <= 1e-5 * V.norm()


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_unstructured_count_is_exact_per_block(sparsity):
    # Exact: each block's count over all its rows is int(rows·width·s) (ties cannot change it: the k lowest
    # are taken by a stable sort). Not exact: the count of any one row.
    torch.manual_seed(1)
    rows, cols, blocksize = 24, 80, 32
    W = torch.randn(rows, cols)
    result = sparsegpt(W, hessian(calibration(cols, 320, seed=2)), Unstructured(sparsity), blocksize=blocksize)
    for i1 in range(0, cols, blocksize):
        block = result.mask[:, i1 : i1 + blocksize]
        assert block.sum().item() == int(block.numel() * sparsity)
    assert torch.equal(result.weight == 0, result.mask)  # pruned exactly 0, kept ones nonzero here


@pytest.mark.parametrize("pattern", [NM(2, 4), NM(4, 8)], ids=str)
def test_nm_keeps_exactly_n_per_group(pattern):
    torch.manual_seed(2)
    rows, cols = 24, 64
    W = torch.randn(rows, cols)
    assert (W != 0).all()
    result = sparsegpt(W, hessian(calibration(cols, 256, seed=3)), pattern, blocksize=32)
    nonzeros = (result.weight != 0).reshape(rows, cols // pattern.m, pattern.m).sum(-1)
    assert (nonzeros == pattern.n).all()
    assert torch.equal(result.weight == 0, result.mask)


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4), None], ids=str)
def test_dead_inputs_give_zero_columns(pattern):
    torch.manual_seed(3)
    rows, cols = 16, 64
    W = torch.randn(rows, cols)
    X = calibration(cols, 256, seed=4)
    X[[3, 40]] = 0  # inputs never active
    H = hessian(X)
    assert H[3, 3] == 0 and H[40, 40] == 0
    result = sparsegpt(W, H, pattern, blocksize=32)
    assert torch.isfinite(result.weight).all()
    assert (result.weight[:, [3, 40]] == 0).all()
    if pattern is None:  # nothing to prune: only the dead columns change
        live = torch.ones(cols, dtype=torch.bool)
        live[[3, 40]] = False
        assert torch.equal(result.weight[:, live], W[:, live])
    ref = sparsegpt_reference(W, H, pattern, blocksize=32, percdamp=0.01)
    assert torch.equal(result.mask, ref.mask)


def indefinite_hessian(cols: int, lowest: float) -> torch.Tensor:
    """Q·diag(lowest, 0.5 … 1.5)·Qᵀ: symmetric, one eigenvalue `lowest` < 0, mean diagonal ≈ 1."""
    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g))
    eigenvalues = torch.linspace(0.5, 1.5, cols)
    eigenvalues[0] = lowest
    return (Q * eigenvalues) @ Q.T


@pytest.mark.parametrize("percdamp, retries", [(0.001, 2), (0.0, 4)])
def test_cholesky_failure_retries_with_more_dampening(percdamp, retries):
    # Needs λ > 0.02: 0.001 → 0.01 → 0.1 (×10), or from 0: 1e-4 → 1e-3 → 1e-2 → 1e-1 (× mean diag).
    cols = 32
    H = indefinite_hessian(cols, lowest=-0.02)
    lines: list[str] = []
    W = torch.randn(8, cols, generator=torch.Generator().manual_seed(6))
    result = sparsegpt(W, H, Unstructured(0.5), blocksize=16, percdamp=percdamp, log=lines.append)
    assert len(lines) == retries and all("Cholesky failed" in line for line in lines)
    assert result.damp == pytest.approx(0.1 * torch.diag(H).mean().item(), rel=1e-5)
    assert torch.isfinite(result.weight).all()


def test_hopeless_hessian_raises_after_the_cap():
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="not positive definite for any dampening"):
        sparsegpt(torch.randn(4, 8), -torch.eye(8), Unstructured(0.5), max_damp_retries=3, log=lines.append)
    assert len(lines) == 3


def test_non_finite_hessian_is_rejected():
    H = torch.eye(8)
    H[2, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sparsegpt(torch.randn(4, 8), H, Unstructured(0.5))


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4)], ids=str)
def test_reconstruction_beats_wanda_beats_magnitude(pattern):
    torch.manual_seed(7)
    rows, cols, n = 64, 128, 512
    X = calibration(cols, n, seed=8)
    W = torch.randn(rows, cols)
    obs = sparsegpt(W, hessian(X), pattern, blocksize=32).weight
    wanda = W.masked_fill(mask_from_scores(W.abs() * X.norm(dim=1), pattern), 0)
    magnitude = W.masked_fill(mask_from_scores(W.abs(), pattern), 0)
    assert output_error(W, obs, X) < output_error(W, wanda, X) < output_error(W, magnitude, X)


def test_given_mask_is_kept_and_updated():
    # "Wanda mask + SparseGPT update": same zeros as plain Wanda, lower output error.
    torch.manual_seed(9)
    rows, cols, n = 32, 64, 256
    X = calibration(cols, n, seed=10)
    W = torch.randn(rows, cols)
    wanda_mask = mask_from_scores(W.abs() * X.norm(dim=1), NM(2, 4))
    result = sparsegpt(W, hessian(X), None, blocksize=32, mask=wanda_mask)
    assert torch.equal(result.mask, wanda_mask)
    assert torch.equal(result.weight == 0, wanda_mask)
    assert output_error(W, result.weight, X) < output_error(W, W.masked_fill(wanda_mask, 0), X)


def test_quantizer_is_called_per_column_and_keeps_pruned_zeros():
    torch.manual_seed(11)
    rows, cols, step = 16, 64, 0.05
    W = torch.randn(rows, cols)
    quantizer = GridQuantizer(step)
    result = sparsegpt(W, hessian(calibration(cols, 256, seed=12)), NM(2, 4), blocksize=32, quantizer=quantizer)
    assert quantizer.calls == list(range(cols))
    seen = torch.stack(quantizer.columns, dim=1)
    assert (seen[result.mask] == 0).all()  # the engine zeroed pruned entries before quantizing
    assert (result.weight[result.mask] == 0).all()
    grid = result.weight / step
    assert torch.allclose(grid, grid.round(), atol=1e-4)


@pytest.mark.parametrize("pattern", [Unstructured(0.5), NM(2, 4)], ids=str)
def test_quantizer_sees_the_final_mask_of_its_whole_block(pattern):
    # A quantization group starting at a block start sizes its range on the weights that stay.
    torch.manual_seed(19)
    rows, cols, blocksize = 16, 96, 32
    W = torch.randn(rows, cols)
    quantizer = GridQuantizer(0.05)
    result = sparsegpt(W, hessian(calibration(cols, 256, seed=20)), pattern, blocksize=blocksize,
                       quantizer=quantizer)
    for j, seen in zip(quantizer.calls, quantizer.masks):
        end = (j // blocksize + 1) * blocksize
        assert torch.equal(seen[:, :end], result.mask[:, :end])
        assert not seen[:, end:].any()


def test_identity_quantizer_changes_nothing():
    # It sees the up-to-date column with pruned zeros, so returning it must reproduce the plain run exactly.
    torch.manual_seed(13)
    W = torch.randn(16, 64)
    H = hessian(calibration(64, 256, seed=14))
    plain = sparsegpt(W, H, Unstructured(0.5), blocksize=32)
    hooked = sparsegpt(W, H, Unstructured(0.5), blocksize=32, quantizer=lambda W_, j, pruned: W_[:, j].clone())
    assert torch.equal(plain.weight, hooked.weight) and torch.equal(plain.mask, hooked.mask)


def test_no_pattern_with_quantizer_is_gptq():
    # GPTQ's error feedback beats round-to-nearest on the layer output.
    torch.manual_seed(15)
    rows, cols, n, step = 32, 64, 256, 0.25
    X = calibration(cols, n, seed=16)
    W = torch.randn(rows, cols)
    gptq = sparsegpt(W, hessian(X), None, blocksize=32, quantizer=GridQuantizer(step))
    nearest = torch.round(W / step) * step
    assert not gptq.mask.any()
    assert output_error(W, gptq.weight, X) < output_error(W, nearest, X)


def test_inputs_are_not_modified_and_result_is_float32():
    torch.manual_seed(17)
    W = torch.randn(16, 64).to(torch.bfloat16)
    X = calibration(64, 256, seed=18)
    X[5] = 0
    H = hessian(X)
    W_before, H_before = W.clone(), H.clone()
    result = sparsegpt(W, H, Unstructured(0.5), blocksize=32)
    assert torch.equal(W, W_before) and torch.equal(H, H_before)
    assert result.weight.dtype == torch.float32 and result.mask.dtype == torch.bool


def test_bad_arguments_are_rejected():
    W, H = torch.randn(4, 16), torch.eye(16)
    with pytest.raises(ValueError, match="multiples of 4"):
        sparsegpt(W, H, NM(2, 4), blocksize=6)
    with pytest.raises(ValueError, match="bool tensor"):
        sparsegpt(W, H, None, mask=torch.zeros(4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(cols, cols\)"):
        sparsegpt(W, torch.eye(8), Unstructured(0.5))
