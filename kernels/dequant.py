"""Dequantize a packed weight of any format with a kernel into a dense Ŵ in one Triton pass
(docs/formats.md).

The dispatcher's large-batch path (kernels/dispatch.py, candidate `dequant`): at prefill-sized
batches the matmul, not the weight stream, bounds the time, so the fastest use of a packed weight
is to write Ŵ once in x's dtype and hand it to cuBLAS. The torch fallback does the same in four
or more float32 passes (unpack, gather zeros, gather scales, subtract-multiply, cast); this is one
read of the packed bytes and one write of Ŵ.

`int4` / `int8`, W (N, K), groups of g consecutive inputs, G = ceil(K/g):
    qweight  uint8   (N, ceil(K·b/8))   b = 4: element k in byte k // 2, low nibble for even k
    scales   float16 (N, G)
    zeros    uint8   (N, G)
Math, exactly as tasks' Quantized.dequantize: Ŵ[n, k] = (q − zeros[n, k//g]) · scales[n, k//g] in
float32, then cast. Grid: (ceil(N / BLOCK_N), ceil(K / BLOCK_K)) tiles of Ŵ.

The n:m formats (`dequantize_nm`) add `indices` and store only the kept values (`nm`: in x's dtype,
unscaled; `nm-int8` / `nm-int4`: codes as above, groups over the original columns): each tile's
kept values go to their columns (kernels._common.nm_scatter), zero elsewhere. The bitmask formats
(`dequantize_bitmask`) take one 512-column chunk per tile: its values start at its chunk offset,
and a kept column's is the chunk's kept columns before it (an exclusive cumsum of the mask bits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import nm_scatter, scale_columns, unpack
from kernels.bitmask import CHUNK_COLUMNS
from kernels.nm import INDEX_BITS, check_nm

BLOCK_N, BLOCK_K = 32, 128
BITS = {"int4": 4, "int8": 8}
NM_BITS = {"nm": 16, "nm-int8": 8, "nm-int4": 4}  # 16: values of x's dtype
BITMASK_BITS = {"bitmask": 16, "bitmask-int8": 8, "bitmask-int4": 4}
BITMASK_ROWS = 8


@triton.jit
def _dequant_kernel(q_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_q, G, group,
                    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows[:, None] < N
    if BITS == 4:
        # (BLOCK_N, BLOCK_K/2) bytes, masked on the row's byte count so a thread's bytes stay one load
        offs_b = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        b = tl.load(q_ptr + rows[:, None] * stride_q + offs_b[None, :], mask=row_ok & (offs_b[None, :] < stride_q),
                    other=0)
        codes = tl.interleave(b & 15, b >> 4)  # (BLOCK_N, BLOCK_K): even k low nibble, odd k high
    else:
        codes = tl.load(q_ptr + rows[:, None] * stride_q + cols[None, :], mask=row_ok & (cols[None, :] < K),
                        other=0)
    ok = row_ok & (cols[None, :] < K)
    g = rows[:, None] * G + cols[None, :] // group
    scale = tl.load(s_ptr + g, mask=ok, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + g, mask=ok, other=0).to(tl.float32)
    w = (codes.to(tl.float32) - zero) * scale
    tl.store(w_ptr + rows[:, None] * K + cols[None, :], _round(w, w_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _round(w, dtype: tl.constexpr):
    """float32 → dtype, round to nearest even. bf16 by hand: TRITON_INTERPRET's cast truncates."""
    if dtype == tl.bfloat16:
        u = w.to(tl.uint32, bitcast=True)
        u += 0x7FFF + ((u >> 16) & 1)
        return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return w.to(dtype)


