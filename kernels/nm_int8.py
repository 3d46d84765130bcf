"""`nm-int8` N:M sparse weights with 8-bit codes (docs/formats.md): y = x @ Ŵᵀ.

Format, W (N, K), n kept of every m consecutive inputs, K % m == 0, Kc = K·n/m, groups of g
original columns (g % m == 0 for this kernel), G = ceil(K/g):
    values   uint8 (N, Kc)                 codes of the kept weights, group by group
    indices  uint8 (N, ceil(Kc·b_i/8))     as in `nm` (kernels/nm.py)
    scales   float16 (N, G), zeros uint8 (N, G)
Math:
    col(r, c) = (c // n)·m + idx[r, c]
    y[b, r]   = Σ_c (values[r, c] − zeros[r, col // g]) · scales[r, col // g] · x[b, col]
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

2:4 with fp16 x and every tile inside one quantization group (g a multiple of 64, or one group
per row; 64-column tiles for g = 64, the pipeline's default) runs on the tensor cores at every
batch (tc_tile; 128-row tiles of
x keep the scatter below, which costs them fewer instructions): a group's two
code bytes load as one halfword (8 groups per 128-bit load), kernels/nm_int4.py's byte permutes
(nm24_ptx, minus its nibble split) turn them into the group's four dense fp16 columns (code −
zero by the 0x6400 trick, exactly 0 where pruned), one dot per column against x[:, c::4], the
scale once per tile on the sums. Otherwise kernels/nm.py's two paths with a dequantization in
between: since g is a multiple of m, the kept codes of one quantization group are g·n/m
consecutive entries of `values`, so the tile of codes is dequantized in kept order (one scale
and zero per row and group, codes to fp32 by the 2^23 trick) before x is gathered by the indices
(B ≤ 4) or the codes are scattered to a dense tile (B > 4).

Measured (sm_90, Triton 3.9, `python -m kernels.static_report --kernel nm-int8`), 2:4, g = 128,
batch 1-16: 5.75-5.8 main-loop SASS instructions per packed byte, under the limit of 6 (5.9 with
a selector lookup and OR per column and pair of groups; was 10.3 at batch 1 and 18.9-19.1 on the
tiles through the dequantization and scatter), 128-bit packed loads, ≥ 344 CTAs at batch 1. Per
4 groups (10 packed bytes) 31 PTX instructions for the columns (3 for the four pattern keys,
then per column a table lookup of the four groups' selectors, its OR and one shift, and per pair
of groups a PRMT and an HSUB2) and ≈ 6.6 per group to stage the column tiles in the wgmma
layout, run the dots and apply the scale: the same build as nm-int4's tiles, whose 1.5 bytes per
group leave them at 9.3-9.8. g = 64: 5.76-5.83 on 64-column tiles of 256 rows per 4 warps (was
9.6 at batch 1-4 and 17.4-18.3 at 5-16 through the dequantization), 64-bit index loads (a row's
4 index bytes per tile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _sparse
from kernels._common import (INTERPRET, aligned, check_group, check_tensor, check_x, dot_t, dot_w, k_tile_range,
                             make_out, store_split, unpack)
from kernels._sparse import accumulate_tile, code_value, rows_total
from kernels.bitmask import _cfg, tuned
from kernels.nm import (GEMV_CONFIGS, INDEX_BITS, INTERPRET_CONFIGS, TILED_CONFIGS, check_nm, kept_columns, place24,
                        kept_gemv, scatter_dense)
from kernels.nm_int4 import nm24_asm, nm24_constraints, nm24_ptx

FORMAT = "nm-int8"


@triton.jit
def kept_dequant(q, s_ptr, z_ptr, rows, n_mask, t, KC, stride_g, GROUP_KC: tl.constexpr, BLOCK_KC: tl.constexpr):
    """(code − zero) · scale in fp32 for a (BLOCK_N, BLOCK_KC) tile of codes in kept order, tile t;
    GROUP_KC = kept codes per quantization group (0: one group per row)."""
    BLOCK_N: tl.constexpr = q.shape[0]
    q = q.to(tl.int32)
    if GROUP_KC == 0 or GROUP_KC % BLOCK_KC == 0:  # the tile lies in one group
        offs = rows * stride_g + (t * BLOCK_KC // GROUP_KC if GROUP_KC > 0 else 0)
        scale = tl.load(s_ptr + offs, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
        zero = tl.load(z_ptr + offs, mask=n_mask, other=0).to(tl.int32)
        w = code_value(q, zero[:, None]) * scale[:, None]
    elif BLOCK_KC % GROUP_KC == 0:  # whole groups: one load per (row, group), broadcast in-thread
        GROUPS: tl.constexpr = BLOCK_KC // GROUP_KC
        offs_g = t * GROUPS + tl.arange(0, GROUPS)
        offs = rows[:, None] * stride_g + offs_g[None, :]
        mask = n_mask[:, None] & (offs_g[None, :] * GROUP_KC < KC)
        scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N, GROUPS)
        zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.int32)
        w = code_value(tl.reshape(q, (BLOCK_N, GROUPS, GROUP_KC)), zero[:, :, None]) * scale[:, :, None]
        w = tl.reshape(w, (BLOCK_N, BLOCK_KC))
    else:  # groups straddle tiles: per code
        offs_c = t * BLOCK_KC + tl.arange(0, BLOCK_KC)
        offs = rows[:, None] * stride_g + offs_c[None, :] // GROUP_KC
        mask = n_mask[:, None] & (offs_c[None, :] < KC)
        scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.int32)
        w = code_value(q, zero) * scale
    return w


# nm-int4's NM24_PTX on 8-bit codes (pack=4): the code bytes [q0, q1, q0, q1] of groups (e0, e1)
# and (e2, e3) come in as loaded ($8, $9), so no nibbles to split; the quad's index halfword at
# $10, zc at $12, 1024 + z at $16, the tables from $20.
NM24_CODES8_PTX = tl.constexpr(nm24_ptx(10, 12, 16, 20, ("$8", "$9")))
NM24_CODES8_CONSTRAINTS = tl.constexpr(nm24_constraints(2))


@triton.jit
def nm24_code8_columns(codes, index_bytes, zero, opaque, USE_ASM: tl.constexpr):
    """2:4 int8 tile → its four dense columns (kernels/nm_int4.py's nm24_asm); codes (R, G)
    uint16: a group's two codes, slot 0 in the low byte."""
    if USE_ASM:
        cols = nm24_asm(codes, index_bytes, zero, opaque, NM24_CODES8_PTX, NM24_CODES8_CONSTRAINTS)
    else:
        q = codes.to(tl.int32)
        cols = place24(((q & 0xFF) - zero).to(tl.float32).to(tl.float16),
                       ((q >> 8) - zero).to(tl.float32).to(tl.float16), index_bytes)
    return cols


@triton.jit
def tc_tile(acc, x_ptr, v_rows, index_bytes, s_ptr, z_ptr, rows, n_mask, offs_m, t, B, K, KC, stride_xb, stride_g,
            GROUP_KC: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_K: tl.constexpr):
    """One 2:4 tile (inside one quantization group) on the tensor cores: acc (BLOCK_M, BLOCK_N) +
    x · Ŵᵀ. Each group's two code bytes load as one halfword (8 groups per 128-bit load, bytes past
    Kc read 0), its four dense columns come from nm24_code8_columns, one dot per column against
    x[:, c::4], the scale once per tile on the sums."""
    BLOCK_M: tl.constexpr = acc.shape[0]
    BLOCK_G: tl.constexpr = BLOCK_K // 4
    offs_g = t * BLOCK_G + tl.arange(0, BLOCK_G)
    codes = tl.load(v_rows.to(tl.pointer_type(tl.uint16)) + offs_g[None, :],
                    mask=n_mask[:, None] & (offs_g[None, :] < KC // 2), other=0)  # (BLOCK_N, BLOCK_G)
    offs = rows * stride_g + (t * (BLOCK_G * 2) // GROUP_KC if GROUP_KC > 0 else 0)
    scale = tl.load(s_ptr + offs, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    zero = tl.load(z_ptr + offs, mask=n_mask, other=0).to(tl.int32)
    cols = nm24_code8_columns(codes, index_bytes, zero[:, None], B >> 31, USE_ASM)  # 4 × (BLOCK_N, BLOCK_G)
    offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xb + offs_k[None, :],
                mask=(offs_m[:, None] < B) & (offs_k[None, :] < K), other=0.0)  # (BLOCK_M, BLOCK_K)
    x02, x13 = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_G, 2, 2)))  # column 2a + b of a group
    x0, x2 = tl.split(x02)
    x1, x3 = tl.split(x13)
    if BLOCK_M == 16:  # yᵀ: the columns are the dots' A operand, which wgmma takes from registers
        part = tl.zeros((cols[0].shape[0], BLOCK_M), dtype=tl.float32)
        part = dot_w(cols[0], x0, part, DOT_F32)
        part = dot_w(cols[1], x1, part, DOT_F32)
        part = dot_w(cols[2], x2, part, DOT_F32)
        part = dot_w(cols[3], x3, part, DOT_F32)
        acc += tl.trans(part * scale[:, None])
    else:
        part = tl.zeros(acc.shape, dtype=tl.float32)
        part = dot_t(x0, cols[0], part, DOT_F32)
        part = dot_t(x1, cols[1], part, DOT_F32)
        part = dot_t(x2, cols[2], part, DOT_F32)
        part = dot_t(x3, cols[3], part, DOT_F32)
        acc += part * scale[None, :]
    return acc


@triton.jit
def _nm_int8_matmul_kernel(
    x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K, KC, IB,  # IB: index bytes per row
    stride_xb, stride_v, stride_i, stride_g, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    batch_bucket,  # autotune key only
    N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    TC: tl.constexpr,  # 2:4, fp16 x, a tile inside one group: dense columns by byte permutes at every batch
    USE_ASM: tl.constexpr,  # False under the interpreter
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    BLOCK_G: tl.constexpr = BLOCK_K // M  # m-groups per tile
    BLOCK_KC: tl.constexpr = BLOCK_G * N_KEEP  # kept codes per tile row
    BLOCK_IB: tl.constexpr = BLOCK_KC * INDEX_BITS // 8  # index bytes per tile row
    GROUP_KC: tl.constexpr = GROUP // M * N_KEEP  # kept codes per quantization group
    # 128-row tiles keep the scatter: 22.4 instructions per byte there, 25 by the permutes (255 registers)
    PERMUTES: tl.constexpr = TC and BLOCK_M <= 64
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    v_rows = v_ptr + rows[:, None] * stride_v  # (BLOCK_N, 1)
    i_rows = i_ptr + rows[:, None] * stride_i
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)  # B = 1: per row and group
    first, last = k_tile_range(K, BLOCK_K)
    for t in range(first, last):
        offs_ib = t * BLOCK_IB + tl.arange(0, BLOCK_IB)
        index_bytes = tl.load(i_rows + offs_ib[None, :], mask=n_mask[:, None] & (offs_ib[None, :] < IB),
                              other=0)  # (BLOCK_N, BLOCK_IB)
        if PERMUTES:
            acc = tc_tile(acc, x_ptr, v_rows, index_bytes, s_ptr, z_ptr, rows, n_mask, offs_m, t, B, K, KC,
                          stride_xb, stride_g, GROUP_KC, USE_ASM, DOT_F32, BLOCK_K)
        else:
            offs_c = t * BLOCK_KC + tl.arange(0, BLOCK_KC)
            q = tl.load(v_rows + offs_c[None, :], mask=n_mask[:, None] & (offs_c[None, :] < KC), other=0)
            pos = unpack(index_bytes, INDEX_BITS)  # (BLOCK_N, BLOCK_KC) in 0 … M−1
            vals = kept_dequant(q, s_ptr, z_ptr, rows, n_mask, t, KC, stride_g, GROUP_KC, BLOCK_KC)  # fp32
            if GEMV_ROWS > 0:
                acc, acc2 = kept_gemv(acc, acc2, vals, pos, x_ptr, stride_xb, offs_m, t, K, N_KEEP, M, GEMV_ROWS,
                                      BLOCK_K, BLOCK_G)
            else:
                w = scatter_dense(vals, pos, N_KEEP, M)  # (BLOCK_N, BLOCK_K) fp32, 0 where pruned
                offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
                acc, acc2 = accumulate_tile(acc, acc2, w, x_ptr, offs_m, offs_k, B, K, stride_xb, 0, DOT_F32)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


KEY = ["N", "K", "batch_bucket", "N_KEEP", "M", "GROUP", "TC"]
_GEMV, _TILED = tuned(_nm_int8_matmul_kernel, GEMV_CONFIGS, TILED_CONFIGS, INTERPRET_CONFIGS, KEY)
# The tensor-core path for groups of 64 (the pipeline's default): 64-column tiles, one group each;
# 256 rows per 4 warps share a tile's x and its dots' synchronization over twice the rows.
TC64_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=256, BLOCK_K=64),
    _cfg(8, 1, BLOCK_M=16, BLOCK_N=512, BLOCK_K=64),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
]
_TC64 = tuned(_nm_int8_matmul_kernel, TC64_CONFIGS, TC64_CONFIGS, INTERPRET_CONFIGS, KEY)[1]


