"""`nm` N:M semi-structured sparse weights (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K), n kept of every m consecutive inputs, K % m == 0, Kc = K·n/m:
    values   float16/bfloat16 (N, Kc)                 kept values, group by group
    indices  uint8 (N, ceil(Kc·b_i/8))                position (0…m−1) of each kept value inside
                                                      its group, b_i = 2 (m=4) or 4 (m=8) bits,
                                                      little-endian: value c at bits (c·b_i) mod 8
                                                      of byte (c·b_i) // 8
Math:
    Ŵ[n, (c // n)·m + idx[n, c]] = values[n, c], zero elsewhere
    y[b, r] = Σ_k x[b, k] · Ŵ[r, k]          fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16 (values' dtype), y (B, N).

Triton has no sparse tensor-core dot, so each (BLOCK_N, BLOCK_K) tile is loaded compressed
(BLOCK_K·n/m values + their index bytes), scattered to dense in registers and multiplied densely:
GEMV for B ≤ 4, tl.dot for B > 4 (kernels/_common.py). Supported: m ∈ {4, 8} and n a power of
two below m (2:4, 1:4, 4:8, 2:8, 1:8) — a tile of BLOCK_K·n/m kept values must be a power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import (BenchResult, accumulate, block_offsets, check_tensor, check_x, launch,
                             make_out, nm_scatter, require_cuda, run_bench, store_y, tensor_bytes, tune, unpack)

FORMAT = "nm"
INDEX_BITS = {4: 2, 8: 4}


@triton.jit
def _nm_matmul_kernel(
    x_ptr, v_ptr, i_ptr, y_ptr,
    B, N, K, KC,
    stride_xb, stride_xk, stride_v, stride_i, stride_yb,
    batch_bucket,  # autotune key only
    N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
    GEMV_ROWS: tl.constexpr,  # B on the GEMV path, 0 on the tiled one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m, offs_n = block_offsets(B, N, BLOCK_M, BLOCK_N)  # (BLOCK_M,), (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    BLOCK_KC: tl.constexpr = BLOCK_K // M * N_KEEP  # kept values per tile
    PER_BYTE: tl.constexpr = 8 // INDEX_BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        c0 = k0 // M * N_KEEP
        offs_c = c0 + tl.arange(0, BLOCK_KC)
        vals = tl.load(v_ptr + rows[:, None] * stride_v + offs_c[None, :],
                       mask=n_mask[:, None] & (offs_c[None, :] < KC), other=0.0)  # (BLOCK_N, BLOCK_KC)
        offs_ib = c0 // PER_BYTE + tl.arange(0, BLOCK_KC // PER_BYTE)
        index_bytes = tl.load(i_ptr + rows[:, None] * stride_i + offs_ib[None, :],
                              mask=n_mask[:, None] & (offs_ib[None, :] * PER_BYTE < KC), other=0)
        pos = unpack(index_bytes, INDEX_BITS)  # (BLOCK_N, BLOCK_KC) in 0..M-1
        w = nm_scatter(vals.to(tl.float32), pos, N_KEEP, M)  # (BLOCK_N, BLOCK_K)
        acc = accumulate(acc, w, x_ptr, offs_m, offs_k, B, K, stride_xb, stride_xk, GEMV_ROWS, DOT_F32)
    store_y(y_ptr, acc, offs_m, offs_n, B, N, stride_yb)


_tuned = tune(_nm_matmul_kernel, key=["N", "K", "batch_bucket", "N_KEEP", "M"])


def check_nm(fmt: str, n: int, m: int, k: int) -> int:
    """Validates n:m against K and the kernel's limits; returns Kc."""
    if m not in INDEX_BITS:
        raise ValueError(f"{fmt}: m must be 4 or 8 (2- or 4-bit indices), got m={m}")
    if not (isinstance(n, int) and 0 < n < m and n & (n - 1) == 0):
        raise ValueError(f"{fmt}: n must be a power of two below m={m} (the kernel's tiles hold BLOCK_K·n/m "
                         f"kept values, which must be a power of two), got n={n}")
    if k % m:
        raise ValueError(f"{fmt}: K={k} must be a multiple of m={m}")
    return k // m * n


def matmul(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, *, n: int = 2, m: int = 4,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `nm` (n kept of every m). values must have x's dtype.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k = check_x(FORMAT, x)
    kc = check_nm(FORMAT, n, m, k)
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        raise ValueError(f"{FORMAT}: values must be a 2-D (N, K·n/m) tensor")
    rows = values.shape[0]
    check_tensor(FORMAT, "values", values, x.dtype, (rows, kc), x, "(x's dtype) (N, K·n/m)")
    check_tensor(FORMAT, "indices", indices, torch.uint8, (rows, -(-kc * INDEX_BITS[m] // 8)), x,
                 f"(N, ceil(Kc·{INDEX_BITS[m]}/8))")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    launch(_tuned, x, rows,
           (x, values, indices, out, batch, rows, k, kc,
            x.stride(0), x.stride(1), values.stride(0), indices.stride(0), out.stride(0)),
           N_KEEP=n, M=m, INDEX_BITS=INDEX_BITS[m])
    return out


def kept_columns(indices: torch.Tensor, n: int, m: int, kc: int) -> torch.Tensor:
    """Original column (N, Kc) of each kept value: its group's first column + its index."""
    bits = INDEX_BITS[m]
    shifts = torch.arange(8 // bits, device=indices.device, dtype=torch.int32) * bits
    pos = ((indices.to(torch.int32)[:, :, None] >> shifts) & (2**bits - 1)).reshape(indices.shape[0], -1)[:, :kc]
    return torch.arange(kc, device=indices.device) // n * m + pos.long()


def dequantize(values: torch.Tensor, indices: torch.Tensor, *, n: int = 2, m: int = 4) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops."""
    rows, kc = values.shape
    cols = kept_columns(indices, n, m, kc)
    w = torch.zeros(rows, kc // n * m, dtype=torch.float32, device=values.device)
    return w.scatter_(1, cols, values.float())


def reference(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, *, n: int = 2,
              m: int = 4) -> torch.Tensor:
    """Torch: scatter to dense, fp32 matmul, cast to x's dtype."""
    return (x.float() @ dequantize(values, indices, n=n, m=m).T).to(x.dtype)


def bench(n_out: int = 4096, k: int = 4096, batch: int = 1, n: int = 2, m: int = 4,
          dtype: torch.dtype = torch.float16) -> BenchResult:
    """Time the kernel, the torch reference and cuBLAS dense on random data (CUDA only)."""
    from kernels.testing import pack_nm

    require_cuda(FORMAT)
    torch.manual_seed(0)
    packed = pack_nm(torch.randn(n_out, k, device="cuda", dtype=dtype), n, m)
    x = torch.randn(batch, k, device="cuda", dtype=dtype)
    t = packed.tensors
    return run_bench(
        f"{FORMAT} {n}:{m}",
        lambda: matmul(x, t["values"], t["indices"], n=n, m=m),
        lambda: reference(x, t["values"], t["indices"], n=n, m=m),
        x, packed.w_hat.to(dtype), tensor_bytes(*t.values()),
    )
