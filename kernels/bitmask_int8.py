"""`bitmask-int8` sparse quantized weights (docs/formats.md, version 2): y = x @ Ŵᵀ.

Format, W (N, K), groups of g consecutive original columns, G = ceil(K/g), J = ceil(K/512):
    mask           uint8 (N, ceil(K/8))     bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values         uint8 (L,)               one code per byte, chunk by chunk of 512 columns (row-major),
                                            each chunk's kept codes from a 16-byte boundary
    chunk_offsets  int32 (N, J)             chunk (n, j) starts at values[16 · chunk_offsets[n, j]]
    scales         float16 (N, G), zeros uint8 (N, G)
Math:
    Ŵ[n, k] = (values[16 · chunk_offsets[n, k // 512] + popcount(mask[n, 512·(k // 512) : k])] − zeros[n, k // g])
              · scales[n, k // g] where kept, else 0;   y = x @ Ŵᵀ, fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

The kernel is kernels/bitmask_int4.py's `_bitmask_quant_matmul_kernel` with BITS=8 (a code is
its byte; with fp16 x and g a multiple of 64 or one group per row, mask byte by mask byte on
the tensor cores from 16-byte code vectors), so this file holds only the launcher and the torch
reference.
"""

from __future__ import annotations

import torch

from kernels import bitmask_int4

FORMAT = "bitmask-int8"


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor,
           scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask-int8`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return bitmask_int4.quant_matmul(FORMAT, 8, x, mask, values, chunk_offsets, scales, zeros, group_size, out)


def dequantize(mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor, *, group_size: int, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    return bitmask_int4.dequantize_codes(mask, values, chunk_offsets, scales, zeros, group_size, k, 8)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor,
              scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Torch: dequantize, fp32 matmul, cast to x's dtype."""
    w = dequantize(mask, values, chunk_offsets, scales, zeros, group_size=group_size, k=x.shape[1])
    return (x.float() @ w.T).to(x.dtype)


STATIC = (bitmask_int4.static_spec(8, 128), bitmask_int4.static_spec(8, 64))
