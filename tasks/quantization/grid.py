"""Group-wise integer weight quantization: round-to-nearest and the GPTQ/SparseGPT column hook.

Shapes: a weight is W (N, K) = (rows, cols) = (out_features, in_features). A group is g
consecutive columns of one row (g = -1: the whole row, g = K), so G = ceil(K / g) groups per
row; the last group is shorter when g does not divide K.

For b bits a code is an integer q ∈ [0, 2^b − 1] (kept unpacked in uint8). Each group has a
float16 scale s and an integer zero z ∈ [0, 2^b − 1]:

    q     = clamp(round(w / s) + z, 0, 2^b − 1)          # round half to even
    w_hat = (q − z) · s

Parameters are GPTQ's min/max ones (compressed-tensors' observer computes the same):

    asymmetric  lo = min(min w, 0), hi = max(max w, 0)     # 0 is always representable
                s  = (hi − lo) / (2^b − 1),  z = clamp(round(−lo / s), 0, 2^b − 1)
    symmetric   s  = 2·max|w| / (2^b − 1),   z = 2^(b−1)
                # codes span [−2^(b−1), 2^(b−1) − 1]·s, so +max|w| is off by at most s/2

An all-zero group gets s = 1 (any s keeps every code at z). A pruned weight is stored as
q = z, so it dequantizes to exactly 0.0.

Bit-exact round trip: s is rounded to float16 *before* the codes are computed, and w_hat is
built from that float16 s. |q − z| < 2^8 and s has 11 significant bits, so (q − z)·s is exact
in float32: dequantize() reproduces the fake-quantized values bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP16_TINY = 2.0**-24  # smallest positive float16; a smaller scale would round to 0
FP16_MAX = 65504.0


@dataclass(frozen=True)
class QuantSpec:
    """b-bit codes, groups of `group_size` columns (-1 = one group per row)."""

    bits: int
    group_size: int
    symmetric: bool

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size must be -1 (per row) or positive, got {self.group_size}")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def width(self, cols: int) -> int:
        """Columns per group for a weight with `cols` columns."""
        return cols if self.group_size == -1 else self.group_size

    def groups(self, cols: int) -> int:
        return math.ceil(cols / self.width(cols))


def expand_groups(t: torch.Tensor, group_size: int, cols: int) -> torch.Tensor:
    """(N, G) per-group values → (N, cols): each repeated over its group's columns."""
    width = cols if group_size == -1 else group_size
    return t.repeat_interleave(width, dim=1)[:, :cols]


@dataclass(frozen=True)
class Quantized:
    """A quantized weight: codes uint8 (N, K) unpacked, scales float16 (N, G), zeros uint8 (N, G)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: QuantSpec

    def __post_init__(self) -> None:
        rows, cols = self.codes.shape
        grouped = (rows, self.spec.groups(cols))
        if self.codes.dtype != torch.uint8 or self.zeros.dtype != torch.uint8 or self.scales.dtype != torch.float16:
            raise ValueError("Quantized needs uint8 codes and zeros and float16 scales")
        if tuple(self.scales.shape) != grouped or tuple(self.zeros.shape) != grouped:
            raise ValueError(f"scales/zeros must be {grouped} for codes {(rows, cols)} and {self.spec}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) w_hat = (q − z)·s, computed exactly in float32, then cast to dtype."""
        cols = self.codes.shape[1]
        g = self.spec.group_size
        zero = expand_groups(self.zeros, g, cols).float()
        scale = expand_groups(self.scales, g, cols).float()
        return ((self.codes.float() - zero) * scale).to(dtype)


