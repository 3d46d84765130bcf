"""Checks shared by tests/test_kernels.py and tests/test_kernels_sparse.py: seeded inputs, the
float64 comparison every kernel test makes, and the PTX byte permute's model."""

from __future__ import annotations

import zlib

import torch

from kernels import _common

EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def seeded(*key) -> torch.Generator:
    """A generator seeded from the test's identity (crc32: stable across runs, unlike hash())."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def assert_matches(y: torch.Tensor, x: torch.Tensor, w_hat: torch.Tensor, truncating_bf16: bool = False) -> None:
    """y = x @ ŵᵀ within 1.25 ulp of x's dtype per unit of Σ|x||ŵ|, and no output left unwritten (NaN
    poison). truncating_bf16: 2 ulp for bf16 under the interpreter, whose fp32 → bf16 cast truncates
    (kernels that cast their fp32 sums through it)."""
    assert not torch.isnan(y).any(), f"{int(torch.isnan(y).sum())} outputs never written (still NaN)"
    x64, w64 = x.double().cpu(), w_hat.double().cpu()
    err = (y.double().cpu() - x64 @ w64.T).abs()
    slack = 2.0 if truncating_bf16 and x.dtype == torch.bfloat16 and _common.INTERPRET else 1.25
    tol = slack * EPS[x.dtype] * (x64.abs() @ w64.abs().T) + 1e-6
    bad = err > tol
    if bad.any():
        b, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())}/{bad.numel()} outputs off; first at (b={b}, n={n}): "
                             f"err {err[b, n]:.3g} > tol {tol[b, n]:.3g}")


def prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 (default mode): byte i of the result is byte sel[i] of b:a, or its sign fill."""
    pool = (b << 32 | a).to_bytes(8, "little")
    out = 0
    for i in range(4):
        s = (sel >> 4 * i) & 0xF
        byte = pool[s & 7]
        out |= ((0xFF if byte & 0x80 else 0) if s & 8 else byte) << 8 * i
    return out
