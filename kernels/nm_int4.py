"""`nm-int4` N:M sparse + int4 weights (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K), n kept of every m inputs, K % m == 0, Kc = K·n/m, G = ceil(K/g):
    values   uint8   (N, ceil(Kc/2))        int4 codes of the kept values along Kc: code c in byte
                                            c // 2, low nibble for even c, high for odd c
    indices  uint8   (N, ceil(Kc·b_i/8))    as `nm`: position of kept value c inside its group
    scales   float16 (N, G)                 per group of g *original* columns
    zeros    uint8   (N, G)
Math:
    col(c)       = (c // n)·m + idx[r, c]
    Ŵ[r, col(c)] = (q[r, c] − zeros[r, col(c) // g]) · scales[r, col(c) // g], zero elsewhere
    y[b, r]      = Σ_k x[b, k] · Ŵ[r, k]      fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

Per (BLOCK_N, BLOCK_K) tile: load BLOCK_K·n/m codes + index bytes, scatter code+1 to dense in
registers (0 then marks a pruned slot), dequantize in the dense domain — where each column's
scale group is known — and multiply: GEMV for B ≤ 4, tl.dot for B > 4 (kernels/_common.py).
Same n:m limits as kernels/nm.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import int4, nm
from kernels._common import (BenchResult, accumulate, block_offsets, check_group, check_tensor, check_x,
                             dequant, launch, make_out, nm_scatter, require_cuda, run_bench,
                             store_y, tensor_bytes, tune, unpack)

FORMAT = "nm-int4"


@triton.jit
def _nm_int4_matmul_kernel(
    x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K, KC,
    stride_xb, stride_xk, stride_v, stride_i, stride_g, stride_yb,
    batch_bucket,  # autotune key only
    N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
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
        offs_vb = c0 // 2 + tl.arange(0, BLOCK_KC // 2)
        code_bytes = tl.load(v_ptr + rows[:, None] * stride_v + offs_vb[None, :],
                             mask=n_mask[:, None] & (offs_vb[None, :] * 2 < KC), other=0)
        codes = unpack(code_bytes, 4)  # (BLOCK_N, BLOCK_KC)
        offs_ib = c0 // PER_BYTE + tl.arange(0, BLOCK_KC // PER_BYTE)
        index_bytes = tl.load(i_ptr + rows[:, None] * stride_i + offs_ib[None, :],
                              mask=n_mask[:, None] & (offs_ib[None, :] * PER_BYTE < KC), other=0)
        pos = unpack(index_bytes, INDEX_BITS)  # (BLOCK_N, BLOCK_KC)
        # Past Kc the masked loads give code 0 at position 0: finite, and x is 0 there.
        dense = nm_scatter(codes + 1, pos, N_KEEP, M)  # (BLOCK_N, BLOCK_K), 0 = pruned
        w = dequant(dense - 1, s_ptr, z_ptr, rows, n_mask, offs_k, k0, K, stride_g, GROUP, BLOCK_K)
        w = tl.where(dense > 0, w, 0.0)  # (BLOCK_N, BLOCK_K)
        acc = accumulate(acc, w, x_ptr, offs_m, offs_k, B, K, stride_xb, stride_xk, GEMV_ROWS, DOT_F32)
    store_y(y_ptr, acc, offs_m, offs_n, B, N, stride_yb)


_tuned = tune(_nm_int4_matmul_kernel, key=["N", "K", "batch_bucket", "N_KEEP", "M", "GROUP"])


def matmul(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor,
           zeros: torch.Tensor, *, group_size: int, n: int = 2, m: int = 4,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `nm-int4`. group_size: g over original columns, or -1.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k = check_x(FORMAT, x)
    kc = nm.check_nm(FORMAT, n, m, k)
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        raise ValueError(f"{FORMAT}: values must be a 2-D uint8 (N, ceil(Kc/2)) tensor")
    rows = values.shape[0]
    check_tensor(FORMAT, "values", values, torch.uint8, (rows, -(-kc // 2)), x, "(N, ceil(Kc/2))")
    check_tensor(FORMAT, "indices", indices, torch.uint8, (rows, -(-kc * nm.INDEX_BITS[m] // 8)), x,
                 f"(N, ceil(Kc·{nm.INDEX_BITS[m]}/8))")
    g, groups = check_group(FORMAT, group_size, k)
    check_tensor(FORMAT, "scales", scales, torch.float16, (rows, groups), x, "(N, ceil(K/g))")
    check_tensor(FORMAT, "zeros", zeros, torch.uint8, (rows, groups), x, "(N, ceil(K/g))")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    launch(_tuned, x, rows,
           (x, values, indices, scales, zeros, out, batch, rows, k, kc,
            x.stride(0), x.stride(1), values.stride(0), indices.stride(0), scales.stride(0), out.stride(0)),
           N_KEEP=n, M=m, INDEX_BITS=nm.INDEX_BITS[m], GROUP=0 if groups == 1 else g)
    return out


def dequantize(values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
               group_size: int, k: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the packed sizes round Kc up)."""
    kc = k // m * n
    cols = nm.kept_columns(indices, n, m, kc)  # (N, Kc)
    g = k if group_size == -1 else group_size
    kept = int4.dequantize_codes(int4.unpack_codes(values, 4, kc), scales, zeros, g, cols)
    return torch.zeros(values.shape[0], k, dtype=torch.float32, device=values.device).scatter_(1, cols, kept)


