"""`bitmask-int4` / `bitmask-int8` sparse quantized weights (docs/formats.md, version 2): y = x @ Ŵᵀ.

Format, W (N, K), groups of g consecutive original columns, G = ceil(K/g), chunks of 512 columns,
J = ceil(K/512):
    mask           uint8 (N, ceil(K/8))     bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values         uint8 (L,)               the code stream chunk by chunk (row-major), each chunk's
                                            kept codes from a 16-byte boundary, zero padding after;
                                            int4: code i in byte i // 2, low nibble for even i
    chunk_offsets  int32 (N, J)             chunk (n, j) starts at byte 16 · chunk_offsets[n, j]
    scales         float16 (N, G), zeros uint8 (N, G)
Math (U = 128 / bits codes per 16 bytes):
    slot(n, k) = U · chunk_offsets[n, k // 512] + popcount(mask[n, 512·(k // 512) : k])
    Ŵ[n, k]    = (codes[slot(n, k)] − zeros[n, k // g]) · scales[n, k // g] if kept, else 0
    y[b, n]    = Σ_k x[b, k] · Ŵ[n, k]        fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

Three ways through the weights, all split over K (kernels/_common.py):
- REG_MMA (int4 codes, batch ≤ 16, K % 128 == 0, g = −1 or a multiple of 64: the pipeline's
  LLM layers), mma.sync on operands built in registers: each thread turns its own mask bytes
  into mma A fragments, so nothing is staged through shared memory (kernels/bitmask.py, "batch
  1-16 in registers").
- BYTE_LUT (tiles inside one quantization group; int4 codes with g = −1 or a multiple of 64 where
  REG_MMA does not apply; int8 codes with fp16 x and g = −1 or a multiple of 64), tensor cores at
  every batch (BLOCK_M = 16 up to 16 rows): per mask byte (8
  columns) one 128-bit load of its 16-byte entry in a 256-entry table (BYTE_TABLE / CODE8_TABLE:
  two PRMT selectors, a zero-code selector, its kept count) and a prefix of the counts across the
  row give the index of its first code. int4: two 32-bit words of the code stream around it are
  loaded, a funnel shift lines up its codes, and two byte permutes (PRMT) with the table's
  selectors place each code in its column, the zero code in the pruned ones; the fp16/bf16
  exponent trick and one pair subtraction give code − zero (exactly 0 where pruned). int8: as
  kernels/bitmask.py's values, the two 16-byte vectors from the one holding its first code
  (128-bit loads), two levels of selects and funnel shifts line up its codes, the same permutes
  and the 0x6400 trick (fp16 only: bf16's 8 significant bits cannot hold 128 + a code). Inline
  PTX (CODES4_COLUMNS_PTX, CODES8_COLUMNS_PTX, checked on an instruction model in
  tests/test_kernels_sparse.py); the interpreter picks the same codes with integer ops. One dot
  per column pair of the mask bytes against x's columns c, c + 1, c + 8, c + 9, … (a dot's K
  order is free; kernels/bitmask.py's dot_pairs), the column tile as the A operand (yᵀ), the
  scale once per tile. Every load unmasked, at addresses clamped to the stream's end (a word or
  vector the byte's codes reach is inside it).
- otherwise (other groups, bf16 x with int8 codes): column by column with kernels/bitmask.py's
  helpers (a popcount per 32-bit mask word, the rank of a column by one shift and popcount, a
  predicated gather in inline PTX) returning the zero code for pruned columns, so
  (code − zero) · scale is exactly 0 there; codes become fp32 by the 2^23 trick, scale and zero
  once per word when g is a multiple of 32, else per column. GEMV for B ≤ 4, tl.dot above.
BITS = 8 serves `bitmask-int8` (kernels/bitmask_int8.py).

Main loop on sm_90 (Triton 3.9, `python -m kernels.static_report`), 50% sparsity, batch 1-16,
SASS instructions per packed byte and bytes through L1 / shared memory per packed byte, streams
with slack (below):
- bitmask-int4, REG_MMA: 10.9-11.1 instructions and 10.3-10.5 L1 bytes at batch 1-8 (g = 128,
  64), 11.8-11.9 and 11.6-11.8 at batch 9-16; 32-bit code loads. BYTE_LUT, which served batch
  1-16 before, spends 11.7-11.8 and 21.6-22.0: half its L1 bytes stage the dots' operands through
  shared memory (STS, then ldmatrix). Per mask byte (3 packed bytes at 50%) at g = 128, batch
  1-8, 32.8 instructions: 15.5 build its columns in the asm (funnel shifts, the nibble split, 7
  PRMT, 4 HSUB2), 1 mma and 1 FFMA per 8 batch rows, ≈ 4 find its first code (POPCs of the half's
  words), ≈ 3.5 load and address its table entry, ≈ 3 its code words, 2.6 the zero points and
  scales (3.1 at g = 64), ≈ 2.2 the mask words, x, chunk ends and loop (docs/formats.md, "Kernel
  limits", has the accounting and what each part would take at least). The entry (16
  bytes), the code words (6 per byte), the mask (4: a quad's threads each load the row's 16
  bytes) and x (4) make its L1 bytes. Earlier BYTE_LUT figures: 15.6-15.9 at g = 128 with 64 rows
  per CTA, groups of 64 column by column at 55-75, 21.0-21.6 on format version 1.
- bitmask-int8, BYTE_LUT: 8.5 at g = 128 with 128-bit loads, 8.45 at g = 64 with 64-bit mask
  loads, a row's 8 mask bytes of a 64-column tile (was 11.5-11.6; 17.0-17.2 through tl.load's
  vectors, 38.3-39.3 column by column). 256 rows per 4 warps share the x tile and the dots'
  synchronization, paid once per tile, over 16 mask bytes per thread.
Still above 6: per mask byte the prefix, the loads and their addresses, 7 permutes and the
subtractions (int4: 18 instructions would be 6 per byte). 16-byte code loads would cost ≈ 8 more
instructions per mask byte (docs/formats.md, "Kernel limits"); clamping each address (no slack)
costs int4 ≈ 0.8 more on REG_MMA (three clamps per two bytes), 1.0 on BYTE_LUT, int8 0.4.
A stream whose storage goes on for STREAM_SLACK bytes (kernels/_common.py; a packed model's off
the CPU) loads without clamping each address (SLACK).
The launcher copies a `values` that is not 16-byte aligned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _common, _sparse
from kernels._common import (INTERPRET, aligned, check_group, check_tensor, cols4, k_tile_range, make_out,
                             store_split)
from kernels._sparse import code_value, rows_total
from kernels.bitmask import (GEMV_CONFIGS, INTERPRET_CONFIGS, TILED_CONFIGS, _cfg, accumulate_words, check_bitmask,
                             dot_pairs, gather_kept, in_stream, kept_and_slots, load16, load_pair, load_word, mask_tile,
                             mask_words, next_start, reg_config, reg_first, reg_fits, reg_inputs, reg_launch,
                             reg_mask_words, reg_mma_steps, reg_start, reg_store, reg_threads, reg_x, table,
                             tile_bases, tuned, value_selectors, values_before, with_reg_ptx_bytes, word_at)

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


# 4-bit codes of one mask byte → its 8 dense columns, code − zero, as fp16/bf16, pack=1: $8 lo,
# $9 hi: the two uint32 words of the code stream holding the byte's codes, $10 the bit index of its
# first code (only its low 5 bits count: the funnel shift takes it mod 32), $11 … $13 the byte's
# entry in BYTE_TABLE (selectors of columns 0-3 and 4-7, the zero-code selector), $14 the zero
# code, $15 zz: (bias + zero) as a 16-bit pair; $0 … $7 the columns, 16 bits each. The funnel shift
# leaves the byte's codes as the nibbles of w, rank r in nibble r; the even and odd ranks spread to
# the bytes of l4 and h4, and when fewer than 8 are kept one PRMT puts the zero code in h4's top
# byte (rank 7, unused then). Two PRMTs pick each column's byte (its rank, or the zero code for a
# pruned column); one per column pair puts two bytes under the exponent of `bias` (1024.0 fp16 /
# 128.0 bf16: bias + code exactly), and the pair subtraction leaves code − zero (0.0 where pruned)
# in columns 2q and 2q + 1, the halves $2q and $2q + 1 (kernels/bitmask.py's dot_pairs joins them
# back into one register).
CODES4_COLUMNS_PTX = (
    "{ .reg .b32 w, l4, h4, d0, d1, e, f; mov.b32 e, EXP;"
    " shf.r.wrap.b32 w, $8, $9, $10;"
    " and.b32 l4, w, 0x0F0F0F0F; shr.b32 h4, w, 4; and.b32 h4, h4, 0x0F0F0F0F;"
    " prmt.b32 h4, h4, $14, $13; prmt.b32 d0, l4, h4, $11; prmt.b32 d1, l4, h4, $12;"
    + "".join(f" prmt.b32 f, d{q // 2}, e, {sel}; SUB f, f, $15; mov.b32 {{${2 * q}, ${2 * q + 1}}}, f;"
              for q, sel in enumerate(("0x5150", "0x5352") * 2))
    + " }")
CODES4_FP16_PTX = tl.constexpr(CODES4_COLUMNS_PTX.replace("EXP", "0x64646464").replace("SUB", "sub.f16x2"))
CODES4_BF16_PTX = tl.constexpr(CODES4_COLUMNS_PTX.replace("EXP", "0x43434343").replace("SUB", "sub.rn.bf16x2"))


def byte_table() -> list[int]:
    """16 bytes per mask byte m, one 128-bit load: the PRMT selectors of columns 0-3 and of 4-7
    (bits 15:0; column c reads rank popcount(m & (2^c − 1)) of the byte's codes, at byte r // 2 of
    l4 (even r) or 4 + r // 2 of h4 (odd r); a pruned column reads byte 7, the zero code), the
    zero-code selector (0x4210: byte 3 of h4 becomes the zero code, unless all 8 are kept) and 4 ·
    popcount(m), the bits its codes take in the stream."""
    table = []
    for m in range(256):
        sel = [0, 0]
        for c in range(8):
            r = bin(m & ((1 << c) - 1)).count("1")
            sel[c // 4] |= ((r // 2 + 4 * (r % 2)) if m >> c & 1 else 7) << (4 * (c % 4))
        table += [*sel, 0x3210 if m == 0xFF else 0x4210, 4 * bin(m).count("1")]
    return table


# 8-bit codes of one mask byte → its 8 dense columns, code − zero, as fp16, pack=1: $8 … $15 the
# 8 words (32 bytes) from the 16-byte vector of the byte's first code, $16 the index of that code
# (its low 4 bits place it among them), $17 … $19 the byte's entry in CODE8_TABLE (selectors of
# columns 0-3 and 4-7, the zero-code selector), $20 the zero code, $21 zz: (1024 + zero) as an fp16
# pair; $0 … $7 the columns, 16 bits each. Two levels of selects and two funnel shifts line up the
# byte's codes (rank r in byte r of la lb); one PRMT makes byte 7 the zero code when fewer than 8
# are kept; two PRMTs pick each column's code, one per column pair puts two codes under 0x64
# (1024 + code), and the pair subtraction leaves code − zero (0.0 where pruned) in columns 2q and
# 2q + 1, the halves $2q and $2q + 1 (kernels/bitmask.py's dot_pairs joins them back into one register).
CODES8_COLUMNS_PTX = tl.constexpr(
    "{ .reg .pred p1, p2; .reg .b32 m, t0, t1, u0, u1, v1, a, b, c, r, la, lb, d0, d1, e, f;"
    " mov.b32 e, 0x64646464; and.b32 m, $16, 4; setp.eq.u32 p1, m, 0; and.b32 m, $16, 8; setp.eq.u32 p2, m, 0;"
    " selp.b32 t0, $8, $9, p1; selp.b32 t1, $10, $11, p1; selp.b32 u0, $9, $10, p1; selp.b32 u1, $11, $12, p1;"
    " selp.b32 v1, $12, $13, p1; selp.b32 a, t0, t1, p2; selp.b32 b, u0, u1, p2; selp.b32 c, t1, v1, p2;"
    " shl.b32 r, $16, 3; shf.r.wrap.b32 la, a, b, r; shf.r.wrap.b32 lb, b, c, r;"
    " prmt.b32 lb, lb, $20, $19; prmt.b32 d0, la, lb, $17; prmt.b32 d1, la, lb, $18;"
    + "".join(f" prmt.b32 f, d{q // 2}, e, {sel}; sub.f16x2 f, f, $21; mov.b32 {{${2 * q}, ${2 * q + 1}}}, f;"
              for q, sel in enumerate(("0x5150", "0x5352") * 2))
    + " }")


def code8_table() -> list[int]:
    """BYTE_TABLE's layout for 8-bit codes: per mask byte m the PRMT selectors of columns 0-3 and of
    4-7 (column c reads byte r of la lb, its rank r = popcount(m & (2^c − 1)); a pruned column byte
    7, the zero code), the zero-code selector and popcount(m), the codes it takes."""
    table = []
    for m, sel in enumerate(value_selectors()):
        table += [sel & 0xFFFF, sel >> 16, 0x3210 if m == 0xFF else 0x4210, bin(m).count("1")]
    return table


@triton.jit
def code8_columns(lo, hi, idx, entry, zero, USE_ASM: tl.constexpr):
    """The 8 dense columns (code − zero, fp16) of each mask byte, 8 × (R, NB); see
    CODES8_COLUMNS_PTX. lo, hi: 4 × (R, NB) int32 each, the 32 code bytes from the byte's vector
    on; idx: the index of its first code; entry: its 4 CODE8_TABLE words; zero (R, NB) int32."""
    if USE_ASM:
        cols = tl.inline_asm_elementwise(
            CODES8_COLUMNS_PTX, "=h,=h,=h,=h,=h,=h,=h,=h" + ",r" * 14,
            [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3], idx, entry[0], entry[1], entry[2], zero,
             (0x6400 + zero) * 0x10001], dtype=(tl.float16,) * 8, is_pure=True, pack=1)
    else:  # the same choice of codes, on integers: byte idx mod 16 + rank of the 32
        cols = ()
        for c in tl.static_range(8):
            nib = (entry[c // 4] >> (4 * (c % 4))) & 7
            h = (idx & 15) + nib
            word = word_at(lo, hi, h >> 2)
            code = tl.where((nib == 7) & (entry[2] == 0x4210), zero, ((word >> ((h & 3) * 8)) & 0xFF).to(tl.int32))
            cols = cols + ((code - zero).to(tl.float32).to(tl.float16),)
    return cols


@triton.jit
def byte_columns(lo, hi, bit, entry, zero, v_dtype: tl.constexpr, USE_ASM: tl.constexpr):
    """The 8 dense columns (code − zero) of each mask byte, 8 × (R, NB) in v_dtype; see
    CODES4_COLUMNS_PTX. bit: the bit index of its first code; entry: its 4 BYTE_TABLE words;
    zero (R, NB) int32."""
    if USE_ASM:
        if v_dtype == tl.bfloat16:
            cols = tl.inline_asm_elementwise(
                CODES4_BF16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h" + ",r" * 8,
                [lo, hi, bit, entry[0], entry[1], entry[2], zero, ((0x4300 + zero) * 0x10001).to(tl.uint32)],
                dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
        else:
            cols = tl.inline_asm_elementwise(
                CODES4_FP16_PTX, "=h,=h,=h,=h,=h,=h,=h,=h" + ",r" * 8,
                [lo, hi, bit, entry[0], entry[1], entry[2], zero, ((0x6400 + zero) * 0x10001).to(tl.uint32)],
                dtype=(tl.float16,) * 8, is_pure=True, pack=1)
    else:  # the same steps on 64-bit integers
        w = ((hi.to(tl.uint64) << 32 | lo.to(tl.uint64)) >> (bit & 31).to(tl.uint64)) & 0xFFFFFFFF
        l4 = w & 0x0F0F0F0F
        h4 = (w >> 4) & 0x0F0F0F0F
        h4 = tl.where(entry[2] == 0x4210, (h4 & 0x00FFFFFF) | (zero.to(tl.uint64) << 24), h4)
        pool = l4 | (h4 << 32)
        cols = ()
        for c in tl.static_range(8):
            s = entry[c // 4].to(tl.uint64)
            byte = (pool >> (8 * ((s >> (4 * (c % 4))) & 7))) & 0xFF
            # via fp32: the interpreter's int → bf16 is not a conversion
            cols = cols + ((byte.to(tl.int32) - zero).to(tl.float32).to(v_dtype),)
    return cols


@triton.jit
def lut_tile(acc, x_ptr, v32_ptr, lut_ptr, mask_rows, n_mask, offs_m, t, start, scale, zero, B, K, MB, NW,
             stride_xb, BITS: tl.constexpr, TAIL: tl.constexpr, SLACK: tl.constexpr, USE_ASM: tl.constexpr,
             DOT_F32: tl.constexpr, BLOCK_K: tl.constexpr):
    """One K tile of bitmask-int4 / int8 on the tensor cores (the tile lies in one quantization
    group: scale, zero (BLOCK_N,)). Returns acc + Ŵ · xᵀ (BLOCK_N, BLOCK_M) and the tile's kept
    count per row. TAIL: the tile reaches past K (its mask bits there are cleared, its x masked);
    SLACK: the stream's storage holds STREAM_SLACK more bytes (kernels/_common.py)."""
    NB: tl.constexpr = BLOCK_K // 8
    b = mask_tile(mask_rows, n_mask, t, MB, BLOCK_K).to(tl.int32)  # (BLOCK_N, NB)
    if TAIL:  # the tile across K's end: clear the padding bits past K (unspecified)
        valid = K - (t * BLOCK_K + tl.arange(0, NB) * 8)  # columns of each byte inside K
        b = b & tl.where(valid >= 8, 0xFF, (1 << tl.maximum(valid, 0)) - 1)[None, :]
    z = tl.broadcast_to(zero[:, None], b.shape)
    # Unmasked, at addresses clamped to the stream's last word (NW words) unless its storage goes
    # on: a word holding one of the byte's codes is inside the stream; another one's bits land in
    # no column.
    if BITS == 4:  # the two 32-bit words around the byte's (at most 8) nibbles
        entry = load16(lut_ptr, b, USE_ASM)  # BYTE_TABLE[b]: its last word is 4 · its kept count
        # its first code: bit `bit` mod 32 of word `word` (start: the row's code index)
        bit = ((start & 7) << 2)[:, None] + tl.cumsum(entry[3], axis=1) - entry[3]
        word = (start >> 3)[:, None] + (bit >> 5)
        lo, hi = load_pair(v32_ptr, word, NW, SLACK, USE_ASM)
        cols = byte_columns(lo, hi, bit, entry, z, x_ptr.dtype.element_ty, USE_ASM)
        count = tl.sum(entry[3], axis=1) >> 2
    else:  # the two 16-byte vectors from the one holding the byte's first code
        entry = load16(lut_ptr, b, USE_ASM)  # CODE8_TABLE[b]: its last word is its kept count
        idx = start[:, None] + tl.cumsum(entry[3], axis=1) - entry[3]  # code index of each byte's first code
        lo = load16(v32_ptr, in_stream(idx >> 4, NW // 4, SLACK), USE_ASM)  # 4 × (BLOCK_N, NB)
        hi = load16(v32_ptr, in_stream((idx >> 4) + 1, NW // 4, SLACK), USE_ASM)
        cols = code8_columns(lo, hi, idx, entry, z, USE_ASM)
        count = tl.sum(entry[3], axis=1)
    part = dot_pairs(cols, tl.zeros(acc.shape, dtype=tl.float32), x_ptr, offs_m, t, B, K, stride_xb, TAIL, DOT_F32,
                     BLOCK_K)
    return acc + part * scale[:, None], count


# ----------------------------------------------------------------------------- batch 1-16 in registers
# REG_MMA (kernels/bitmask.py, "batch 1-16 in registers") for int4 codes, fp16 or bf16 x, g % 64 == 0
# or one group per row: per (row, half) byte A's first code, the two bytes' BYTE_TABLE entries and
# three code words from there; the asm lines up each byte's codes (funnel shifts: a 64-bit window,
# byte B's from bit 4·popcount(A)), builds its 8 columns as CODES4_COLUMNS_PTX does, runs the mma
# from zero and adds the sums times each row's scale (FFMA) to the accumulators.


@triton.constexpr_function
def reg_mma_ptx(n_tiles: int, bf16: bool = False) -> tuple[str, str]:
    """(asm, constraints) of one (m16 tile, half) for n_tiles × 8 batch rows, fp16 or bf16 x.
    Operands, 4 registers each (row h of the thread's two: g, g + 8): outputs acc[nt]; inputs
    acc[nt]; words[h] = the three code words from byte A's first code's on and 4 × its code index
    (the funnel shift takes it mod 32); first[h] = byte A's BYTE_TABLE entry (selectors, zero
    selector, bits of its codes); second[h] = byte B's first three entry words (the fourth unused);
    zs = the bias plus the zero point (1024 + z fp16, 128 + z bf16) as pairs, rows g and g + 8
    (their low byte, z itself, is the zero selector's source), then their fp32 scales; x[nt] = the
    B fragments of bytes A and B (x words 4 per byte of batch row 8nt + g: steps 0, 1 of the byte's
    k32 block)."""
    def build(src: str, selectors: list, zero: str, zz: str, names: list) -> str:
        """CODES4_COLUMNS_PTX's column build from the codes in `src` (rank r in nibble r) into the
        f16x2 registers `names` (columns 0-1, 2-3, 4-5, 6-7); selectors: columns 0-3, 4-7, zero code."""
        sel0, sel1, zsel = selectors
        return (f" and.b32 l4, {src}, 0x0F0F0F0F; shr.b32 h4, {src}, 4; and.b32 h4, h4, 0x0F0F0F0F;"
                f" prmt.b32 h4, h4, {zero}, {zsel}; prmt.b32 d0, l4, h4, {sel0}; prmt.b32 d1, l4, h4, {sel1};"
                + "".join(f" prmt.b32 {r}, d{p // 2}, e, {'0x5150' if p % 2 == 0 else '0x5352'};"
                          f" {'sub.rn.bf16x2' if bf16 else 'sub.f16x2'} {r}, {r}, {zz};" for p, r in enumerate(names)))

    numbers = iter(range(10_000))
    take = lambda: [f"${next(numbers)}" for _ in range(4)]  # noqa: E731
    out = [take() for _ in range(n_tiles)]
    acc = [take() for _ in range(n_tiles)]
    words = [take() for _ in range(2)]
    first = [take() for _ in range(2)]
    second = [take() for _ in range(2)]
    zs = take()
    xs = [(take(), take()) for _ in range(n_tiles)]
    cols = [[[f"a{h}{byte}{p}" for p in range(4)] for byte in range(2)] for h in range(2)]
    part = [[f"p{nt}{i}" for i in range(4)] for nt in range(n_tiles)]
    lines = ["{ .reg .b32 e, x0, x1, y, l4, h4, d0, d1, " + ", ".join(r for h in cols for b in h for r in b)
             + "; .reg .f32 zero, " + ", ".join(r for p in part for r in p)
             + f"; mov.b32 e, {'0x43434343' if bf16 else '0x64646464'}; mov.f32 zero, 0f00000000;"]
    for h in range(2):
        w0, w1, w2, shift = words[h]
        lines.append(f" shf.r.wrap.b32 x0, {w0}, {w1}, {shift}; shf.r.wrap.b32 x1, {w1}, {w2}, {shift};")
        lines.append(build("x0", first[h][:3], zs[h], zs[h], cols[h][0]))
        lines.append(f" shf.r.clamp.b32 y, x0, x1, {first[h][3]};")  # byte B's codes: after A's (32 bits: x1)
        lines.append(build("y", second[h][:3], zs[h], zs[h], cols[h][1]))
    lines.append(reg_mma_steps(cols, xs, part, [["zero"] * 4] * n_tiles, bf16))
    for nt in range(n_tiles):
        lines += [f" fma.rn.f32 {out[nt][i]}, {part[nt][i]}, {zs[2 + i // 2]}, {acc[nt][i]};" for i in range(4)]
    n_out = 4 * n_tiles
    return "".join(lines) + " }", ",".join(["=r"] * n_out + ["r"] * (next(numbers) - n_out))


@triton.constexpr_function
def reg_mma_asm(n_tiles, bf16, part):
    """reg_mma_ptx's asm (part 0) or constraints (part 1), at compile time."""
    return reg_mma_ptx(n_tiles, bf16)[part]


@triton.jit
def load_words3(base, i, n, SLACK: tl.constexpr, USE_ASM: tl.constexpr):
    """base[i], base[i + 1], base[i + 2] (int32 words, i ≥ 0, each clamped to the n words unless
    SLACK): with SLACK one 64-bit address for the three loads."""
    if SLACK and USE_ASM:
        w0, w1, w2 = tl.inline_asm_elementwise(
            "{ .reg .b64 a; mul.wide.u32 a, $3, 4; add.s64 a, $4, a; ld.global.nc.b32 $0, [a];"
            " ld.global.nc.b32 $1, [a+4]; ld.global.nc.b32 $2, [a+8]; }",
            "=r,=r,=r,r,l", [i, base], dtype=(tl.int32,) * 3, is_pure=True, pack=1)
    else:
        w0 = load_word(base, in_stream(i, n, SLACK), USE_ASM)
        w1 = load_word(base, in_stream(i + 1, n, SLACK), USE_ASM)
        w2 = load_word(base, in_stream(i + 2, n, SLACK), USE_ASM)
    return w0, w1, w2


@triton.jit
def _reg_half(lo, hi, start, v32_ptr, lut_ptr, lanes, NW, SLACK: tl.constexpr, USE_ASM: tl.constexpr):
    """One row's half (its mask words lo, hi): the asm's words, first and second operands, and the
    row's start after the half (code indices)."""
    pair, code, after = reg_first(lo, hi, start, lanes)  # code: byte A's first
    ea0, ea1, ea2, ea3 = load16(lut_ptr, pair & 0xFF, USE_ASM)
    eb0, eb1, eb2, _ = load16(lut_ptr, pair >> 8, USE_ASM)
    w0, w1, w2 = load_words3(v32_ptr, code >> 3, NW, SLACK, USE_ASM)
    return cols4(w0, w1, w2, code * 4), cols4(ea0, ea1, ea2, ea3), cols4(eb0, eb1, eb2, eb2), after


@triton.jit
def _reg_zz(z, BF16_X: tl.constexpr):
    """(1024 + z) as an fp16 pair, (128 + z) as a bf16 one (int32 zero codes z < 128): its low byte
    is z itself, the asm's zero code."""
    return z * 0x10001 + (0x43004300 if BF16_X else 0x64006400)


@triton.jit
def _reg_scale(bits):
    """fp16 scale bits (int32 < 2^16) → fp32 bits."""
    return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32).to(tl.int32, bitcast=True)


@triton.jit
def _reg_groups(z_row, s_row, kt, GROUP: tl.constexpr, BF16_X: tl.constexpr):
    """A row's (zz, scale) of iteration kt's halves, ((zz0, s0), (zz1, s1)): g = 64 loads both
    groups at once (the zero points as one halfword, the scales as one word), else the one group."""
    if GROUP == 64:
        zp = tl.load((z_row + 2 * kt).to(tl.pointer_type(tl.uint16))).to(tl.int32)
        sp = tl.load((s_row + 2 * kt).to(tl.pointer_type(tl.int32)))
        pair = ((_reg_zz(zp & 255, BF16_X), _reg_scale(sp & 0xFFFF)),
                (_reg_zz(zp >> 8, BF16_X), _reg_scale((sp >> 16) & 0xFFFF)))
    else:
        group = 128 * kt // GROUP if GROUP > 0 else 0
        one = (_reg_zz(tl.load(z_row + group).to(tl.int32), BF16_X),
               tl.load(s_row + group).to(tl.float32).to(tl.int32, bitcast=True))
        pair = (one, one)
    return pair


@triton.jit
def _reg_tile(acc0, acc1, x0, x1, m_lo, m_hi, HALF: tl.constexpr, st_lo, st_hi, z_lo, z_hi, v32_ptr, lut_ptr,
              lanes, NW, SLACK: tl.constexpr, USE_ASM: tl.constexpr, N_TILES: tl.constexpr, BF16_X: tl.constexpr):
    """One (m16 tile, half): rows g (lo) and g + 8 (hi), their iteration's 4 mask words m, starts
    st, z = (zz, scale bits) of the half's group (_reg_groups). x0, x1: the B fragments (xa, xb)
    of batch rows g and 8 + g. Returns the accumulators and the rows' starts."""
    words_lo, first_lo, second_lo, st_lo = _reg_half(m_lo[2 * HALF], m_lo[2 * HALF + 1], st_lo, v32_ptr, lut_ptr,
                                                     lanes, NW, SLACK, USE_ASM)
    words_hi, first_hi, second_hi, st_hi = _reg_half(m_hi[2 * HALF], m_hi[2 * HALF + 1], st_hi, v32_ptr, lut_ptr,
                                                     lanes, NW, SLACK, USE_ASM)
    zs = cols4(z_lo[0], z_hi[0], z_lo[1], z_hi[1])
    ASM: tl.constexpr = reg_mma_asm(N_TILES, BF16_X, 0)
    CONSTRAINTS: tl.constexpr = reg_mma_asm(N_TILES, BF16_X, 1)
    if N_TILES == 1:
        acc0 = tl.inline_asm_elementwise(
            ASM, CONSTRAINTS, [acc0, words_lo, words_hi, first_lo, first_hi, second_lo, second_hi, zs, x0[0], x0[1]],
            dtype=tl.float32, is_pure=True, pack=4)
    else:
        acc0, acc1 = tl.inline_asm_elementwise(
            ASM, CONSTRAINTS, [acc0, acc1, words_lo, words_hi, first_lo, first_hi, second_lo, second_hi, zs,
                               x0[0], x0[1], x1[0], x1[1]],
            dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    return acc0, acc1, st_lo, st_hi


@triton.jit
def _reg_mma(x_ptr, mask_ptr, v_ptr, co_ptr, s_ptr, z_ptr, y_ptr, lut_ptr, B, N, K, MB, NC, NW, stride_xb,
             stride_mask, stride_g, stride_yb, ws_ptr, ticket_ptr, GROUP: tl.constexpr, SLACK: tl.constexpr,
             USE_ASM: tl.constexpr, N_TILES: tl.constexpr, BLOCK_N: tl.constexpr):
    """REG_MMA (see above). BLOCK_N = 32 × num_warps: one thread per row of the operands."""
    BF16_X: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    UNITS: tl.constexpr = 32  # codes per 16 bytes
    q, row, rows, lanes, x_rows = reg_threads(x_ptr, B, N, stride_xb, BLOCK_N)
    r00, r01, r10, r11 = rows
    first, last = k_tile_range(K, 128)
    s00 = reg_start(co_ptr, mask_ptr, r00, first, NC, MB, stride_mask, UNITS)  # code index of each row
    s01 = reg_start(co_ptr, mask_ptr, r01, first, NC, MB, stride_mask, UNITS)
    s10 = reg_start(co_ptr, mask_ptr, r10, first, NC, MB, stride_mask, UNITS)
    s11 = reg_start(co_ptr, mask_ptr, r11, first, NC, MB, stride_mask, UNITS)
    z00 = z_ptr + r00.to(tl.int64)[:, None] * stride_g  # row pointers, zero points (scales alike)
    z01 = z_ptr + r01.to(tl.int64)[:, None] * stride_g
    z10 = z_ptr + r10.to(tl.int64)[:, None] * stride_g
    z11 = z_ptr + r11.to(tl.int64)[:, None] * stride_g
    sc00 = s_ptr + r00.to(tl.int64)[:, None] * stride_g
    sc01 = s_ptr + r01.to(tl.int64)[:, None] * stride_g
    sc10 = s_ptr + r10.to(tl.int64)[:, None] * stride_g
    sc11 = s_ptr + r11.to(tl.int64)[:, None] * stride_g
    v32_ptr = v_ptr.to(tl.pointer_type(tl.int32))
    acc00 = tl.zeros((BLOCK_N, 4), tl.float32)  # acc{mt}{nt}
    acc01 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc10 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc11 = tl.zeros((BLOCK_N, 4), tl.float32)
    if GROUP == 0:  # one group per row: zero points and scales set once
        zg00 = _reg_groups(z00, sc00, 0, GROUP, BF16_X)
        zg01 = _reg_groups(z01, sc01, 0, GROUP, BF16_X)
        zg10 = _reg_groups(z10, sc10, 0, GROUP, BF16_X)
        zg11 = _reg_groups(z11, sc11, 0, GROUP, BF16_X)
    for kt in range(first, last):
        w00 = reg_mask_words(mask_ptr, r00, kt, stride_mask)
        w01 = reg_mask_words(mask_ptr, r01, kt, stride_mask)
        w10 = reg_mask_words(mask_ptr, r10, kt, stride_mask)
        w11 = reg_mask_words(mask_ptr, r11, kt, stride_mask)
        if GROUP > 0:
            zg00 = _reg_groups(z00, sc00, kt, GROUP, BF16_X)
            zg01 = _reg_groups(z01, sc01, kt, GROUP, BF16_X)
            zg10 = _reg_groups(z10, sc10, kt, GROUP, BF16_X)
            zg11 = _reg_groups(z11, sc11, kt, GROUP, BF16_X)
        for half in tl.static_range(2):
            x0 = reg_x(x_rows[0], kt, half)
            x1 = x0
            if N_TILES == 2:
                x1 = reg_x(x_rows[1], kt, half)
            acc00, acc01, s00, s01 = _reg_tile(acc00, acc01, x0, x1, w00, w01, half, s00, s01, zg00[half], zg01[half],
                                               v32_ptr, lut_ptr, lanes, NW, SLACK, USE_ASM, N_TILES, BF16_X)
            acc10, acc11, s10, s11 = _reg_tile(acc10, acc11, x0, x1, w10, w11, half, s10, s11, zg10[half], zg11[half],
                                               v32_ptr, lut_ptr, lanes, NW, SLACK, USE_ASM, N_TILES, BF16_X)
        s00 = next_start(s00, 0, kt + 1, UNITS, 128)  # a chunk's end: the next starts on 16 bytes
        s01 = next_start(s01, 0, kt + 1, UNITS, 128)
        s10 = next_start(s10, 0, kt + 1, UNITS, 128)
        s11 = next_start(s11, 0, kt + 1, UNITS, 128)
    reg_store(acc00, acc01, acc10, acc11, row, q, y_ptr, ws_ptr, ticket_ptr, B, N, stride_yb, N_TILES, BLOCK_N)


@triton.jit
def _bitmask_quant_matmul_kernel(
    x_ptr, mask_ptr, v_ptr, co_ptr, s_ptr, z_ptr, y_ptr, lut_ptr,
    B, N, K, MB, NC, NW,  # MB: mask bytes per row; NC: chunks per row; NW: 32-bit words of the code stream
    stride_xb, stride_mask, stride_g, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    batch_bucket,  # autotune key only
    BITS: tl.constexpr,  # 4 or 8
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    BYTE_LUT: tl.constexpr,  # int4, tiles inside one group: mask bytes → columns on the tensor cores
    SLACK: tl.constexpr,  # BYTE_LUT: the stream's storage holds STREAM_SLACK more bytes: loads need no clamp
    USE_ASM: tl.constexpr,  # False under the interpreter
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    REG_MMA: tl.constexpr = False,  # batch ≤ BLOCK_M (8 or 16), int4, K % 128 == 0: see above
):
    if REG_MMA:
        _reg_mma(x_ptr, mask_ptr, v_ptr, co_ptr, s_ptr, z_ptr, y_ptr, lut_ptr, B, N, K, MB, NC, NW, stride_xb,
                 stride_mask, stride_g, stride_yb, ws_ptr, ticket_ptr, GROUP, SLACK, USE_ASM, BLOCK_M // 8, BLOCK_N)
        return
    W: tl.constexpr = BLOCK_K // 32
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    mask_rows = mask_ptr + rows[:, None] * stride_mask  # (BLOCK_N, 1)
    first, last = k_tile_range(K, BLOCK_K)
    UNITS: tl.constexpr = 128 // BITS  # codes per 16 bytes
    start = values_before(co_ptr, mask_rows, offs_n, n_mask, first, NC, MB, UNITS, BLOCK_K)  # (BLOCK_N,) code index
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, W, 32), dtype=tl.float32)  # B = 1: per weight, reduced after the loop
    if BYTE_LUT:
        v32_ptr = v_ptr.to(tl.pointer_type(tl.uint32))
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # yᵀ: the weight tile is the dots' A operand
        whole = tl.maximum(first, tl.minimum(last, K // BLOCK_K))  # tiles inside K, then the one across its end
        for t in range(first, whole):
            acc_t, start = _lut_step(acc_t, x_ptr, v32_ptr, lut_ptr, s_ptr, z_ptr, mask_rows, rows, n_mask, offs_m,
                                     t, start, B, K, MB, NW, stride_xb, stride_g, BITS, GROUP, False, SLACK, USE_ASM,
                                     DOT_F32, BLOCK_K)
        for t in range(whole, last):
            acc_t, start = _lut_step(acc_t, x_ptr, v32_ptr, lut_ptr, s_ptr, z_ptr, mask_rows, rows, n_mask, offs_m,
                                     t, start, B, K, MB, NW, stride_xb, stride_g, BITS, GROUP, True, SLACK, USE_ASM,
                                     DOT_F32, BLOCK_K)
        acc = tl.trans(acc_t)
    else:
        for t in range(first, last):
            acc, acc2, count = _word_tile(acc, acc2, x_ptr, mask_rows, v_ptr, s_ptr, z_ptr, rows, n_mask, offs_m, t,
                                          start, B, K, MB, stride_xb, stride_g, BITS, GROUP, USE_ASM, GEMV_ROWS,
                                          DOT_F32, BLOCK_K)
            start = next_start(start, count, t + 1, UNITS, BLOCK_K)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


@triton.jit
def _lut_step(acc, x_ptr, v32_ptr, lut_ptr, s_ptr, z_ptr, mask_rows, rows, n_mask, offs_m, t, start, B, K, MB, NW,
              stride_xb, stride_g, BITS: tl.constexpr, GROUP: tl.constexpr, TAIL: tl.constexpr,
              SLACK: tl.constexpr, USE_ASM: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_K: tl.constexpr):
    """lut_tile with the tile's scale and zero (one group holds it); returns acc and the next start."""
    offs_g = rows * stride_g + (t * BLOCK_K // GROUP if GROUP > 0 else 0)
    scale = tl.load(s_ptr + offs_g, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    zero = tl.load(z_ptr + offs_g, mask=n_mask, other=0).to(tl.int32)
    acc, count = lut_tile(acc, x_ptr, v32_ptr, lut_ptr, mask_rows, n_mask, offs_m, t, start, scale, zero, B, K, MB,
                          NW, stride_xb, BITS, TAIL, SLACK, USE_ASM, DOT_F32, BLOCK_K)
    return acc, next_start(start, count, t + 1, 128 // BITS, BLOCK_K)


@triton.jit
def _word_tile(acc, acc2, x_ptr, mask_rows, v_ptr, s_ptr, z_ptr, rows, n_mask, offs_m, t, start, B, K, MB,
               stride_xb, stride_g, BITS: tl.constexpr, GROUP: tl.constexpr, USE_ASM: tl.constexpr,
               GEMV_ROWS: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_K: tl.constexpr):
    """One K tile column by column (kernels/bitmask.py's scheme): any code width and group."""
    W: tl.constexpr = BLOCK_K // 32
    PER_WORD: tl.constexpr = GROUP % 32 == 0  # scale and zero constant across a word (GROUP = 0 too)
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
    acc, acc2 = accumulate_words(acc, acc2, w, x_ptr, offs_m, t, B, K, stride_xb, GEMV_ROWS, DOT_F32)
    return acc, acc2, count


KEY = ["N", "K", "batch_bucket", "BITS", "GROUP", "BYTE_LUT"]
_GEMV, _TILED = tuned(_bitmask_quant_matmul_kernel, GEMV_CONFIGS, TILED_CONFIGS, INTERPRET_CONFIGS, KEY)
# BYTE_LUT: tensor cores at every batch (BLOCK_M = 16 up to 16 rows), 4 dots of K = BLOCK_K / 4, one
# per column pair of a mask byte, in tiles inside one quantization group. Batch 1-16 takes 256 rows
# per 4 warps: the x tile and the dots' synchronization, paid once per tile, are shared by 16 mask
# bytes per thread (sm_90, clamped: 38.5 instructions per int4 mask byte; 64 rows, 128 columns: 43).
# int4: BLOCK_K = 64 at batch 1-16; at large batches 128 where a group holds it (BLOCK_K = 64 costs
# 26-29 instructions per byte there, against 22-23).
LUT_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=256, BLOCK_K=64),
    _cfg(8, 1, BLOCK_M=16, BLOCK_N=512, BLOCK_K=64),
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128),
]
# int4, groups of 64 (the pipeline's default): BLOCK_K = 64 at every batch.
LUT64_CONFIGS = LUT_CONFIGS[:2] + [
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
]
# int8, g a multiple of 128 or one group per row: each thread's 16 mask bytes of a row load as one
# 16-byte vector (BLOCK_K = 128).
LUT8_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=256, BLOCK_K=128),
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128),
]
# int8, groups of 64: a row's 8 mask bytes of a tile load as one 8-byte vector.
LUT8_64_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=256, BLOCK_K=64),
    _cfg(4, 2, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    _cfg(8, 2, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
]
_LUT_INTERPRET = ([_cfg(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64)],) * 2
_LUT = tuned(_bitmask_quant_matmul_kernel, LUT_CONFIGS, LUT_CONFIGS, _LUT_INTERPRET, KEY)[1]
_LUT64 = tuned(_bitmask_quant_matmul_kernel, LUT64_CONFIGS, LUT64_CONFIGS, _LUT_INTERPRET, KEY)[1]
_LUT8 = tuned(_bitmask_quant_matmul_kernel, LUT8_CONFIGS, LUT8_CONFIGS,
              ([_cfg(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128)],) * 2, KEY)[1]
_LUT8_64 = tuned(_bitmask_quant_matmul_kernel, LUT8_64_CONFIGS, LUT8_64_CONFIGS, _LUT_INTERPRET, KEY)[1]


def lut_kernel(bits: int, groups: int, g: int, dtype: torch.dtype):
    """The BYTE_LUT entry point for these codes and groups, or None (the column-by-column path):
    a tile must lie in one group, and int8 codes need fp16 x (bf16's 8 significant bits cannot hold
    128 + a code for the exponent trick)."""
    if bits == 8 and dtype != torch.float16:
        return None
    wide, narrow = (_LUT, _LUT64) if bits == 4 else (_LUT8, _LUT8_64)
    return wide if groups == 1 or g % 128 == 0 else narrow if g % 64 == 0 else None


def quant_matmul(fmt: str, bits: int, x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor,
                 chunk_offsets: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                 out: torch.Tensor | None) -> torch.Tensor:
    """The launcher of both quantized bitmask formats (bits = 4 or 8)."""
    batch, k, rows = check_bitmask(fmt, x, mask, chunk_offsets, values)
    g, groups = check_group(fmt, group_size, k)
    check_tensor(fmt, "values", values, torch.uint8, tuple(values.shape), x, "(bytes,) of codes")
    check_tensor(fmt, "scales", scales, torch.float16, (rows, groups), x, "(N, ceil(K/g))")
    check_tensor(fmt, "zeros", zeros, torch.uint8, (rows, groups), x, "(N, ceil(K/g))")
    if values.numel() % 16:
        raise ValueError(f"{fmt}: values holds {values.numel()} bytes, not whole 16-byte chunks "
                         "(format version 2 pads every chunk to 16 bytes)")
    out = make_out(fmt, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0 or values.numel() == 0:  # nothing kept
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    lut = lut_kernel(bits, groups, g, x.dtype)
    if lut is not None:  # the code stream is read as aligned words / 16-byte vectors
        values = aligned(values, 16)
    selectors = table(byte_table if bits == 4 else code8_table, x.device)
    if bits == 4 and reg_fits(batch, k) and (groups == 1 or g % 64 == 0):
        x, mask = reg_inputs(x, mask)
        if g == 64 and groups > 1:  # an iteration's two groups load as one halfword of zeros, one word of scales
            zeros, scales = aligned(zeros, 2, rows=True), aligned(scales, 4, rows=True)
        reg_launch(_bitmask_quant_matmul_kernel, x, rows,
                   (x, mask, values, chunk_offsets, scales, zeros, out, selectors, batch, rows, k, mask.shape[1],
                    chunk_offsets.shape[1], values.numel() // 4, x.stride(0), mask.stride(0), scales.stride(0),
                    out.stride(0)),
                   BITS=4, GROUP=0 if groups == 1 else g, BYTE_LUT=True, SLACK=_common.has_slack(values),
                   USE_ASM=not INTERPRET)
        return out
    gemv, tiled = (lut, lut) if lut is not None else (_GEMV, _TILED)
    _sparse.launch(gemv, tiled, x, rows,
                   (x, mask, values, chunk_offsets, scales, zeros, out, selectors, batch, rows, k, mask.shape[1],
                    chunk_offsets.shape[1], values.numel() // 4, x.stride(0), mask.stride(0), scales.stride(0),
                    out.stride(0)),
                   gemv_max=0 if lut is not None else _sparse.GEMV_MAX_BATCH,
                   BITS=bits, GROUP=0 if groups == 1 else g, BYTE_LUT=lut is not None,
                   SLACK=lut is not None and _common.has_slack(values), USE_ASM=not _common.INTERPRET)
    return out


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor,
           scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask-int4`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return quant_matmul(FORMAT, 4, x, mask, values, chunk_offsets, scales, zeros, group_size, out)


def codes(values: torch.Tensor, bits: int) -> torch.Tensor:
    """The code stream (int64) of a values tensor: nibbles low first for int4."""
    v = values.long()
    return torch.stack([v & 0xF, v >> 4], dim=-1).reshape(-1) if bits == 4 else v


def dequantize_codes(mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor, scales: torch.Tensor,
                     zeros: torch.Tensor, group_size: int, k: int, bits: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops, for either code width."""
    kept, slot = kept_and_slots(mask, chunk_offsets, k, 128 // bits)
    stream = codes(values, bits)
    q = stream[slot.clamp(max=max(stream.numel() - 1, 0))] if stream.numel() else torch.zeros_like(slot)
    group = torch.arange(k, device=mask.device) // (k if group_size == -1 else group_size)
    w = (q.float() - zeros.float()[:, group]) * scales.float()[:, group]
    return torch.where(kept, w, 0.0)


def dequantize(mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor, *, group_size: int, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    return dequantize_codes(mask, values, chunk_offsets, scales, zeros, group_size, k, 4)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, chunk_offsets: torch.Tensor,
              scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Torch: dequantize, fp32 matmul, cast to x's dtype."""
    w = dequantize(mask, values, chunk_offsets, scales, zeros, group_size=group_size, k=x.shape[1])
    return (x.float() @ w.T).to(x.dtype)


def static_spec(bits: int, group: int):
    """bitmask-int<bits> at 50% sparsity, groups of `group` (128: the benchmark's, 64: the pipeline's
    default): the mask and half the weights' codes, on the BYTE_LUT tensor-core path at every batch.
    Per mask byte (8 columns, 2 (int4) or 4 (int8) code bytes on average) it reads two overlapping
    32-bit code words (int4) or two 16-byte vectors (int8): the rereads hit L1, so instructions per
    byte count the bytes streamed. SLACK: a packed model's streams have it
    (tasks/serving/packed_model.py); a bare one clamps each address."""
    if bits == 4:  # REG_MMA at batch 1-16 (fp16 x; bf16 takes the BYTE_LUT tiles), BYTE_LUT above
        configs = [reg_config(1), reg_config(16)] + (LUT_CONFIGS if group % 128 == 0 else LUT64_CONFIGS)[2:]
    else:
        configs = LUT8_CONFIGS if group % 128 == 0 else LUT8_64_CONFIGS
    spec = _sparse.static_spec(
        f"bitmask-int{bits} 50% g{group}", _bitmask_quant_matmul_kernel,
        dict(x="fp16", mask="u8", v="u8", co="i32", s="fp16", z="u8", y="fp16", lut="i32"), ("mask", "v"),
        dict(BITS=bits, GROUP=group, BYTE_LUT=True, SLACK=True, USE_ASM=True, REG_MMA=False), [], configs,
        1 / 8 + 0.5 * bits / 8, ptx_bytes_per_weight=(1 + (8 if bits == 4 else 32)) / 8)
    if bits == 4:  # REG_MMA: a quad's four threads each load the rows' 16 mask bytes, three code words per two bytes
        spec = with_reg_ptx_bytes(spec, 10 / 8)
    return spec


STATIC = (static_spec(4, 128), static_spec(4, 64))
