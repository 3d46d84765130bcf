"""`bitmask` sparse weights at any sparsity (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K):
    mask         uint8 (N, ceil(K/8))        bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values       float16/bfloat16 (nnz,)     kept values, row-major
    row_offsets  int32 (N + 1,)              row n's values are values[row_offsets[n] : row_offsets[n+1]]
Math:
    slot(n, k) = row_offsets[n] + popcount(mask[n, 0:k])       (kept values before k in the row)
    Ŵ[n, k]    = values[slot(n, k)] if mask bit (n, k) else 0
    y[b, n]    = Σ_k x[b, k] · Ŵ[n, k]         fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16 (values' dtype), y (B, N).

Each program walks K in order for its BLOCK_N rows, so the popcount prefix is a running count
per row (carried across K tiles) plus an exclusive tl.cumsum inside the tile. A tile's kept
values are contiguous in `values`: each row loads them as a window (masked to its popcount) and
tl.gather places them at their columns. GEMV for B ≤ 4, tl.dot tiles above (kernels/_common.py).
row_offsets and values are trusted (checking them would cost a device sync per call).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import (BenchResult, accumulate, block_offsets, check_tensor, check_x, launch,
                             make_out, require_cuda, run_bench, store_y, tensor_bytes, tune, unpack)

FORMAT = "bitmask"


@triton.jit
def _bitmask_matmul_kernel(
    x_ptr, mask_ptr, v_ptr, ro_ptr, y_ptr,
    B, N, K,
    stride_xb, stride_xk, stride_mask, stride_yb,
    batch_bucket,  # autotune key only
    GEMV_ROWS: tl.constexpr,  # B on the GEMV path, 0 on the tiled one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m, offs_n = block_offsets(B, N, BLOCK_M, BLOCK_N)  # (BLOCK_M,), (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    # int32 offsets into values suffice: row_offsets are int32, so nnz < 2^31.
    first = tl.load(ro_ptr + offs_n, mask=n_mask, other=0)  # (BLOCK_N,) offset of this tile's first kept value
    window = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_byte = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        mask_bytes = tl.load(mask_ptr + rows[:, None] * stride_mask + offs_byte[None, :],
                             mask=n_mask[:, None] & (offs_byte[None, :] * 8 < K), other=0)
        kept = unpack(mask_bytes, 1)  # (BLOCK_N, BLOCK_K) 0/1
        kept = tl.where(offs_k[None, :] < K, kept, 0)  # padding bits of the last byte are unspecified
        count = tl.sum(kept, axis=1)  # (BLOCK_N,)
        # The tile's kept values are contiguous: load them as a per-row window (coalesced, no
        # pointer tensor to shuffle), then place each at its column with an in-register gather
        # indexed by the exclusive popcount prefix.
        vals = tl.load(v_ptr + first[:, None] + window[None, :], mask=window[None, :] < count[:, None], other=0.0)
        slot = tl.cumsum(kept, axis=1) - kept  # (BLOCK_N, BLOCK_K) exclusive prefix within the tile
        w = tl.where(kept != 0, tl.gather(vals, slot, axis=1).to(tl.float32), 0.0)
        first += count
        acc = accumulate(acc, w, x_ptr, offs_m, offs_k, B, K, stride_xb, stride_xk, GEMV_ROWS, DOT_F32)
    store_y(y_ptr, acc, offs_m, offs_n, B, N, stride_yb)


_tuned = tune(_bitmask_matmul_kernel)


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask`. values must have x's dtype.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k = check_x(FORMAT, x)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{FORMAT}: mask must be a 2-D uint8 (N, ceil(K/8)) tensor")
    rows = mask.shape[0]
    check_tensor(FORMAT, "mask", mask, torch.uint8, (rows, -(-k // 8)), x, "(N, ceil(K/8))")
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"{FORMAT}: values must be a 1-D (nnz,) tensor")
    check_tensor(FORMAT, "values", values, x.dtype, tuple(values.shape), x, "(x's dtype) (nnz,)")
    check_tensor(FORMAT, "row_offsets", row_offsets, torch.int32, (rows + 1,), x, "(N + 1,)")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    launch(_tuned, x, rows,
           (x, mask, values, row_offsets, out, batch, rows, k,
            x.stride(0), x.stride(1), mask.stride(0), out.stride(0)))
    return out


def dequantize(mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, *, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    shifts = torch.arange(8, device=mask.device, dtype=torch.int32)
    kept = ((mask.to(torch.int32)[:, :, None] >> shifts) & 1).reshape(mask.shape[0], -1)[:, :k]
    slot = row_offsets[:-1, None].long() + kept.cumsum(1) - kept  # exclusive popcount prefix
    gathered = values.float()[slot.clamp(max=max(values.numel() - 1, 0))] if values.numel() else 0.0
    return torch.where(kept.bool(), gathered, 0.0)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor) -> torch.Tensor:
    """Torch: expand to dense, fp32 matmul, cast to x's dtype."""
    return (x.float() @ dequantize(mask, values, row_offsets, k=x.shape[1]).T).to(x.dtype)


def bench(n_out: int = 4096, k: int = 4096, batch: int = 1, sparsity: float = 0.5,
          dtype: torch.dtype = torch.float16) -> BenchResult:
    """Time the kernel, the torch reference and cuBLAS dense on random data (CUDA only)."""
    from kernels.testing import pack_bitmask

    require_cuda(FORMAT)
    torch.manual_seed(0)
    w = torch.randn(n_out, k, device="cuda", dtype=dtype)
    w[torch.rand(n_out, k, device="cuda") < sparsity] = 0
    packed = pack_bitmask(w)
    x = torch.randn(batch, k, device="cuda", dtype=dtype)
    t = packed.tensors
    return run_bench(
        f"{FORMAT} {sparsity:.0%}",
        lambda: matmul(x, **t),
        lambda: reference(x, **t),
        x, w, tensor_bytes(*t.values()),
    )
