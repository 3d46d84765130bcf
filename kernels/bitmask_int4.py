"""`bitmask-int4` / `bitmask-int8` sparse quantized weights (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K), groups of g consecutive original columns, G = ceil(K/g):
    mask         uint8 (N, ceil(K/8))       bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values       uint8 (ceil(nnz/2),)       int4: kept codes two per byte, row-major across rows,
                                            code i in byte i // 2, low nibble for even i
                 uint8 (nnz,)               int8: one code per byte
    row_offsets  int32 (N + 1,)             row n's codes are codes[row_offsets[n] : row_offsets[n+1]]
    scales       float16 (N, G), zeros uint8 (N, G)
Math:
    slot(n, k) = row_offsets[n] + popcount(mask[n, 0:k])
    Ŵ[n, k]    = (codes[slot(n, k)] − zeros[n, k // g]) · scales[n, k // g] if kept, else 0
    y[b, n]    = Σ_k x[b, k] · Ŵ[n, k]        fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

The bitmask kernel (kernels/bitmask.py: words, a popcount per word and a prefix across the
row, a popcount per column inside the word, split over K) gathering codes instead of values:
the gather returns the zero code for pruned columns, so (code − zero) · scale is exactly 0
there with no select. Codes become fp32 by the 2^23 trick (OR into 0x4B000000, subtract
2^23 + zero: exact for codes < 2^23). When g is a multiple of 32 (every production group) the
scale and zero are loaded once per 32-bit mask word; otherwise per column. A row's int4 codes
start at any nibble: the gather reads the byte of each code and shifts by its parity.
BITS = 8 serves `bitmask-int8` (kernels/bitmask_int8.py).

Measured on sm_90 (Triton 3.9, `python -m kernels.static_report --kernel bitmask-int4`), 50%
sparsity, g = 128: 55-67 SASS instructions per packed byte at batch 1 (was 128-180), 75 on the
BLOCK_M = 16 tiles; bitmask-int8 23-25 and 38. Per column the kernel pays ≈ 20 instructions
(mask shift and popcount, a predicated 8-bit gather and its address, the nibble shift, the
dequantization, the FFMA, the re-layout of per-word data) against 0.375 packed bytes, so it
stays far above 6 per byte; docs/formats.md, "Kernel limits", says what it would take.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _sparse
from kernels._common import check_group, check_tensor, make_out
from kernels._sparse import code_value, k_tile_range, rows_total, store_split
from kernels.bitmask import (GEMV_CONFIGS, INTERPRET_CONFIGS, TILED_CONFIGS, accumulate_words, check_bitmask,
                             gather_kept, kept_and_slots, mask_words, tile_bases, tuned, values_before)

FORMAT = "bitmask-int4"


@triton.jit
def word_params(s_ptr, z_ptr, rows, n_mask, t, K, stride_g, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scale (fp32) and zero (int32) of each 32-column word of K tile t, (BLOCK_N, BLOCK_K/32):
    GROUP is 0 (one group per row) or a multiple of 32."""
    cols = t * BLOCK_K + tl.arange(0, BLOCK_K // 32) * 32  # first column of each word
    offs = rows[:, None] * stride_g + (cols[None, :] // GROUP if GROUP > 0 else 0)
    mask = n_mask[:, None] & (cols[None, :] < K)
    scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.int32)
    return scale, zero


@triton.jit
def _bitmask_quant_matmul_kernel(
    x_ptr, mask_ptr, v_ptr, ro_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K, MB,  # MB: mask bytes per row
    stride_xb, stride_mask, stride_g, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_sparse.py)
    batch_bucket,  # autotune key only
    BITS: tl.constexpr,  # 4 or 8
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    USE_ASM: tl.constexpr,  # False under the interpreter
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    W: tl.constexpr = BLOCK_K // 32
    PER_WORD: tl.constexpr = GROUP % 32 == 0  # scale and zero constant across a word (GROUP = 0 too)
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    mask_rows = mask_ptr + rows[:, None] * stride_mask  # (BLOCK_N, 1)
    first, last = k_tile_range(K, BLOCK_K)
    start = values_before(ro_ptr, mask_rows, offs_n, n_mask, first, MB, BLOCK_K)  # (BLOCK_N,) code index
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, W, 32), dtype=tl.float32)  # B = 1: per weight, reduced after the loop
    for t in range(first, last):
        words = mask_words(mask_rows, n_mask, t, K, MB, BLOCK_K)  # (BLOCK_N, W)
        base, count = tile_bases(words, start)
        if PER_WORD:
            scale, zero = word_params(s_ptr, z_ptr, rows, n_mask, t, K, stride_g, GROUP, BLOCK_K)  # (BLOCK_N, W)
            q = gather_kept(v_ptr, base, words, zero, BITS, USE_ASM)  # (BLOCK_N, W, 32), zero where pruned
            w = code_value(q, zero[:, :, None]) * scale[:, :, None]
        else:
            q = gather_kept(v_ptr, base, words, tl.zeros_like(base), BITS, USE_ASM)
            cols = (t * BLOCK_K + tl.arange(0, BLOCK_K)).reshape(1, W, 32)
            offs = rows[:, None, None] * stride_g + cols // GROUP
            s_mask = n_mask[:, None, None] & (cols < K)
            scale = tl.load(s_ptr + offs, mask=s_mask, other=0.0).to(tl.float32)  # (BLOCK_N, W, 32)
            zero = tl.load(z_ptr + offs, mask=s_mask, other=0).to(tl.int32)
            kept = ((words[:, :, None] >> tl.arange(0, 32)[None, None, :].to(tl.uint32)) & 1) != 0
            w = tl.where(kept, code_value(q, zero) * scale, 0.0)
        start += count
        acc, acc2 = accumulate_words(acc, acc2, w, x_ptr, offs_m, t, B, K, stride_xb, GEMV_ROWS, DOT_F32)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