def matmul(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
           *, group_size: int, n: int = 2, m: int = 4, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `nm-int8`. group_size: g (a multiple of m), or -1 for one group
    per row. `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k = check_x(FORMAT, x)
    kc = check_nm(FORMAT, n, m, k)
    g, groups = check_group(FORMAT, group_size, k)
    if groups > 1 and g % m:
        raise ValueError(f"{FORMAT}: group_size={g} must be a multiple of m={m} (a quantization group must "
                         "hold whole N:M groups) or -1")
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        raise ValueError(f"{FORMAT}: values must be a 2-D uint8 (N, K·n/m) tensor")
    rows = values.shape[0]
    index_bytes = -(-kc * INDEX_BITS[m] // 8)
    check_tensor(FORMAT, "values", values, torch.uint8, (rows, kc), x, "(N, K·n/m)")
    check_tensor(FORMAT, "indices", indices, torch.uint8, (rows, index_bytes), x,
                 f"(N, ceil(Kc·{INDEX_BITS[m]}/8))")
    check_tensor(FORMAT, "scales", scales, torch.float16, (rows, groups), x, "(N, ceil(K/g))")
    check_tensor(FORMAT, "zeros", zeros, torch.uint8, (rows, groups), x, "(N, ceil(K/g))")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    # every tile inside one group (TILED_CONFIGS' BLOCK_K divides 128, TC64_CONFIGS' is 64); fp16
    # holds 1024 + a code exactly
    tc = (n, m) == (2, 4) and x.dtype == torch.float16 and (groups == 1 or g % 64 == 0)
    if tc:  # halfword code loads
        values = aligned(values, 2)
    tiled = _TC64 if tc and groups > 1 and g % 128 else _TILED
    _sparse.launch(_GEMV, tiled, x, rows,
                   (x, values, indices, scales, zeros, out, batch, rows, k, kc, index_bytes,
                    x.stride(0), values.stride(0), indices.stride(0), scales.stride(0), out.stride(0)),
                   gemv_max=0 if tc else _sparse.GEMV_MAX_BATCH,
                   N_KEEP=n, M=m, INDEX_BITS=INDEX_BITS[m], GROUP=0 if groups == 1 else g, TC=tc, USE_ASM=not INTERPRET)
    return out


def dequantize(values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
               group_size: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops."""
    rows, kc = values.shape
    k = kc // n * m
    cols = kept_columns(indices, n, m, kc)  # (N, Kc)
    group = cols // (k if group_size == -1 else group_size)
    kept = (values.float() - zeros.float().gather(1, group)) * scales.float().gather(1, group)
    return torch.zeros(rows, k, dtype=torch.float32, device=values.device).scatter_(1, cols, kept)


def reference(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor,
              zeros: torch.Tensor, *, group_size: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Torch: dequantize, scatter to dense, fp32 matmul, cast to x's dtype."""
    w = dequantize(values, indices, scales, zeros, group_size=group_size, n=n, m=m)
    return (x.float() @ w.T).to(x.dtype)


def static_spec(group: int, configs):
    """2:4 with fp16 x on the tensor-core path, groups of `group`."""
    return _sparse.static_spec(
        f"nm-int8 2:4 g{group}", _nm_int8_matmul_kernel, dict(x="fp16", v="u8", i="u8", s="fp16", z="u8", y="fp16"),
        ("v", "i"), dict(N_KEEP=2, M=4, INDEX_BITS=2, GROUP=group, TC=True, USE_ASM=True), (), configs,
        0.5 * (1 + 2 / 8))


STATIC = (static_spec(128, TILED_CONFIGS), static_spec(64, TC64_CONFIGS))