def reference(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor, *, group_size: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Torch: dequantize, scatter to dense, fp32 matmul, cast to x's dtype."""
    w = dequantize(values, indices, scales, zeros, group_size=group_size, n=n, m=m, k=x.shape[1])
    return (x.float() @ w.T).to(x.dtype)


def bench(n_out: int = 4096, k: int = 4096, batch: int = 1, group_size: int = 128, n: int = 2, m: int = 4,
          dtype: torch.dtype = torch.float16) -> BenchResult:
    """Time the kernel, the torch reference and cuBLAS dense on random data (CUDA only)."""
    from kernels.testing import pack_nm_quant

    require_cuda(FORMAT)
    torch.manual_seed(0)
    packed = pack_nm_quant(torch.randn(n_out, k, device="cuda", dtype=dtype), n, m, 4, group_size)
    x = torch.randn(batch, k, device="cuda", dtype=dtype)
    t = packed.tensors
    return run_bench(
        f"{FORMAT} {n}:{m}",
        lambda: matmul(x, **t, group_size=group_size, n=n, m=m),
        lambda: reference(x, **t, group_size=group_size, n=n, m=m),
        x, packed.w_hat.to(dtype), tensor_bytes(*t.values()),
    )


def _old_specs():
    from kernels._common import BATCH_1_16, GEMV_CONFIGS, LARGE_BATCH, TILED_CONFIGS, CompileSpec
    gemv = tuple(triton.Config(dict(c.kwargs, BLOCK_M=1, GEMV_ROWS=1, DOT_F32=False), num_warps=c.num_warps,
                               num_stages=c.num_stages) for c in GEMV_CONFIGS)
    tiled = tuple(triton.Config(dict(c.kwargs, GEMV_ROWS=0, DOT_F32=False), num_warps=c.num_warps,
                                num_stages=c.num_stages) for c in TILED_CONFIGS)
    return (CompileSpec(
        name="nm-int4 2:4 g128", kernel=_nm_int4_matmul_kernel,
        pointers=dict(x="fp16", v="u8", i="u8", s="fp16", z="u8", y="fp16"), packed=("v", "i"),
        constexprs=dict(N_KEEP=2, M=4, INDEX_BITS=2, GROUP=128, stride_xk=1),
        paths={BATCH_1_16: gemv + tiled[:2], LARGE_BATCH: tiled[2:]},
        packed_bytes=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] * 3 // 8 // (32 * c.num_warps),
        ctas=lambda c, n, k, b: -(-n // c.kwargs["BLOCK_N"]) * -(-b // c.kwargs["BLOCK_M"]),
        unaligned=("B", "batch_bucket")),)


STATIC = _old_specs()
