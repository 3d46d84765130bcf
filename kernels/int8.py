"""`int8` packed weights (docs/formats.md): y = x @ Ŵᵀ.

Format, W (N, K) = (out_features, in_features), groups of g consecutive inputs, G = ceil(K/g):
    qweight  uint8   (N, K)     one code per byte
    scales   float16 (N, G)
    zeros    uint8   (N, G)     integer zero point in [0, 255]
Math:
    Ŵ[n, k] = (q[n, k] − zeros[n, k // g]) · scales[n, k // g]
    y[b, n] = Σ_k x[b, k] · Ŵ[n, k]          fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

The kernel is kernels/int4.py's `_quant_matmul_kernel` with BITS=8: one PRMT puts two code bytes
under fp16 exponent bytes 0x64 (1024 + code, exact), one HSUB2 takes away 1024 + zero
(_common.int8_minus_zero); the scale applies once per group to the tile's partial sums. So this
file holds only the int8 launcher, reference and static specs. Measured (kernels.static_report,
sm_90, Triton 3.9), batch 1-16 path: 3.0 main-loop instructions per packed byte at g=128, 3.1
at g=64, 2.5 with one group per row; LDG.E.128; ≥ 344 CTAs at batch 1 on every benchmark shape.
"""

from __future__ import annotations

import torch

from kernels import int4

FORMAT = "int8"


def matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
           group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `int8`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return int4.quant_matmul(FORMAT, 8, x, qweight, scales, zeros, group_size, out)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops."""
    return int4.dequantize(qweight, scales, zeros, group_size=group_size, k=qweight.shape[1], bits=8)


def reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
              group_size: int) -> torch.Tensor:
    """Torch: dequantize, fp32 matmul, cast to x's dtype."""
    return int4.reference(x, qweight, scales, zeros, group_size=group_size, bits=8)


STATIC = int4.static_specs(FORMAT, 8)