@triton.jit
def _nm_dequant_kernel(v_ptr, i_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_v, stride_i, stride_g, group,
                       BITS: tl.constexpr, N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    KEPT: tl.constexpr = BLOCK_K // M * N_KEEP  # kept values per row of the tile
    PER_BYTE: tl.constexpr = 8 // BITS if BITS < 8 else 1
    offs_v = tl.program_id(1) * (KEPT // PER_BYTE) + tl.arange(0, KEPT // PER_BYTE)
    offs_i = tl.program_id(1) * (KEPT * INDEX_BITS // 8) + tl.arange(0, KEPT * INDEX_BITS // 8)
    # masked on the rows' byte counts; past them: code / value 0 at position 0, and columns ≥ K unstored
    vals = tl.load(v_ptr + rows[:, None] * stride_v + offs_v[None, :], mask=row_ok[:, None] & (offs_v[None, :] < stride_v),
                   other=0)
    pos = unpack(tl.load(i_ptr + rows[:, None] * stride_i + offs_i[None, :],
                         mask=row_ok[:, None] & (offs_i[None, :] < stride_i), other=0), INDEX_BITS)
    if BITS == 16:
        w = nm_scatter(vals.to(tl.float32), pos, N_KEEP, M)
    else:
        codes = unpack(vals, 4) if BITS == 4 else vals.to(tl.int32)
        dense = nm_scatter(codes + 1, pos, N_KEEP, M)  # 0: pruned
        w = tl.where(dense > 0, scale_columns(dense - 1, s_ptr, z_ptr, rows, row_ok, cols[None, :], K, stride_g, group),
                     0.0)
    ok = row_ok[:, None] & (cols[None, :] < K)
    tl.store(w_ptr + rows[:, None] * K + cols[None, :], _round(w, w_ptr.dtype.element_ty), mask=ok)


def dequantize_nm(fmt: str, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor | None = None,
                  zeros: torch.Tensor | None = None, *, k: int, n: int = 2, m: int = 4, group_size: int = -1,
                  dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Ŵ (N, K) in `dtype` from an n:m format's packed tensors, as its launcher takes them."""
    bits = NM_BITS[fmt]
    check_nm(fmt, n, m, k)
    rows = values.shape[0]
    w = torch.empty(rows, k, dtype=dtype, device=values.device)
    if rows == 0 or k == 0:
        return w
    group = k if group_size == -1 else group_size
    stride_g = 0 if scales is None else scales.stride(0)
    scales = values if scales is None else scales  # unread for `nm`
    zeros = values if zeros is None else zeros
    grid = (triton.cdiv(rows, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _nm_dequant_kernel[grid](values, indices, scales, zeros, w, rows, k, values.stride(0), indices.stride(0),
                             stride_g, group, BITS=bits, N_KEEP=n, M=m, INDEX_BITS=INDEX_BITS[m], BLOCK_N=BLOCK_N,
                             BLOCK_K=BLOCK_K)
    return w


@triton.jit
def _bitmask_dequant_kernel(m_ptr, v_ptr, co_ptr, s_ptr, z_ptr, w_ptr, N, K, stride_m, stride_co, stride_g, group,
                            BITS: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    row_ok = rows < N
    offs_m = chunk * (CHUNK // 8) + tl.arange(0, CHUNK // 8)
    bits = unpack(tl.load(m_ptr + rows[:, None] * stride_m + offs_m[None, :],
                          mask=row_ok[:, None] & (offs_m[None, :] < stride_m), other=0), 1)
    kept = (bits > 0) & (cols[None, :] < K)  # mask bits past K are unspecified
    rank = tl.cumsum(kept.to(tl.int32), axis=1) - kept.to(tl.int32)
    UNITS: tl.constexpr = 128 // BITS  # entries per 16 bytes of the stream
    start = tl.load(co_ptr + rows * stride_co + chunk, mask=row_ok, other=0).to(tl.int64) * UNITS
    idx = start[:, None] + rank
    if BITS == 4:
        byte = tl.load(v_ptr + idx // 2, mask=kept, other=0).to(tl.int32)
        codes = (byte >> (4 * (idx % 2)).to(tl.int32)) & 15
    else:
        codes = tl.load(v_ptr + idx, mask=kept, other=0)
    if BITS == 16:
        w = codes.to(tl.float32)
    else:
        w = scale_columns(codes.to(tl.int32), s_ptr, z_ptr, rows, row_ok, cols[None, :], K, stride_g, group)
    ok = row_ok[:, None] & (cols[None, :] < K)
    tl.store(w_ptr + rows[:, None] * K + cols[None, :], _round(tl.where(kept, w, 0.0), w_ptr.dtype.element_ty), mask=ok)


def dequantize_bitmask(fmt: str, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor,
                       scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None, *, k: int,
                       group_size: int = -1, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Ŵ (N, K) in `dtype` from a bitmask format's packed tensors, as its launcher takes them."""
    rows = mask.shape[0]
    w = torch.empty(rows, k, dtype=dtype, device=mask.device)
    if rows == 0 or k == 0:
        return w
    stride_g = 0 if scales is None else scales.stride(0)
    scales = mask if scales is None else scales  # unread for `bitmask`
    zeros = mask if zeros is None else zeros
    values = values if values.numel() else torch.zeros(1, dtype=values.dtype, device=values.device)  # all pruned
    grid = (triton.cdiv(rows, BITMASK_ROWS), triton.cdiv(k, CHUNK_COLUMNS))
    _bitmask_dequant_kernel[grid](mask, values, chunk_offsets, scales, zeros, w, rows, k, mask.stride(0),
                                  chunk_offsets.stride(0), stride_g, k if group_size == -1 else group_size,
                                  BITS=BITMASK_BITS[fmt], BLOCK_N=BITMASK_ROWS, CHUNK=CHUNK_COLUMNS)
    return w


def dequantize_packed(fmt: str, tensors: dict, params: dict, *, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Ŵ (N, K) in `dtype` of any format with a kernel, from its launcher's tensors and parameters."""
    if fmt in NM_BITS:
        return dequantize_nm(fmt, **tensors, **params, k=k, dtype=dtype)
    if fmt in BITMASK_BITS:
        return dequantize_bitmask(fmt, **tensors, **params, k=k, dtype=dtype)
    return dequantize(**tensors, **params, k=k, bits=BITS[fmt], dtype=dtype)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int, k: int,
               bits: int = 4, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Ŵ (N, K) in `dtype` from the packed tensors; group_size -1 means one group per row."""
    n = qweight.shape[0]
    per_byte = 8 // bits
    if qweight.dtype != torch.uint8 or qweight.shape[1] != -(-k // per_byte):
        raise ValueError(f"qweight must be uint8 ({n}, {-(-k // per_byte)}) for K={k} at {bits} bits, "
                         f"got {qweight.dtype} {tuple(qweight.shape)}")
    group = k if group_size == -1 else group_size
    groups = -(-k // group)
    for name, t, want in (("scales", scales, torch.float16), ("zeros", zeros, torch.uint8)):
        if t.dtype != want or tuple(t.shape) != (n, groups):
            raise ValueError(f"{name} must be {want} ({n}, {groups}), got {t.dtype} {tuple(t.shape)}")
    w = torch.empty(n, k, dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _dequant_kernel[grid](qweight.contiguous(), scales.contiguous(), zeros.contiguous(), w, n, k,
                          qweight.shape[1], groups, group, BITS=bits, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return w


def reference(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int, k: int,
              bits: int = 4, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The same Ŵ with torch ops: unpack little-endian codes, (q − z)·s in float32, cast."""
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=qweight.device, dtype=torch.int32) * bits
    codes = ((qweight.to(torch.int32)[:, :, None] >> shifts) & (2**bits - 1)).reshape(qweight.shape[0], -1)[:, :k]
    group = (torch.arange(k, device=qweight.device) // (k if group_size == -1 else group_size)).expand_as(codes)
    return ((codes.float() - zeros.float().gather(1, group)) * scales.float().gather(1, group)).to(dtype)
