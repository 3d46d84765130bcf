"""`int4` packed weights (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K) = (out_features, in_features), groups of g consecutive inputs, G = ceil(K/g):
    qweight  uint8   (N, ceil(K/2))  code k in byte k // 2: low nibble for even k, high for odd k
    scales   float16 (N, G)
    zeros    uint8   (N, G)          integer zero point in [0, 15]
Math:
    Ŵ[n, k] = (q[n, k] − zeros[n, k // g]) · scales[n, k // g]
    y[b, n] = Σ_k x[b, k] · Ŵ[n, k]          fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

One kernel, two launch paths (kernels/_common.py): GEMV for B ≤ 4 (one program per BLOCK_N
output rows, all of x in the program, each packed byte read once, CUDA-core FMAs) and tiled for
B > 4 (tl.dot on the dequantized tile; B ≤ 16 is a single M block, so weights are still read
once). The kernel is generic in BITS, so kernels/int8.py reuses it with BITS=8.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import (BenchResult, accumulate, block_offsets, check_group, check_tensor, check_x,
                             dequant, launch, make_out, require_cuda, run_bench, store_y,
                             tensor_bytes, tune, unpack)

FORMAT = "int4"


@triton.jit
def _quant_matmul_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K,
    stride_xb, stride_xk, stride_q, stride_g, stride_yb,
    batch_bucket,  # autotune key only
    BITS: tl.constexpr,  # 4 or 8
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    GEMV_ROWS: tl.constexpr,  # B on the GEMV path, 0 on the tiled one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m, offs_n = block_offsets(B, N, BLOCK_M, BLOCK_N)  # (BLOCK_M,), (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)  # N · row bytes can pass 2^31
    PER_BYTE: tl.constexpr = 8 // BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        # Contiguous bytes, unpacked in registers: one load per byte, not one per code.
        offs_byte = k0 // PER_BYTE + tl.arange(0, BLOCK_K // PER_BYTE)
        byte_mask = n_mask[:, None] & (offs_byte[None, :] * PER_BYTE < K)
        packed = tl.load(q_ptr + rows[:, None] * stride_q + offs_byte[None, :], mask=byte_mask, other=0)
        q = unpack(packed, BITS)  # (BLOCK_N, BLOCK_K) int32
        w = dequant(q, s_ptr, z_ptr, rows, n_mask, offs_k, k0, K, stride_g, GROUP, BLOCK_K)  # (BLOCK_N, BLOCK_K)
        acc = accumulate(acc, w, x_ptr, offs_m, offs_k, B, K, stride_xb, stride_xk, GEMV_ROWS, DOT_F32)
    store_y(y_ptr, acc, offs_m, offs_n, B, N, stride_yb)


_tuned = tune(_quant_matmul_kernel, key=["N", "K", "batch_bucket", "BITS", "GROUP"])


def quant_matmul(fmt: str, bits: int, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Shared launcher of `int4` (bits=4) and `int8` (bits=8)."""
    batch, k = check_x(fmt, x)
    layout = "(N, K)" if bits == 8 else "(N, ceil(K/2))"
    if not isinstance(qweight, torch.Tensor) or qweight.dim() != 2:
        raise ValueError(f"{fmt}: qweight must be a 2-D uint8 {layout} tensor")
    n = qweight.shape[0]
    check_tensor(fmt, "qweight", qweight, torch.uint8, (n, -(-k * bits // 8)), x, layout)
    g, groups = check_group(fmt, group_size, k)
    check_tensor(fmt, "scales", scales, torch.float16, (n, groups), x, "(N, ceil(K/g))")
    check_tensor(fmt, "zeros", zeros, torch.uint8, (n, groups), x, "(N, ceil(K/g))")
    out = make_out(fmt, out, x, n)
    if batch == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    launch(_tuned, x, n,
           (x, qweight, scales, zeros, out, batch, n, k,
            x.stride(0), x.stride(1), qweight.stride(0), scales.stride(0), out.stride(0)),
           BITS=bits, GROUP=0 if groups == 1 else g)
    return out


def matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
           group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `int4`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return quant_matmul(FORMAT, 4, x, qweight, scales, zeros, group_size, out)


def unpack_codes(qweight: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """uint8 (N, ceil(K·bits/8)) → int codes (N, K), little-endian within each byte."""
    per = 8 // bits
    shifts = torch.arange(per, device=qweight.device, dtype=torch.int32) * bits
    codes = (qweight.to(torch.int32)[:, :, None] >> shifts) & (2**bits - 1)
    return codes.reshape(qweight.shape[0], -1)[:, :k]


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g: int,
                     cols: torch.Tensor | None = None) -> torch.Tensor:
    """(codes − zero) · scale in float32 for groups of g columns; `cols` (default 0..K-1, one row
    per code row) are the codes' original columns."""
    if cols is None:
        cols = torch.arange(codes.shape[1], device=codes.device).expand_as(codes)
    group = cols // g
    return (codes.float() - zeros.float().gather(1, group)) * scales.float().gather(1, group)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
               k: int, bits: int = 4) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops."""
    return dequantize_codes(unpack_codes(qweight, bits, k), scales, zeros, k if group_size == -1 else group_size)


def reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
              group_size: int, bits: int = 4) -> torch.Tensor:
    """Torch: dequantize, fp32 matmul, cast to x's dtype."""
    w = dequantize(qweight, scales, zeros, group_size=group_size, k=x.shape[1], bits=bits)
    return (x.float() @ w.T).to(x.dtype)


def bench(n_out: int = 4096, k: int = 4096, batch: int = 1, group_size: int = 128,
          dtype: torch.dtype = torch.float16, bits: int = 4) -> BenchResult:
    """Time the kernel, the torch reference and cuBLAS dense on random data (CUDA only)."""
    from kernels.testing import pack_quant

    fmt = f"int{bits}"
    require_cuda(fmt)
    torch.manual_seed(0)
    packed = pack_quant(torch.randn(n_out, k, device="cuda", dtype=dtype), bits, group_size)
    x = torch.randn(batch, k, device="cuda", dtype=dtype)
    t = packed.tensors
    return run_bench(
        fmt,
        lambda: quant_matmul(fmt, bits, x, t["qweight"], t["scales"], t["zeros"], group_size),
        lambda: reference(x, t["qweight"], t["scales"], t["zeros"], group_size=group_size, bits=bits),
        x, packed.w_hat.to(dtype), tensor_bytes(*t.values()),
    )


def _old_specs(fmt, bits, groups):
    from kernels._common import BATCH_1_16, GEMV_CONFIGS, LARGE_BATCH, TILED_CONFIGS, CompileSpec, next_pow2
    gemv = tuple(triton.Config(dict(c.kwargs, BLOCK_M=1, GEMV_ROWS=1, DOT_F32=False), num_warps=c.num_warps,
                               num_stages=c.num_stages) for c in GEMV_CONFIGS)
    tiled = tuple(triton.Config(dict(c.kwargs, GEMV_ROWS=0, DOT_F32=False), num_warps=c.num_warps,
                                num_stages=c.num_stages) for c in TILED_CONFIGS)
    return tuple(CompileSpec(
        name=f"{fmt} g{g}", kernel=_quant_matmul_kernel,
        pointers=dict(x="fp16", q="u8", s="fp16", z="u8", y="fp16"), packed=("q",),
        constexprs=dict(BITS=bits, GROUP=g, stride_xk=1),
        paths={BATCH_1_16: gemv + tiled[:2], LARGE_BATCH: tiled[2:]},
        packed_bytes=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] * bits // 8 // (32 * c.num_warps),
        ctas=lambda c, n, k, b: -(-n // c.kwargs["BLOCK_N"]) * -(-b // c.kwargs["BLOCK_M"]),
        unaligned=("B", "batch_bucket")) for g in groups)


STATIC = _old_specs("int4", 4, (128,))