def find_params(W_group: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., g) weights → (scale float16 (...,), zero uint8 (...,)), one pair per group (last dim),
    from the range formulas of the module docstring."""
    x = W_group.float()
    if spec.symmetric:
        scale = x.abs().amax(-1) * 2 / spec.maxq
    else:
        lo = x.amin(-1).clamp(max=0)
        scale = (x.amax(-1).clamp(min=0) - lo) / spec.maxq
    scale = torch.where(scale == 0, 1.0, scale).clamp(FP16_TINY, FP16_MAX).to(torch.float16)
    if spec.symmetric:
        zero = torch.full_like(scale, 1 << (spec.bits - 1), dtype=torch.uint8)
    else:
        zero = torch.round(-lo / scale.float()).clamp(0, spec.maxq).to(torch.uint8)
    return scale, zero


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Codes of x (..., g) for per-group scale/zero (...,); returns uint8 (..., g)."""
    q = torch.round(x.float() / scale.float().unsqueeze(-1)) + zero.float().unsqueeze(-1)
    return q.clamp(0, spec.maxq).to(torch.uint8)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32 (q − z)·s for codes (..., g) and per-group scale/zero (...,)."""
    return (q.float() - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)


def rtn(W: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> Quantized:
    """Round-to-nearest quantization of W (N, K); entries where mask is True get q = z (0.0)."""
    W = W.float()
    if mask is not None:
        # pruned weights are 0: they must not widen a group's range, and 0 quantizes to q = z
        W = W.masked_fill(mask, 0.0)
    rows, cols = W.shape
    width, groups = spec.width(cols), spec.groups(cols)
    # zero padding of the last group changes no parameter: lo ≤ 0 ≤ hi and max|w| ≥ 0 already
    grouped = torch.nn.functional.pad(W, (0, groups * width - cols)).reshape(rows, groups, width)
    scale, zero = find_params(grouped, spec)
    codes = quantize_codes(grouped, scale, zero, spec).reshape(rows, groups * width)[:, :cols]
    return Quantized(codes.contiguous(), scale, zero, spec)


class GroupQuantizer:
    """Column hook of the SparseGPT/GPTQ engine (tasks/pruning/sparsegpt.ColumnQuantizer):
    `q_j = hook(W, j, pruned)` for j = 0, 1, …, K − 1.

    W is the engine's float32 working weight (N, K); W[:, j] must hold column j as updated so
    far. At a group start (j % g == 0; per-row quantization: j == 0) the group's parameters
    come from W[:, j : j + g] (per row: all of W) with the entries that `pruned` marks set
    to 0, so weights about to be pruned do not widen the range (joint SparseGPT + GPTQ).
    Those columns must then be up to date and their mask chosen, which holds when the
    engine's blocksize is a multiple of group_size, so that groups start at block starts.
    Per row, only the first block's mask is known at j == 0.

    Returns the fake-quantized column (N,), float32 and exactly dequantize(codes). Codes are
    recorded column by column; after the loop `result(mask)` gives the Quantized weight,
    with q = z where mask is True (the engine sets those weights to 0, whatever it returned).
    """

    def __init__(self, spec: QuantSpec):
        self.spec = spec
        self._codes: torch.Tensor | None = None  # (N, K), allocated at j == 0
        self._scales: torch.Tensor | None = None  # (N, G)
        self._zeros: torch.Tensor | None = None  # (N, G)
        self._next = 0  # the column expected next

    def __call__(self, W: torch.Tensor, j: int, pruned: torch.Tensor | None = None) -> torch.Tensor:
        rows, cols = W.shape
        width = self.spec.width(cols)
        if j == 0:
            groups = self.spec.groups(cols)
            self._codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
            self._scales = torch.empty(rows, groups, dtype=torch.float16, device=W.device)
            self._zeros = torch.empty(rows, groups, dtype=torch.uint8, device=W.device)
        elif j != self._next or self._codes is None or self._codes.shape != W.shape:
            raise ValueError(f"GroupQuantizer needs columns 0, 1, …, K−1 in order; expected {self._next}, got {j}")
        group = j // width
        if j % width == 0:
            span = W[:, j : j + width]
            if pruned is not None:
                span = span.masked_fill(pruned[:, j : j + width], 0.0)
            self._scales[:, group], self._zeros[:, group] = find_params(span, self.spec)
        scale, zero = self._scales[:, group], self._zeros[:, group]
        q = quantize_codes(W[:, j : j + 1], scale, zero, self.spec)  # (N, 1)
        self._codes[:, j : j + 1] = q
        self._next = j + 1
        return dequantize_codes(q, scale, zero)[:, 0]

    def result(self, mask: torch.Tensor | None = None) -> Quantized:
        """Codes/scales/zeros of the fake-quantized weight; pruned entries (mask True) get q = z."""
        if self._codes is None or self._next != self._codes.shape[1]:
            raise ValueError("GroupQuantizer.result() before every column was quantized")
        return _pruned_at_zero(Quantized(self._codes.clone(), self._scales.clone(), self._zeros.clone(), self.spec),
                               mask)


class StaticGroupQuantizer:
    """Column hook for GPTQ in activation order with static groups (act-order).

    The engine sees the weight's columns permuted: its column j is column order[j] of the
    weight (GPTQ: descending diag(H), the inputs with the most energy first, while the most
    error can still be corrected). Every group's parameters are fixed before the pass, from
    `params` (rtn of the pruned weight), so a group stays g consecutive *weight* columns
    and the packed layout is the one GroupQuantizer gives.
    """

    def __init__(self, params: Quantized, order: torch.Tensor):
        self.params, self.order = params, order.tolist()
        self._codes = params.codes.clone()

    def __call__(self, W: torch.Tensor, j: int, pruned: torch.Tensor | None = None) -> torch.Tensor:
        column = self.order[j]
        group = column // self.params.spec.width(W.shape[1])
        scale, zero = self.params.scales[:, group], self.params.zeros[:, group]
        q = quantize_codes(W[:, j : j + 1], scale, zero, self.params.spec)
        self._codes[:, column : column + 1] = q
        return dequantize_codes(q, scale, zero)[:, 0]

    def result(self, mask: torch.Tensor | None = None) -> Quantized:
        """As GroupQuantizer.result; `mask` in the weight's own column order."""
        p = self.params
        return _pruned_at_zero(Quantized(self._codes.clone(), p.scales, p.zeros, p.spec), mask)


def _pruned_at_zero(q: Quantized, mask: torch.Tensor | None) -> Quantized:
    """q with code = zero-point wherever mask is True, so those weights dequantize to exactly 0."""
    if mask is None:
        return q
    zeros = expand_groups(q.zeros, q.spec.group_size, q.codes.shape[1])
    return Quantized(torch.where(mask, zeros, q.codes), q.scales, q.zeros, q.spec)


def sqnr_db(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σw² / Σ(w − w_hat)²) in dB, in float64."""
    W, W_hat = W.double(), W_hat.double()
    noise = (W - W_hat).square().sum().item()
    return math.inf if noise == 0 else 10 * math.log10(W.square().sum().item() / noise)
