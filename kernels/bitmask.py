"""`bitmask` sparse weights at any sparsity (docs/formats.md, version 2): y = x @ Ŵᵀ.

Format, W (N, K), rows cut into chunks of CHUNK = 512 columns, J = ceil(K/512):
    mask           uint8 (N, ceil(K/8))      bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values         float16/bfloat16 (L,)     chunk by chunk (row-major), each chunk's kept values
                                             from a 16-byte boundary, zero padding to the next one
    chunk_offsets  int32 (N, J)              chunk (n, j) starts at values[8 · chunk_offsets[n, j]]
Math:
    slot(n, k) = 8 · chunk_offsets[n, k // 512] + popcount(mask[n, 512·(k // 512) : k])
    Ŵ[n, k]    = values[slot(n, k)] if mask bit (n, k) else 0
    y[b, n]    = Σ_k x[b, k] · Ŵ[n, k]         fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16 (values' dtype), y (B, N).

Design (_bitmask_vec_kernel), tensor cores at every batch, mask byte by mask byte (8 columns):
- up to 16 batch rows with K a multiple of 128 (REG_MMA, "batch 1-16 in registers" below): each
  thread turns its own mask bytes into mma.sync A-fragment registers, one warp-wide asm per 16
  rows × 64 columns, so no column goes through shared memory;
- otherwise per (BLOCK_N, BLOCK_K = 128) tile (BLOCK_M = 16 up to 16 rows, 64-128 above), a
  popcount per byte and a cumsum across the row's bytes give the index of each byte's first
  value, and one dot per column pair (below) runs the tile.
Per mask byte, both ways:
- its (at most 8) values lie in the two 16-byte vectors from index // 8 on, which load as
  two 128-bit loads, unmasked: the addresses are clamped to the stream's last vector, and a
  vector the byte's values do not reach feeds no column (version 2 keeps every chunk's values
  16-byte aligned and the stream whole 16-byte vectors);
- VALUES_PTX (inline PTX; the interpreter picks the same values with integer ops, USE_ASM =
  False) turns the 16 values into the byte's 8 dense columns: low and high bytes apart, a select
  and a funnel shift line up the byte's values, two PRMTs per half whose selectors come from a
  256-entry table indexed by the byte (value_selectors) place each value in its column, +0.0 in
  the pruned ones, and one PRMT per column pair joins a column's two bytes; on the tiles, one
  tensor-core dot per column pair (c, c + 1) against x's columns c, c + 1, c + 8, c + 9, …, the
  weight tile as the A operand (yᵀ = Ŵ · xᵀ: Hopper's warpgroup MMA takes the A operand from
  registers; as the B operand the tile cost 0.2-0.7 instructions per byte more). The vectors and the table
  entry load through inline PTX (load16, load_word): tl.load's (…, 4) vectors took a layout of
  their own, converted back through shared memory, and its signed indices cost two instructions
  per 64-bit address where an unsigned one costs one.
- split over K (kernels/_common.py), both ways: a program starts at its chunk's offset; only a split that
  starts inside a chunk (BLOCK_K < 512) counts the kept weights of the chunk's tiles before it
  (at most 3 tiles, outside the main loop). In the loop a row's index moves on by the tile's
  kept count, rounded up to 16 bytes where a tile starts a chunk (no offset load).
The column-by-column helpers (a rank by shift + popcount per column, a predicated gather in
inline PTX) serve the quantized kernels' general path (kernels/bitmask_int4.py).
chunk_offsets and values are trusted (checking them would cost a device sync per call).

Measured (sm_90, Triton 3.9, `python -m kernels.static_report --kernel bitmask`), 50% sparsity,
batch 1-16, main-loop SASS instructions and bytes through L1 / shared memory per packed byte:
REG_MMA 5.12 and 4.9 at batch 1-8, 5.33 and 5.3 at batch 9-16 (5.45-5.67 instructions clamping
each address, where the stream's storage ends with it), every packed load 128-bit, ≥ 344 CTAs at
batch 1. Per mask byte (9 packed bytes) ≈ 46 instructions: ≈ 33 in VALUES_PTX's steps (16
PRMTs, 6 selects, 4 funnel shifts), 1 mma per 8 batch rows, ≈ 12 for its first value (POPCs),
its kept count, two vector loads at one address and the table entry. The tiles, which served
batch 1-16 before, spent 5.72-5.85 and 8.6-9.0 (≈ 53 instructions per mask byte, ≈ 4 of them
and 32 L1 bytes to stage the operands through shared memory for the dots); before them 8.7-8.9
with tl.load's vectors and indices and a dot per column, 10.8-11.2 at batch 1 and 14.4-15.5
column by column, with 16-bit gathers. docs/formats.md, "Kernel limits".
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from kernels import _common, _sparse
from kernels._common import (aligned, check_tensor, check_x, cols4, dot_w, k_tile_range, make_out, mma_fragments,
                             split_cols4, split_for, store_split, store_split_at, workspace)
from kernels._sparse import accumulate_tile, batch_bucket
from kernels.ptx_model import MMA, MMA_BF16

FORMAT = "bitmask"
# Version 2 cuts rows into chunks of this many columns (tasks/formats/packing.py BITMASK_CHUNK);
# every BLOCK_K divides it, so a K tile lies in one chunk.
CHUNK_COLUMNS = 512
CHUNK = tl.constexpr(CHUNK_COLUMNS)
# What the gather reads: 8-bit or 4-bit codes.
CODES8, CODES4 = tl.constexpr(8), tl.constexpr(4)


@triton.jit
def popcount8(b):
    """Set bits of each byte value (int32 in 0 … 255), SWAR."""
    b = b - ((b >> 1) & 0x55)
    b = (b & 0x33) + ((b >> 2) & 0x33)
    return (b + (b >> 4)) & 0x0F


@triton.jit
def popcount32(w):
    """Set bits of each uint32, SWAR (LLVM turns the idiom into one POPC)."""
    w = w - ((w >> 1) & 0x55555555)
    w = (w & 0x33333333) + ((w >> 2) & 0x33333333)
    w = (w + (w >> 4)) & 0x0F0F0F0F
    return (w * 0x01010101) >> 24


@triton.jit
def mask_tile(mask_rows, n_mask, t, MB, BLOCK_K: tl.constexpr):
    """Mask bytes (BLOCK_N, BLOCK_K/8) of K tile t; MB = mask bytes per row (a multiple of 16 on
    LLM shapes, so each thread's bytes load as one vector)."""
    offs_b = t * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    return tl.load(mask_rows + offs_b[None, :], mask=n_mask[:, None] & (offs_b[None, :] < MB), other=0)


@triton.jit
def chunk_offset(co_ptr, offs_n, n_mask, t, NC, UNITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N,) int32: stream index of each row's first kept entry in the chunk of K tile t
    (chunk_offsets are 16-byte units, UNITS entries each). CHUNK.value: the interpreter's ints
    take no constexpr operand."""
    return tl.load(co_ptr + offs_n * NC + t * BLOCK_K // CHUNK.value, mask=n_mask, other=0) * UNITS


@triton.jit
def values_before(co_ptr, mask_rows, offs_n, n_mask, first, NC, MB, UNITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_N,) int32: stream index of each row's first kept entry at or after K tile `first`:
    its chunk's offset plus the kept weights of the chunk's tiles before `first` (a split starts
    inside a chunk only when BLOCK_K < CHUNK, and then counts at most CHUNK/BLOCK_K − 1 tiles)."""
    start = chunk_offset(co_ptr, offs_n, n_mask, first, NC, UNITS, BLOCK_K)
    for t in range(first - first * BLOCK_K % CHUNK.value // BLOCK_K, first):
        start += tl.sum(popcount8(mask_tile(mask_rows, n_mask, t, MB, BLOCK_K).to(tl.int32)), axis=1)
    return start


@triton.jit
def next_start(start, count, t, UNITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Stream index of each row's first kept entry at or after K tile t, given tile t − 1's
    `start` and kept `count`: where t starts a chunk, rounded up to the next 16-byte boundary
    (UNITS entries), where a row's next chunk starts. No offset load in the main loop."""
    pad = tl.where(t * BLOCK_K % CHUNK.value == 0, UNITS - 1, 0)
    return (start + count + pad) & ~pad


@triton.jit
def mask_words(mask_rows, n_mask, t, K, MB, BLOCK_K: tl.constexpr):
    """(BLOCK_N, BLOCK_K/32) uint32 words of K tile t, bit j of word w = column t·BLOCK_K + 32w + j;
    bits at or past K cleared (the last byte's padding bits are unspecified)."""
    BLOCK_N: tl.constexpr = mask_rows.shape[0]
    W: tl.constexpr = BLOCK_K // 32
    b = mask_tile(mask_rows, n_mask, t, MB, BLOCK_K).to(tl.uint32)  # (BLOCK_N, BLOCK_K/8)
    even, odd = tl.split(tl.reshape(b, (BLOCK_N, W, 2, 2)))  # bytes 0 2 / 1 3 of each word
    b0, b2 = tl.split(even)
    b1, b3 = tl.split(odd)
    words = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    valid = K - (t * BLOCK_K + tl.arange(0, W) * 32)  # (W,) columns of each word inside K
    keep = tl.where(valid >= 32, 0xFFFFFFFF, (1 << tl.maximum(valid, 0).to(tl.uint32)) - 1)
    return words & keep[None, :].to(tl.uint32)


@triton.jit
def _gather_asm(v_ptr, first, words, shift, fill, KIND: tl.constexpr):
    """Inline-PTX gather, one column per call (see gather_kept): first = stream index of the word's
    first kept entry − 1 (int32), v_ptr the stream's base."""
    if KIND == CODES8:
        out = tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b32 s, c; .reg .b64 a;"
            " shl.b32 s, $2, $3; setp.lt.s32 p, s, 0; popc.b32 c, s; add.s32 c, c, $1; mad.wide.s32 a, c, 1, $5;"
            " mov.b32 $0, $4; @p ld.global.nc.u8 $0, [a]; }",
            "=r,r,r,r,r,l", [first, words, shift, fill, v_ptr], dtype=tl.int32, is_pure=True, pack=1)
    else:  # CODES4: code i is nibble i & 1 of byte i >> 1
        out = tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b32 s, c, n, b; .reg .b64 a;"
            " shl.b32 s, $2, $3; setp.lt.s32 p, s, 0; popc.b32 c, s; add.s32 c, c, $1;"
            " shr.s32 n, c, 1; mad.wide.s32 a, n, 1, $5; and.b32 n, c, 1; shl.b32 n, n, 2;"
            " mov.b32 $0, $4; @p ld.global.nc.u8 b, [a]; @p shr.u32 b, b, n; @p and.b32 $0, b, 15; }",
            "=r,r,r,r,r,l", [first, words, shift, fill, v_ptr], dtype=tl.int32, is_pure=True, pack=1)
    return out


@triton.jit
def gather_kept(v_ptr, base, words, fill, KIND: tl.constexpr, USE_ASM: tl.constexpr):
    """The kept entries of a tile, (BLOCK_N, W, 32): column j of word w of row n reads the value
    stream at base[n, w] + (kept bits of the word up to j) − 1 if bit j is kept; else `fill`
    (the zero code: it dequantizes to exactly 0). base (BLOCK_N, W) int32 is the stream index of
    the word's first kept entry; fill (BLOCK_N, W) int32. Returns int32 codes."""
    shift = 31 - tl.arange(0, 32)[None, None, :]  # bits ≤ j to the top: sign = bit j, count = rank
    w3 = words[:, :, None]
    if USE_ASM:
        out = _gather_asm(v_ptr, (base - 1)[:, :, None], w3, shift, fill[:, :, None], KIND)
    else:
        top = w3 << shift.to(tl.uint32)
        kept = (top >> 31) != 0
        index = base[:, :, None] + popcount32(top).to(tl.int32) - 1
        if KIND == CODES8:
            out = tl.where(kept, tl.load(v_ptr + index, mask=kept, other=0).to(tl.int32), fill[:, :, None])
        else:
            byte = tl.load(v_ptr + (index >> 1), mask=kept, other=0).to(tl.int32)
            out = tl.where(kept, (byte >> ((index & 1) * 4)) & 0xF, fill[:, :, None])
    return out


@triton.jit
def tile_bases(words, start):
    """Stream index (BLOCK_N, W) int32 of each word's first kept entry, and the tile's kept count
    per row (BLOCK_N,); start (BLOCK_N,) is the row's index at the tile's first column."""
    count = popcount32(words).to(tl.int32)  # (BLOCK_N, W)
    return start[:, None] + tl.cumsum(count, axis=1) - count, tl.sum(count, axis=1)


@triton.jit
def accumulate_words(acc, acc2, w, x_ptr, offs_m, t, B, K, stride_xb, GEMV_ROWS: tl.constexpr,
                     DOT_F32: tl.constexpr):
    """accumulate_tile for a (BLOCK_N, W, 32) tile of K tile t (x viewed as (W, 32))."""
    BLOCK_N: tl.constexpr = w.shape[0]
    W: tl.constexpr = w.shape[1]
    if GEMV_ROWS == 1:
        offs_x = t * W * 32 + tl.arange(0, W)[:, None] * 32 + tl.arange(0, 32)[None, :]  # (W, 32)
        xb = tl.load(x_ptr + offs_x, mask=offs_x < K, other=0.0)
        acc2 += w * xb.to(tl.float32)[None, :, :]
    else:
        offs_k = t * W * 32 + tl.arange(0, W * 32)
        acc, acc2 = accumulate_tile(acc, acc2, tl.reshape(w, (BLOCK_N, W * 32)), x_ptr, offs_m, offs_k, B, K,
                                    stride_xb, GEMV_ROWS, DOT_F32)
    return acc, acc2


# 16 fp16/bf16 values (the two 16-byte vectors from the one holding a mask byte's first value)
# → the byte's 8 dense columns, pack=1: $8 … $15 the 8 words, $16 the index of the byte's first
# value (its low 3 bits place it among them), $17 sel: value_selectors()[byte], $18 cnt: its kept
# count; $0 … $7 the columns, 16 bits each. Low and high bytes of the 16 values go apart (l0-l3,
# h0-h3: 16 bytes each); a select of three words and two funnel shifts per half (shf.r.wrap shifts
# by the index · 8 mod 32) line up the byte's 8 values (la lb, ha hb: value r in byte r); when fewer
# than 8 are kept, byte 7 (value 7, unused then) becomes 0. Two PRMTs per half pick each column's
# byte (its rank, or byte 7 for a pruned column), one PRMT per column pair joins low and high
# bytes: columns 2q and 2q + 1 in one register, the halves $2q and $2q + 1, which vec_tile joins
# back into the pair its dot reads (pruned columns +0.0).
@triton.constexpr_function
def values_ptx(words, idx, sel, cnt, pairs):
    """VALUES_PTX's steps in a block of their own: words = the 8 words of the byte's two 16-byte
    vectors, idx / sel / cnt its first value's index, table entry and kept count; the columns go
    to the four f16x2 / bf16x2 registers `pairs` (columns 0-1, 2-3, 4-5, 6-7)."""
    return ("{ .reg .pred p; .reg .b32 l0, l1, l2, l3, h0, h1, h2, h3, r, a, b, c, s2, la, lb, ha, hb, dl0, dl1, dh0,"
            " dh1;"
            + "".join(f" prmt.b32 l{j}, {words[2 * j]}, {words[2 * j + 1]}, 0x6420;"
                      f" prmt.b32 h{j}, {words[2 * j]}, {words[2 * j + 1]}, 0x7531;" for j in range(4))
            + f" and.b32 r, {idx}, 4; setp.eq.u32 p, r, 0; shl.b32 r, {idx}, 3;"
              " selp.b32 a, l0, l1, p; selp.b32 b, l1, l2, p; selp.b32 c, l2, l3, p;"
              " shf.r.wrap.b32 la, a, b, r; shf.r.wrap.b32 lb, b, c, r;"
              " selp.b32 a, h0, h1, p; selp.b32 b, h1, h2, p; selp.b32 c, h2, h3, p;"
              " shf.r.wrap.b32 ha, a, b, r; shf.r.wrap.b32 hb, b, c, r;"
              f" setp.lt.u32 p, {cnt}, 8; @p and.b32 lb, lb, 0x00FFFFFF; @p and.b32 hb, hb, 0x00FFFFFF;"
              f" shr.b32 s2, {sel}, 16;"
              f" prmt.b32 dl0, la, lb, {sel}; prmt.b32 dl1, la, lb, s2; prmt.b32 dh0, ha, hb, {sel};"
              " prmt.b32 dh1, ha, hb, s2;"
            + "".join(f" prmt.b32 {pairs[q]}, dl{q // 2}, dh{q // 2}, {s};"
                      for q, s in enumerate(("0x5140", "0x7362") * 2))
            + " }")


VALUES_PTX = tl.constexpr(
    "{ .reg .b32 q0, q1, q2, q3;" + values_ptx([f"${8 + i}" for i in range(8)], "$16", "$17", "$18",
                                               ["q0", "q1", "q2", "q3"])
    + "".join(f" mov.b32 {{${2 * q}, ${2 * q + 1}}}, q{q};" for q in range(4)) + " }")


def value_selectors() -> list[int]:
    """PRMT selectors per mask byte m for VALUES_PTX: column c (bit c) reads byte
    popcount(m & (2^c − 1)) (its rank), a pruned column byte 7. Columns 0-3 in bits 15:0, 4-7 in 31:16."""
    table = []
    for m in range(256):
        sel = 0
        for c in range(8):
            byte = bin(m & ((1 << c) - 1)).count("1") if m >> c & 1 else 7
            sel |= byte << (4 * (c % 4) + 16 * (c // 4))
        table.append(sel)
    return table


_tables: dict = {}


def table(builder, device) -> torch.Tensor:
    """builder() (a list of uint32) as int32 on `device`, built once."""
    if (builder, device) not in _tables:
        _tables[builder, device] = torch.tensor(builder(), dtype=torch.int64).to(torch.int32).to(device)
    return _tables[builder, device]


@triton.jit
def popcount(b, USE_ASM: tl.constexpr):
    """Set bits of each int32 (one POPC; the interpreter counts with SWAR on bytes)."""
    if USE_ASM:
        n = tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [b], dtype=tl.int32, is_pure=True, pack=1)
    else:
        n = popcount8(b)
    return n


@triton.jit
def split4(x):
    """x (R, C, 4) → its 4 columns (R, C), in-thread splits."""
    e, o = tl.split(tl.reshape(x, (x.shape[0], x.shape[1], 2, 2)))  # columns 0 2 / 1 3
    x0, x2 = tl.split(e)
    x1, x3 = tl.split(o)
    return x0, x1, x2, x3


@triton.jit
def load16(base, vec, USE_ASM: tl.constexpr):
    """The 16-byte vectors vec (R, C) of base (int32 words) → 4 × (R, C) int32, one 128-bit load
    each. tl.load of a (R, C, 4) block picks its own layout and converts back through shared
    memory; the inline PTX load keeps each thread's vectors in its registers."""
    if USE_ASM:
        words = tl.inline_asm_elementwise(
            "{ .reg .b64 a; mul.wide.u32 a, $4, 16; add.s64 a, $5, a; ld.global.nc.v4.b32 {$0, $1, $2, $3}, [a]; }",
            "=r,=r,=r,=r,r,l", [vec, base], dtype=(tl.int32,) * 4, is_pure=True, pack=1)
    else:
        words = split4(tl.load(base + (vec * 4)[:, :, None] + tl.arange(0, 4)[None, None, :]))
    return words


@triton.jit
def load32(base, vec, n, SLACK: tl.constexpr, USE_ASM: tl.constexpr):
    """The 16-byte vectors vec and vec + 1 (R, C) of base, each clamped to the n vectors unless SLACK
    → (4 words, 4 words): with SLACK one 64-bit address for both 128-bit loads."""
    if SLACK and USE_ASM:
        words = tl.inline_asm_elementwise(
            "{ .reg .b64 a; mul.wide.u32 a, $8, 16; add.s64 a, $9, a; ld.global.nc.v4.b32 {$0, $1, $2, $3}, [a];"
            " ld.global.nc.v4.b32 {$4, $5, $6, $7}, [a+16]; }",
            "=r,=r,=r,=r,=r,=r,=r,=r,r,l", [vec, base], dtype=(tl.int32,) * 8, is_pure=True, pack=1)
        pair = ((words[0], words[1], words[2], words[3]), (words[4], words[5], words[6], words[7]))
    else:
        pair = (load16(base, in_stream(vec, n, SLACK), USE_ASM), load16(base, in_stream(vec + 1, n, SLACK), USE_ASM))
    return pair


@triton.jit
def load_word(base, i, USE_ASM: tl.constexpr):
    """base[i] (int32 words, i ≥ 0): one load whose 64-bit address takes one IMAD.WIDE (tl.load's
    signed index takes two LEAs)."""
    if USE_ASM:
        word = tl.inline_asm_elementwise(
            "{ .reg .b64 a; mul.wide.u32 a, $1, 4; add.s64 a, $2, a; ld.global.nc.b32 $0, [a]; }",
            "=r,r,l", [i, base], dtype=tl.int32, is_pure=True, pack=1)
    else:
        word = tl.load(base + i)
    return word


@triton.jit
def in_stream(i, n, SLACK: tl.constexpr):
    """Word or vector index i, clamped to the stream's last (n of them) unless SLACK."""
    return i if SLACK else tl.minimum(i, n - 1)


@triton.jit
def load_pair(base, i, n, SLACK: tl.constexpr, USE_ASM: tl.constexpr):
    """base[i], base[i + 1] (int32 words, i ≥ 0, each clamped to the n words unless SLACK): with
    SLACK one 64-bit address for both loads."""
    if SLACK and USE_ASM:
        lo, hi = tl.inline_asm_elementwise(
            "{ .reg .b64 a; mul.wide.u32 a, $2, 4; add.s64 a, $3, a; ld.global.nc.b32 $0, [a];"
            " ld.global.nc.b32 $1, [a+4]; }",
            "=r,=r,r,l", [i, base], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
    else:
        lo = load_word(base, in_stream(i, n, SLACK), USE_ASM)
        hi = load_word(base, in_stream(i + 1, n, SLACK), USE_ASM)
    return lo, hi


@triton.jit
def word_at(lo, hi, w):
    """Word w (0 … 7, per element) of lo[0..3] then hi[0..3]: the interpreter's side of the PTX's selects."""
    word = tl.zeros_like(w)
    for j in tl.static_range(4):
        word = tl.where(w == j, lo[j], word)
        word = tl.where(w == 4 + j, hi[j], word)
    return word


@triton.jit
def value_columns(lo, hi, idx, sel, cnt, v_dtype: tl.constexpr, USE_ASM: tl.constexpr):
    """The 8 dense columns of each mask byte, 8 × (R, NB) in v_dtype (0 where pruned); see
    VALUES_PTX. lo, hi: 4 × (R, NB) int32 each, the 16 values from the byte's 16-byte vector on;
    idx: the index of its first value."""
    if USE_ASM:
        cols = tl.inline_asm_elementwise(
            VALUES_PTX, "=h,=h,=h,=h,=h,=h,=h,=h" + ",r" * 11,
            [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3], idx, sel, cnt],
            dtype=(tl.bfloat16 if v_dtype == tl.bfloat16 else tl.float16,) * 8, is_pure=True, pack=1)
    else:  # the same choice of values, on integers: value idx mod 8 + rank of the 16
        cols = ()
        for c in tl.static_range(8):
            nib = (sel >> (4 * (c % 4) + 16 * (c // 4))) & 7
            h = (idx & 7) + nib
            word = word_at(lo, hi, h >> 1)
            half = ((word >> ((h & 1) * 16)) & 0xFFFF).to(tl.int16).to(v_dtype, bitcast=True)
            kept = ((sel >> (4 * (c % 4) + 16 * (c // 4))) & 7) != 7
            cols = cols + (tl.where(kept | (cnt == 8), half, 0.0).to(v_dtype),)
    return cols


@triton.jit
def dot_pairs(cols, acc, x_ptr, offs_m, t, B, K, stride_xb, TAIL: tl.constexpr, DOT_F32: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """acc (BLOCK_N, BLOCK_M) + Ŵ · xᵀ for K tile t, Ŵ's columns in cols (8 × (BLOCK_N, BLOCK_K/8):
    column c of every mask byte). One dot per column pair: a dot's K order is free, and a pair
    (c, c + 1) is one register of the A operand. x's columns c, c + 1, c + 8, c + 9, … load as
    such (pairs of halves), not as a reshaped (…, 8) tile: Triton 3.6 (the H200's) fails to
    compile a reshaped dot operand there. TAIL: the tile reaches past K."""
    NB: tl.constexpr = BLOCK_K // 8
    k = tl.arange(0, 2 * NB)
    for c in tl.static_range(0, 8, 2):
        offs_x = t * BLOCK_K + (k // 2) * 8 + c + (k % 2)  # (2 NB,)
        x_mask = offs_m[:, None] < B
        if TAIL:
            x_mask = x_mask & (offs_x[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xb + offs_x[None, :], mask=x_mask, other=0.0)
        w = tl.reshape(tl.join(cols[c], cols[c + 1]), (cols[c].shape[0], 2 * NB))
        acc = dot_w(w, x, acc, DOT_F32)
    return acc


@triton.jit
def vec_tile(acc, x_ptr, v32_ptr, lut_ptr, mask_rows, n_mask, offs_m, t, start, B, K, MB, NV, stride_xb,
             TAIL: tl.constexpr, SLACK: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """One K tile of `bitmask` on the tensor cores: per mask byte the two aligned 16-byte vectors
    from its first value on, its 8 dense columns, one dot per column pair. Returns acc + Ŵ · xᵀ
    (BLOCK_N, BLOCK_M) and the tile's kept count per row. TAIL: the tile reaches past K; SLACK:
    the stream's storage holds STREAM_SLACK more bytes (kernels/_common.py)."""
    NB: tl.constexpr = BLOCK_K // 8
    b = mask_tile(mask_rows, n_mask, t, MB, BLOCK_K).to(tl.int32)  # (BLOCK_N, NB)
    if TAIL:  # the tile across K's end: clear the padding bits past K (unspecified)
        valid = K - (t * BLOCK_K + tl.arange(0, NB) * 8)  # columns of each byte inside K
        b = b & tl.where(valid >= 8, 0xFF, (1 << tl.maximum(valid, 0)) - 1)[None, :]
    cnt = popcount(b, USE_ASM)
    idx = start[:, None] + tl.cumsum(cnt, axis=1) - cnt  # value index of each byte's first value
    # Its 16-byte vector and the next, clamped to the stream's last (NV vectors) unless its storage
    # goes on: one the byte's values reach is inside the stream; another one's values land in no
    # column (byte 7, zeroed).
    lo = load16(v32_ptr, in_stream(idx >> 3, NV, SLACK), USE_ASM)  # 4 × (BLOCK_N, NB)
    hi = load16(v32_ptr, in_stream((idx >> 3) + 1, NV, SLACK), USE_ASM)
    sel = load_word(lut_ptr, b, USE_ASM)
    cols = value_columns(lo, hi, idx, sel, cnt, x_ptr.dtype.element_ty, USE_ASM)
    return dot_pairs(cols, acc, x_ptr, offs_m, t, B, K, stride_xb, TAIL, DOT_F32, BLOCK_K), tl.sum(cnt, axis=1)


# ----------------------------------------------------------------------------- batch 1-16 in registers
# REG_MMA (here for `bitmask`, in kernels/bitmask_int4.py for int4 codes): up to 16 batch rows, K a
# multiple of 128. The mask bytes become mma.sync.m16n8k16 A fragments in the registers of the
# thread that holds them, so no column is staged through shared memory. Warp w takes weight rows
# 32w … 32w + 31 (two m16 tiles), thread (g, q) = (lane >> 2, lane & 3) rows g and g + 8 of each;
# of every 64 columns (a "half" of the 128-column iteration) it takes mask bytes 2q (A) and 2q + 1
# (B), whose entries follow each other in the stream. A dot's K order is free (inside a scale
# group): byte A's columns 0-3 meet x in the k16 step 0 of its k32 block, 4-7 in step 1, byte B's
# the next block, so each thread reads its 16 columns of x as two 128-bit loads. Per (row, half)
# Triton finds byte A's first entry (the row's count, plus the bits of the half's bytes before 2q
# by two POPCs) and loads what the bytes need from there; one warp-wide asm per (m16 tile, half)
# builds the A registers and runs 4 mma per 8 batch rows.
REG_BLOCK_N = 128  # weight rows per CTA: 4 warps × 2 m16 tiles


@triton.constexpr_function
def reg_mma_steps(cols, xs, dests, first_c, bf16):
    """PTX of the mma of one (m16 tile, half), 4 per 8 batch rows: cols[h][byte][p] the A registers
    (row g + 8h, the thread's byte A or B, column pair p), xs[nt][byte] the byte's 4 B-fragment
    registers (x words of steps 0, 1), dests[nt] the D registers, first_c[nt] the chain's first C."""
    lines = []
    for byte in range(2):
        for step in range(2):
            a = [cols[0][byte][2 * step], cols[1][byte][2 * step], cols[0][byte][2 * step + 1],
                 cols[1][byte][2 * step + 1]]
            for nt, d in enumerate(dests):
                b = xs[nt][byte][2 * step:2 * step + 2]
                c = first_c[nt] if byte == step == 0 else d
                lines.append(f" {MMA_BF16 if bf16 else MMA} {{{', '.join(d)}}}, {{{', '.join(a)}}},"
                             f" {{{', '.join(b)}}}, {{{', '.join(c)}}};")
    return "".join(lines)


@triton.jit
def popc32(w):
    """Set bits of each int32 word (one POPC)."""
    return popcount32(w.to(tl.uint32, bitcast=True)).to(tl.int32)


@triton.jit
def reg_threads(x_ptr, B, N, stride_xb, BLOCK_N: tl.constexpr):
    """Per thread: q (T, 1); row, its first weight row (row g of the warp's first m16 tile); the
    rows r{mt}{h} = row + 16mt + 8h (T,), clamped to the last for the loads (their sums are not
    stored); lanes = where thread q's bytes 2q, 2q + 1 of a half lie (in the half's second word from
    q = 2, shifted by 16 for odd q; the bits of its word and of the first word before them); x's
    word rows of batch rows g and 8 + g from the thread's 16 columns of a half on (rows past B read
    row B − 1, not stored either)."""
    t1 = tl.arange(0, BLOCK_N)
    t = t1[:, None]
    g = t % 32 // 4
    q = t % 4
    row1 = tl.program_id(0) * BLOCK_N + t1 // 32 * 32 + t1 % 32 // 4
    rows = (tl.minimum(row1, N - 1), tl.minimum(row1 + 8, N - 1), tl.minimum(row1 + 16, N - 1),
            tl.minimum(row1 + 24, N - 1))
    lanes = (q >= 2, (q % 2) * 16, tl.where(q % 2 == 1, 0xFFFF, 0), tl.where(q >= 2, -1, 0))
    x_words = x_ptr.to(tl.pointer_type(tl.int32))
    x_rows = (x_words + tl.minimum(g, B - 1).to(tl.int64) * (stride_xb // 2) + 8 * q,
              x_words + tl.minimum(g + 8, B - 1).to(tl.int64) * (stride_xb // 2) + 8 * q)
    return q, row1[:, None], rows, lanes, x_rows


@triton.jit
def reg_start(co_ptr, mask_ptr, r, first, NC, MB, stride_mask, UNITS: tl.constexpr):
    """(T, 1) stream index of row r's first entry at or after 128-column tile `first`."""
    return values_before(co_ptr, mask_ptr + r.to(tl.int64)[:, None] * stride_mask, r, r >= 0, first, NC, MB, UNITS,
                         128)[:, None]


@triton.jit
def reg_mask_words(mask_ptr, r, kt, stride_mask):
    """Row r's 4 mask words of 128-column tile kt, (T, 1) each: one 128-bit load."""
    row = mask_ptr.to(tl.pointer_type(tl.int32)) + r.to(tl.int64)[:, None] * (stride_mask // 4)
    return split_cols4(tl.load(row + 4 * kt + tl.arange(0, 4)[None, :]))


@triton.jit
def reg_first(lo, hi, start, lanes):
    """A row's half (mask words lo, hi: bytes 0-7) for thread q: its bytes 2q, 2q + 1 as a halfword,
    the stream index of byte A's first entry, and the row's index after the half."""
    q_hi, q_shift, q_low, q_whole = lanes
    mine = tl.where(q_hi, hi, lo)
    p_lo = popc32(lo)
    first = start + (p_lo & q_whole) + popc32(mine & q_low)
    return (mine >> q_shift) & 0xFFFF, first, start + p_lo + popc32(hi)


@triton.jit
def reg_x(x_row, kt, half):
    """B fragments of one batch row for a half: (T, 4) x words 64kt + 32half + 8q + 0-3 (byte A)
    and 4-7 (byte B), two 128-bit loads (x_row: the thread's row, offset by 8q)."""
    ptrs = x_row + 64 * kt + 32 * half + tl.arange(0, 4)[None, :]
    return tl.load(ptrs), tl.load(ptrs + 4)


@triton.jit
def reg_store(acc00, acc01, acc10, acc11, row, q, y_ptr, ws_ptr, ticket_ptr, B, N, stride_yb,
              N_TILES: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store the accumulators acc{mt}{nt} (T, 4) of the thread's rows (kernels/_common.py's mma_fragments)."""
    acc, b, n = mma_fragments(acc00, acc01, acc10, acc11, row, q, N_TILES, BLOCK_N)
    store_split_at(y_ptr, ws_ptr, ticket_ptr, acc, b, n, B, N, stride_yb)


@triton.constexpr_function
def reg_values_ptx(n_tiles, bf16, part):
    """REG_MMA's asm for `bitmask` (part 0) or its constraints (part 1): one (m16 tile, half), n_tiles
    × 8 batch rows. Operands, 4 registers each: outputs acc[nt]; inputs acc[nt]; per row h (g,
    g + 8) and byte (A, B) the byte's two 16-byte value vectors and (its first value's index, its
    value_selectors entry, its kept count, unused); x[nt] the B fragments of bytes A and B. Each
    byte's columns as VALUES_PTX makes them, then the mma chain from acc."""
    numbers = iter(range(10_000))
    take = lambda: [f"${next(numbers)}" for _ in range(4)]  # noqa: E731
    out = [take() for _ in range(n_tiles)]
    acc = [take() for _ in range(n_tiles)]
    ops = [[(take(), take(), take()) for _ in range(2)] for _ in range(2)]
    xs = [(take(), take()) for _ in range(n_tiles)]
    cols = [[[f"a{h}{byte}{p}" for p in range(4)] for byte in range(2)] for h in range(2)]
    lines = ["{ .reg .b32 " + ", ".join(r for h in cols for b in h for r in b) + ";"]
    for h in range(2):
        for byte in range(2):
            lo, hi, info = ops[h][byte]
            lines.append(values_ptx(lo + hi, info[0], info[1], info[2], cols[h][byte]))
    lines.append(reg_mma_steps(cols, xs, out, acc, bf16))
    n_out = 4 * n_tiles
    return ("".join(lines) + " }", ",".join(["=r"] * n_out + ["r"] * (next(numbers) - n_out)))[part]


@triton.jit
def _reg_vec_half(lo, hi, start, v32_ptr, lut_ptr, lanes, NV, SLACK: tl.constexpr, USE_ASM: tl.constexpr):
    """One row's half (its mask words lo, hi): the asm's three operands for byte A, three for byte
    B, and the row's value index after the half."""
    pair, first, after = reg_first(lo, hi, start, lanes)  # first: byte A's first value
    byte_a = pair & 0xFF
    byte_b = pair >> 8
    kept_a = popcount(byte_a, USE_ASM)  # (popc32 of a byte stays a SWAR sequence in LLVM)
    second = first + kept_a
    va = load32(v32_ptr, first >> 3, NV, SLACK, USE_ASM)  # its vector and the next
    vb = load32(v32_ptr, second >> 3, NV, SLACK, USE_ASM)
    a0, a1 = va
    b0, b1 = vb
    ops_a = (cols4(a0[0], a0[1], a0[2], a0[3]), cols4(a1[0], a1[1], a1[2], a1[3]),
             cols4(first, load_word(lut_ptr, byte_a, USE_ASM), kept_a, kept_a))
    ops_b = (cols4(b0[0], b0[1], b0[2], b0[3]), cols4(b1[0], b1[1], b1[2], b1[3]),
             cols4(second, load_word(lut_ptr, byte_b, USE_ASM), popcount(byte_b, USE_ASM), kept_a))
    return ops_a, ops_b, after


@triton.jit
def _reg_vec_tile(acc0, acc1, x0, x1, m_lo, m_hi, HALF: tl.constexpr, st_lo, st_hi, v32_ptr, lut_ptr, lanes, NV,
                  SLACK: tl.constexpr, USE_ASM: tl.constexpr, N_TILES: tl.constexpr, BF16_X: tl.constexpr):
    """One (m16 tile, half) of `bitmask`: rows g (lo) and g + 8 (hi), their iteration's mask words
    m and value indices st; x0, x1 the B fragments of batch rows g and 8 + g."""
    a_lo, b_lo, st_lo = _reg_vec_half(m_lo[2 * HALF], m_lo[2 * HALF + 1], st_lo, v32_ptr, lut_ptr, lanes, NV, SLACK,
                                      USE_ASM)
    a_hi, b_hi, st_hi = _reg_vec_half(m_hi[2 * HALF], m_hi[2 * HALF + 1], st_hi, v32_ptr, lut_ptr, lanes, NV, SLACK,
                                      USE_ASM)
    ASM: tl.constexpr = reg_values_ptx(N_TILES, BF16_X, 0)
    CONSTRAINTS: tl.constexpr = reg_values_ptx(N_TILES, BF16_X, 1)
    if N_TILES == 1:
        acc0 = tl.inline_asm_elementwise(
            ASM, CONSTRAINTS, [acc0, a_lo[0], a_lo[1], a_lo[2], b_lo[0], b_lo[1], b_lo[2], a_hi[0], a_hi[1], a_hi[2],
                               b_hi[0], b_hi[1], b_hi[2], x0[0], x0[1]],
            dtype=tl.float32, is_pure=True, pack=4)
    else:
        acc0, acc1 = tl.inline_asm_elementwise(
            ASM, CONSTRAINTS, [acc0, acc1, a_lo[0], a_lo[1], a_lo[2], b_lo[0], b_lo[1], b_lo[2], a_hi[0], a_hi[1],
                               a_hi[2], b_hi[0], b_hi[1], b_hi[2], x0[0], x0[1], x1[0], x1[1]],
            dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    return acc0, acc1, st_lo, st_hi


@triton.jit
def _reg_vec(x_ptr, mask_ptr, v_ptr, co_ptr, y_ptr, lut_ptr, B, N, K, MB, NC, NV, stride_xb, stride_mask, stride_yb,
             ws_ptr, ticket_ptr, SLACK: tl.constexpr, USE_ASM: tl.constexpr, N_TILES: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """REG_MMA for `bitmask` (see above). BLOCK_N = 32 × num_warps: one thread per row of the operands."""
    BF16_X: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    q, row, rows, lanes, x_rows = reg_threads(x_ptr, B, N, stride_xb, BLOCK_N)
    r00, r01, r10, r11 = rows
    first, last = k_tile_range(K, 128)
    s00 = reg_start(co_ptr, mask_ptr, r00, first, NC, MB, stride_mask, 8)  # value index of each row
    s01 = reg_start(co_ptr, mask_ptr, r01, first, NC, MB, stride_mask, 8)
    s10 = reg_start(co_ptr, mask_ptr, r10, first, NC, MB, stride_mask, 8)
    s11 = reg_start(co_ptr, mask_ptr, r11, first, NC, MB, stride_mask, 8)
    v32_ptr = v_ptr.to(tl.pointer_type(tl.int32))
    acc00 = tl.zeros((BLOCK_N, 4), tl.float32)  # acc{mt}{nt}
    acc01 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc10 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc11 = tl.zeros((BLOCK_N, 4), tl.float32)
    for kt in range(first, last):
        w00 = reg_mask_words(mask_ptr, r00, kt, stride_mask)
        w01 = reg_mask_words(mask_ptr, r01, kt, stride_mask)
        w10 = reg_mask_words(mask_ptr, r10, kt, stride_mask)
        w11 = reg_mask_words(mask_ptr, r11, kt, stride_mask)
        for half in tl.static_range(2):
            x0 = reg_x(x_rows[0], kt, half)
            x1 = x0
            if N_TILES == 2:
                x1 = reg_x(x_rows[1], kt, half)
            acc00, acc01, s00, s01 = _reg_vec_tile(acc00, acc01, x0, x1, w00, w01, half, s00, s01, v32_ptr, lut_ptr,
                                                   lanes, NV, SLACK, USE_ASM, N_TILES, BF16_X)
            acc10, acc11, s10, s11 = _reg_vec_tile(acc10, acc11, x0, x1, w10, w11, half, s10, s11, v32_ptr, lut_ptr,
                                                   lanes, NV, SLACK, USE_ASM, N_TILES, BF16_X)
        s00 = next_start(s00, 0, kt + 1, 8, 128)  # a chunk's end: the next starts on 16 bytes
        s01 = next_start(s01, 0, kt + 1, 8, 128)
        s10 = next_start(s10, 0, kt + 1, 8, 128)
        s11 = next_start(s11, 0, kt + 1, 8, 128)
    reg_store(acc00, acc01, acc10, acc11, row, q, y_ptr, ws_ptr, ticket_ptr, B, N, stride_yb, N_TILES, BLOCK_N)


@triton.jit
def _bitmask_vec_kernel(
    x_ptr, mask_ptr, v_ptr, co_ptr, y_ptr, lut_ptr,
    B, N, K, MB, NC, NV,  # MB: mask bytes per row; NC: chunks per row; NV: 16-byte vectors of values
    stride_xb, stride_mask, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    batch_bucket,  # autotune key only
    SLACK: tl.constexpr,  # the stream's storage holds STREAM_SLACK more bytes: loads need no clamp
    USE_ASM: tl.constexpr,  # False under the interpreter
    GEMV_ROWS: tl.constexpr,  # always 0: tensor cores at every batch
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    REG_MMA: tl.constexpr = False,  # batch ≤ BLOCK_M (8 or 16), K % 128 == 0: see above
):
    if REG_MMA:
        _reg_vec(x_ptr, mask_ptr, v_ptr, co_ptr, y_ptr, lut_ptr, B, N, K, MB, NC, NV, stride_xb, stride_mask,
                 stride_yb, ws_ptr, ticket_ptr, SLACK, USE_ASM, BLOCK_M // 8, BLOCK_N)
        return
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    mask_rows = mask_ptr + offs_n.to(tl.int64)[:, None] * stride_mask  # (BLOCK_N, 1)
    v32_ptr = v_ptr.to(tl.pointer_type(tl.int32))  # the stream is 16-byte aligned (format version 2)
    first, last = k_tile_range(K, BLOCK_K)
    # int32 value indices suffice: the launcher checks the stream has fewer than 2^31 entries.
    start = values_before(co_ptr, mask_rows, offs_n, n_mask, first, NC, MB, 8, BLOCK_K)  # (BLOCK_N,)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # yᵀ
    whole = tl.maximum(first, tl.minimum(last, K // BLOCK_K))  # tiles inside K, then the one across its end
    for t in range(first, whole):
        acc, count = vec_tile(acc, x_ptr, v32_ptr, lut_ptr, mask_rows, n_mask, offs_m, t, start, B, K, MB, NV,
                              stride_xb, False, SLACK, USE_ASM, DOT_F32, BLOCK_K)
        start = next_start(start, count, t + 1, 8, BLOCK_K)
    for t in range(whole, last):
        acc, count = vec_tile(acc, x_ptr, v32_ptr, lut_ptr, mask_rows, n_mask, offs_m, t, start, B, K, MB, NV,
                              stride_xb, True, SLACK, USE_ASM, DOT_F32, BLOCK_K)
    store_split(y_ptr, ws_ptr, ticket_ptr, tl.trans(acc), offs_m, offs_n, B, N, stride_yb)


def _cfg(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# B ≤ 4 (BLOCK_M comes from the launcher); B > 4: BLOCK_M = 16 serves B ≤ 16 in one M block.
GEMV_CONFIGS = [
    _cfg(4, 1, BLOCK_N=16, BLOCK_K=256),
    _cfg(4, 1, BLOCK_N=8, BLOCK_K=512),
    _cfg(8, 1, BLOCK_N=32, BLOCK_K=256),
]
TILED_CONFIGS = [
    _cfg(4, 2, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128),
    _cfg(4, 2, BLOCK_M=16, BLOCK_N=64, BLOCK_K=64),
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
]
INTERPRET_CONFIGS = ([_cfg(4, 1, BLOCK_N=16, BLOCK_K=64)], [_cfg(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64)])
KEY = ["N", "K", "batch_bucket"]


def prune_tiled(configs, named_args, **kwargs):
    """Tiled configs whose BLOCK_M does not exceed the batch bucket (16 at least)."""
    fits = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, kwargs["batch_bucket"])]
    return fits or configs[:1]


def tuned(kernel, gemv_configs, tiled_configs, interpret_configs, key):
    """(GEMV, tiled) autotuned entry points of `kernel`; one fixed config each in the interpreter."""
    gemv, tiled = interpret_configs if _common.INTERPRET else (gemv_configs, tiled_configs)
    return (triton.autotune(gemv, key=key)(kernel),
            triton.autotune(tiled, key=key, prune_configs_by={"early_config_prune": prune_tiled})(kernel))


# Mask byte by mask byte on the tensor cores at every batch (BLOCK_M = 16 up to 16 rows): 4 dots of
# K = BLOCK_K/4, one per column pair of a mask byte. Each thread's mask bytes of a tile load as one
# 16-byte vector (16 per thread: BLOCK_N · BLOCK_K/8 = 512 · warps).
VEC_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256),
    _cfg(8, 1, BLOCK_M=16, BLOCK_N=128, BLOCK_K=256),
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128),
]
VEC_INTERPRET_CONFIGS = ([_cfg(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128)],) * 2
_VEC = tuned(_bitmask_vec_kernel, VEC_CONFIGS, VEC_CONFIGS, VEC_INTERPRET_CONFIGS, KEY)[1]


def reg_fits(batch: int, k: int) -> bool:
    """Whether a call can take REG_MMA: up to 16 batch rows, whole 128-column iterations."""
    return batch <= 16 and k % 128 == 0


def reg_config(batch: int) -> triton.Config:
    """REG_MMA: 128 rows (4 warps × two m16 tiles) × 128 columns per iteration, 8 or 16 batch rows."""
    return _cfg(4, 1, BLOCK_M=8 if batch <= 8 else 16, BLOCK_N=REG_BLOCK_N, BLOCK_K=128, REG_MMA=True)


def reg_inputs(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows of unit stride) and the mask as REG_MMA reads them, in aligned 16-byte vectors: a
    contiguous copy of either where it is not."""
    if x.data_ptr() % 16 or (x.shape[0] > 1 and x.stride(0) % 8):
        x = x.clone(memory_format=torch.contiguous_format)
    if mask.data_ptr() % 16 or mask.stride(0) % 16 or mask.stride(1) != 1:
        mask = mask.clone(memory_format=torch.contiguous_format)
    return x, mask


def reg_launch(kernel, x: torch.Tensor, rows: int, args: tuple, **meta) -> None:
    """Launch `kernel` on REG_MMA over (row blocks, splits); args: its runtime arguments from x_ptr
    to stride_yb (with reg_inputs' x and mask), meta: its other constexprs."""
    batch, k = x.shape
    cfg = reg_config(batch)
    tiles = triton.cdiv(rows, REG_BLOCK_N)
    ws, tickets = workspace(x, rows, tiles)
    args = (*args, ws, tickets, batch_bucket(batch))
    meta = dict(GEMV_ROWS=0, DOT_F32=False, num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
                **cfg.kwargs, **meta)
    kernel[(tiles, split_for(kernel, tiles, k, 128, x, args, meta).splits)](*args, **meta)


def check_bitmask(fmt: str, x: torch.Tensor, mask: torch.Tensor, chunk_offsets: torch.Tensor,
                  values: torch.Tensor) -> tuple[int, int, int]:
    """Checks x, mask (N, ceil(K/8)), chunk_offsets (N, ceil(K/512)) and a 1-D values stream
    indexable by int32; returns (B, K, N)."""
    batch, k = check_x(fmt, x)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{fmt}: mask must be a 2-D uint8 (N, ceil(K/8)) tensor")
    rows = mask.shape[0]
    check_tensor(fmt, "mask", mask, torch.uint8, (rows, -(-k // 8)), x, "(N, ceil(K/8))")
    check_tensor(fmt, "chunk_offsets", chunk_offsets, torch.int32, (rows, -(-k // CHUNK_COLUMNS)), x,
                 f"(N, ceil(K/{CHUNK_COLUMNS})) (format version 2)")
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"{fmt}: values must be a 1-D tensor (the chunked stream of format version 2)")
    if values.numel() * 2 >= 2**31:
        raise ValueError(f"{fmt}: values holds {values.numel()} entries; the kernels index it with int32")
    return batch, k, rows


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask`. values must have x's dtype.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k, rows = check_bitmask(FORMAT, x, mask, chunk_offsets, values)
    check_tensor(FORMAT, "values", values, x.dtype, tuple(values.shape), x, "(x's dtype) (entries,)")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if values.numel() % 8:
        raise ValueError(f"{FORMAT}: values holds {values.numel()} entries, not whole 16-byte chunks "
                         "(format version 2 pads every chunk to 8 values)")
    if k == 0 or values.numel() == 0:  # nothing kept
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    values = aligned(values, 16)  # the stream is read in 16-byte vectors
    lut = table(value_selectors, x.device)
    if reg_fits(batch, k):
        x, mask = reg_inputs(x, mask)
        reg_launch(_bitmask_vec_kernel, x, rows,
                   (x, mask, values, chunk_offsets, out, lut, batch, rows, k, mask.shape[1], chunk_offsets.shape[1],
                    values.numel() // 8, x.stride(0), mask.stride(0), out.stride(0)),
                   SLACK=_common.has_slack(values), USE_ASM=not _common.INTERPRET)
        return out
    _sparse.launch(_VEC, _VEC, x, rows,
                   (x, mask, values, chunk_offsets, out, lut, batch, rows, k, mask.shape[1], chunk_offsets.shape[1],
                    values.numel() // 8, x.stride(0), mask.stride(0), out.stride(0)),
                   gemv_max=0, SLACK=_common.has_slack(values), USE_ASM=not _common.INTERPRET)
    return out


def kept_and_slots(mask: torch.Tensor, chunk_offsets: torch.Tensor, k: int,
                   units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept flags (N, K) bool and each column's index in the stream (N, K) int64: its chunk's
    offset (16-byte units of `units` entries) plus the kept columns before it in the chunk."""
    shifts = torch.arange(8, device=mask.device, dtype=torch.int32)
    kept = ((mask.to(torch.int32)[:, :, None] >> shifts) & 1).reshape(mask.shape[0], -1)[:, :k]
    chunk = torch.arange(k, device=mask.device) // CHUNK_COLUMNS
    rank = torch.zeros_like(kept)
    for j in range(0, k, CHUNK_COLUMNS):  # exclusive popcount prefix inside each chunk
        cols = kept[:, j:j + CHUNK_COLUMNS]
        rank[:, j:j + CHUNK_COLUMNS] = cols.cumsum(1) - cols
    return kept.bool(), chunk_offsets.long()[:, chunk] * units + rank


def dequantize(mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor, *, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    kept, slot = kept_and_slots(mask, chunk_offsets, k, 8)
    gathered = values.float()[slot.clamp(max=max(values.numel() - 1, 0))] if values.numel() else 0.0
    return torch.where(kept, gathered, 0.0)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor) -> torch.Tensor:
    """Torch: expand to dense, fp32 matmul, cast to x's dtype."""
    return (x.float() @ dequantize(mask, values, chunk_offsets, k=x.shape[1]).T).to(x.dtype)


def with_reg_ptx_bytes(spec, per_weight: float):
    """spec with REG_MMA configs' PTX-loaded bytes per thread and iteration: `per_weight` bytes per
    (row, column), the rereads included (the other configs keep spec's count)."""
    tiles = spec.ptx_bytes
    return dataclasses.replace(spec, ptx_bytes=lambda c: round(
        c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] * per_weight / (32 * c.num_warps)) if c.kwargs.get("REG_MMA")
        else tiles(c))


def _static_spec():
    """50% sparsity: the mask (1/8 B per weight) and half the weights' values, REG_MMA at batch 1-16,
    the tiles above. The loops load two 16-byte vectors per mask byte (8 columns) where the values
    of those columns are 8 bytes on average (the rereads hit L1, so instructions per byte count the
    1/8 + 1 bytes per weight streamed), REG_MMA's quads each the rows' 16 mask bytes too. SLACK: a
    packed model's streams have it (tasks/serving/packed_model.py); a bare one clamps."""
    spec = _sparse.static_spec(
        "bitmask 50%", _bitmask_vec_kernel, dict(x="fp16", mask="u8", v="fp16", co="i32", y="fp16", lut="i32"),
        ("mask", "v"), dict(SLACK=True, USE_ASM=True, REG_MMA=False), [], [reg_config(1), reg_config(16)]
        + VEC_CONFIGS[2:], 1 / 8 + 0.5 * 2, ptx_bytes_per_weight=(1 + 32) / 8)
    return with_reg_ptx_bytes(spec, 36 / 8)


STATIC = (_static_spec(),)