_GEMV, _TILED = tuned(_bitmask_quant_matmul_kernel, GEMV_CONFIGS, TILED_CONFIGS, INTERPRET_CONFIGS,
                      ["N", "K", "batch_bucket", "BITS", "GROUP"])


def quant_matmul(fmt: str, bits: int, x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor,
                 row_offsets: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                 out: torch.Tensor | None) -> torch.Tensor:
    """The launcher of both quantized bitmask formats (bits = 4 or 8)."""
    batch, k, rows = check_bitmask(fmt, x, mask, row_offsets)
    g, groups = check_group(fmt, group_size, k)
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"{fmt}: values must be a 1-D uint8 tensor of codes")
    check_tensor(fmt, "values", values, torch.uint8, tuple(values.shape), x,
                 "(ceil(nnz/2),)" if bits == 4 else "(nnz,)")
    check_tensor(fmt, "scales", scales, torch.float16, (rows, groups), x, "(N, ceil(K/g))")
    check_tensor(fmt, "zeros", zeros, torch.uint8, (rows, groups), x, "(N, ceil(K/g))")
    out = make_out(fmt, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    _sparse.launch(_GEMV, _TILED, x, rows,
                   (x, mask, values, row_offsets, scales, zeros, out, batch, rows, k, mask.shape[1],
                    x.stride(0), mask.stride(0), scales.stride(0), out.stride(0)),
                   BITS=bits, GROUP=0 if groups == 1 else g, USE_ASM=not _sparse._interpreting())
    return out


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor,
           scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask-int4`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return quant_matmul(FORMAT, 4, x, mask, values, row_offsets, scales, zeros, group_size, out)


def codes(values: torch.Tensor, bits: int) -> torch.Tensor:
    """The code stream (int64) of a values tensor: nibbles low first for int4."""
    v = values.long()
    return torch.stack([v & 0xF, v >> 4], dim=-1).reshape(-1) if bits == 4 else v


def dequantize_codes(mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor, group_size: int, k: int, bits: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops, for either code width."""
    kept, slot = kept_and_slots(mask, row_offsets, k)
    stream = codes(values, bits)
    q = stream[slot.clamp(max=max(stream.numel() - 1, 0))] if stream.numel() else torch.zeros_like(slot)
    group = torch.arange(k, device=mask.device) // (k if group_size == -1 else group_size)
    w = (q.float() - zeros.float()[:, group]) * scales.float()[:, group]
    return torch.where(kept, w, 0.0)


def dequantize(mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor, *, group_size: int, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    return dequantize_codes(mask, values, row_offsets, scales, zeros, group_size, k, 4)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor,
              scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Torch: dequantize, fp32 matmul, cast to x's dtype."""
    w = dequantize(mask, values, row_offsets, scales, zeros, group_size=group_size, k=x.shape[1])
    return (x.float() @ w.T).to(x.dtype)


def static_spec(bits: int):
    """bitmask-int<bits> at 50% sparsity, groups of 128: the mask and half the weights' codes."""
    return _sparse.static_spec(
        f"bitmask-int{bits} 50% g128", _bitmask_quant_matmul_kernel,
        dict(x="fp16", mask="u8", v="u8", ro="i32", s="fp16", z="u8", y="fp16"), ("mask", "v"),
        dict(BITS=bits, GROUP=128, USE_ASM=True), GEMV_CONFIGS, TILED_CONFIGS, 1 / 8 + 0.5 * bits / 8)


STATIC = (static_spec(4),)
