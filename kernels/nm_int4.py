"""`nm-int4` N:M sparse + int4 weights (docs/formats.md): y = x @ Ŵᵀ.

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

2:4 (the production case) reads one code byte per 4-column group (its two kept values) and one
index nibble (p0 < p1), by 128-bit loads, in one of three paths (all split over K into whole
waves, ≥ 264 CTAs):
- batch 1, fp16 x, g % 64 == 0 or one group per row (the GEMV, CUDA cores): x gathered by the kept
  indices, as kernels/nm.py does at batch 1, two rows per thread so that each step serves both
  (NM24_GEMV_PTX, lane 0 = one row, lane 1 = the other). Per group: one PRMT pairs the rows' code
  bytes, LOP3 and the 0x6400 trick make 1024 + q, HSUB2 / HFMA2 give q − zero exactly, one PRMT per
  slot gathers half2(x[p] of each row) from the group's x0|x1, x2|x3 with a byte selector looked up
  by PRMT (four index nibbles at a time), one HFMA2 per slot accumulates. The sums run in fp16 over
  64 columns (|Σ x·(q − zero)| must stay below 65504), then the scale multiplies them in fp32.
- batch 2-16, fp16 x, K % 128 == 0, g = 64, a multiple of 128 or one group per row (SPARSE_MMA):
  the sparse tensor cores, mma.sp.sync.m16n8k32 in one warp-wide inline asm per 128 columns; the
  stored index nibbles are its metadata, so nothing is expanded to dense columns (see the comment
  above sp_ptx). The interpreter runs that asm on kernels/ptx_model.py.
- otherwise (BLOCK_M = 16 tensor-core tiles, as kernels/int4.py): codes → fp16 (code − zero) by
  the 0x6400 trick, the scale once per group on the fp32 partial sums. The kept values are not
  scattered into one interleaved dense tile: column c of every group is its own (BLOCK_N,
  BLOCK_K/4) tile, slot 0 where p0 = c, slot 1 where p1 = c, else 0 (slot 0 sits in 0..2, slot 1 in
  1..3), and it meets x[:, c::4]: four dots of K = BLOCK_K/4, x split by column instead of the
  weights moved. Up to batch 16 the dots compute yᵀ with the column tiles as the A operand, which
  Hopper's wgmma takes from registers (at BLOCK_M = 64 the large batch keeps y = x·Ŵᵀ).
Other n:m (1:4, 4:8, …) and groups BLOCK_K does not divide take a generic path: scatter to a
dense tile in registers, per-element dequantization. Same n:m limits as kernels/nm.py.

Measured (kernels.static_report, sm_90, Triton 3.9), batch 1-16 path, main-loop instructions per
packed byte, 128-bit packed loads, ≥ 344 CTAs at batch 1:
    batch 1 (GEMV)          g=128 5.24   g=64 5.57   one group per row 4.93   (before: 13.7 / 12.5 / 13.1)
    batch 2-8 (mma.sp)      g=128 4.27   g=64 4.67   one group per row 3.31
    batch 9-16 (mma.sp)     g=128 5.23   g=64 5.96   one group per row 3.98
                            (mma.sp capped at 128 registers, 4 CTAs per SM; 130-142 let 3)
                            (the column tiles before it: 9.8 / 9.6 / 9.3, 64-bit index loads at g=64)
GEMV, g=128 (96 packed bytes per thread per iteration, 503 instructions): 3.7 per byte in the
per-group work above (5.5 instructions per group and row), 0.75 in the selector lookups, 0.3
loads, 0.5 scale, addressing and loop. mma.sp, g=128, batch 2-8 uncapped (48 packed bytes per
thread per iteration, 213 instructions): 96 to dequantize 32 a-registers (2 per byte), 8
metadata PRMTs, 8 mma.sp, 8 FFMAs for the scale, 36 loads (12 packed, 16 x, 8 zero points and scales), 57 for
addresses, the zs operands and the loop. The column tiles spent ≈ 9 instructions per group on its
four dense fp16 columns alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import int4, nm, ptx_model
from kernels._common import (BATCH_1_16, INTERPRET, LARGE_BATCH, CompileSpec, aligned, block_offsets, check_group,
                             check_tensor, check_x, cols4, dot_t, dot_w, int4_minus_zero, k_tile_range, make_out,
                             max_registers, mma_fragments, nm_scatter, scale_columns, split_for, store_split,
                             store_split_at, unpack, workspace)

FORMAT = "nm-int4"


# Per 4 groups (pack=4): code bytes $8 (slot 0 in the low nibble, slot 1 in the high), their two
# index bytes as one halfword w (the quad's, in each of the four: $9 = w | w << 16), zc = bytes
# [0x64, z, 0x64, z] ($11) and the fp16 pair 1024 + z ($15). A group's index nibble n = p0 | p1 << 2
# names its pattern by key = (n ^ n >> 1) & 7 (distinct for the 6 patterns and the zero padding),
# so ks = (w ^ w >> 1) & 0x7777 holds the four keys, one per nibble. Per column c, one PRMT looks
# up in table c the byte selectors of the four groups' values (0 / 1: slot 0 / 1, 5: z) under 0x64,
# one OR moves the second group of each pair onto its own bytes (+2); per pair of groups, one PRMT
# builds the fp16 pair (1024 + value) for both from their code bytes [q0, q1, q0, q1] and zc (the
# second pair's selectors shifted down: PRMT reads bits 15:0), and one HSUB2 takes away 1024 + z:
# a pruned column reads z and becomes exactly 0. The eight table words
# (NM24_TABLES) come in as registers (loop-invariant, so they are set once, not per call).
# Outputs: column c of groups (e0, e1) in ${2c}, (e2, e3) in ${2c+1}. nm-int8 runs the same steps
# on its code bytes as they load (kernels/nm_int8.py).
def nm24_ptx(index: int, zc: int, lo_zero: int, table: int, codes: tuple[str, str], setup: str = "") -> str:
    """The PTX above: operands $index (the quad's index halfword, twice), $zc, $lo_zero, table t at
    $table + 4t; codes: the registers holding (e0, e1)'s and (e2, e3)'s code bytes once `setup` ran."""
    return ("{ .reg .b32 t, lo, hi, lh0, lh1, ks, s;" + setup
            + f" shr.b32 t, ${index}, 1; xor.b32 t, t, ${index}; and.b32 ks, t, 0x7777;"
            + "".join(f" prmt.b32 s, ${table + 8 * c}, ${table + 8 * c + 4}, ks; or.b32 s, s, 0x22002200;"
                      f" prmt.b32 ${2 * c}, {codes[0]}, ${zc}, s; sub.f16x2 ${2 * c}, ${2 * c}, ${lo_zero};"
                      f" shr.b32 s, s, 16;"
                      f" prmt.b32 ${2 * c + 1}, {codes[1]}, ${zc}, s; sub.f16x2 ${2 * c + 1}, ${2 * c + 1}, ${lo_zero};"
                      for c in range(4))
            + " }")


NM24_PTX = tl.constexpr(nm24_ptx(9, 11, 15, 19, ("lh0", "lh1"),
                                 setup=" and.b32 lo, $8, 0x0f0f0f0f; shr.b32 hi, $8, 4; and.b32 hi, hi, 0x0f0f0f0f;"
                                       " prmt.b32 lh0, lo, hi, 0x5140; prmt.b32 lh1, lo, hi, 0x7362;"))


def nm24_table_words() -> tuple[int, ...]:
    """Table c (words 2c, 2c + 1: keys 0-3, 4-7), key of pattern (p0, p1) → byte 0x40 | s: s = 0
    where slot 0 sits in column c, 1 where slot 1 does, 5 (z) elsewhere, in the padding (key 0)
    and for the unused key 7."""
    entries = [[0x45] * 8 for _ in range(4)]
    for p0 in range(4):
        for p1 in range(p0 + 1, 4):
            n = p0 | p1 << 2
            for c in range(4):
                entries[c][(n ^ n >> 1) & 7] = 0x40 | (0 if c == p0 else 1 if c == p1 else 5)
    return tuple(int.from_bytes(bytes(e[4 * h:4 * h + 4]), "little") for e in entries for h in range(2))


NM24_TABLES = tl.constexpr(nm24_table_words())


@triton.jit
def nm24_tables(opaque):
    """NM24_TABLES, (1, 1) int32 each. + opaque (an int32 0 ptxas cannot see through): the words
    stay in registers across the loop instead of being re-materialized from uniform registers at
    every use (≈ 1.3 instructions per byte)."""
    return (tl.full((1, 1), NM24_TABLES[0], tl.int32) + opaque, tl.full((1, 1), NM24_TABLES[1], tl.int32) + opaque,
            tl.full((1, 1), NM24_TABLES[2], tl.int32) + opaque, tl.full((1, 1), NM24_TABLES[3], tl.int32) + opaque,
            tl.full((1, 1), NM24_TABLES[4], tl.int32) + opaque, tl.full((1, 1), NM24_TABLES[5], tl.int32) + opaque,
            tl.full((1, 1), NM24_TABLES[6], tl.int32) + opaque, tl.full((1, 1), NM24_TABLES[7], tl.int32) + opaque)


def nm24_constraints(code_regs: int) -> str:
    """inline_asm constraints of nm24_ptx at pack=4: 8 outputs; the codes in code_regs registers,
    then 42 more (index halfwords, 4 zc, 4 lo_zero, 32 table words)."""
    return ",".join(["=r"] * 8 + ["r"] * (code_regs + 42))


NM24_CONSTRAINTS = tl.constexpr(nm24_constraints(1))


@triton.jit
def nm24_asm(codes, index_bytes, zero, opaque, PTX: tl.constexpr, CONSTRAINTS: tl.constexpr):
    """nm24_ptx's four dense columns, fp16 code − zero (kept) or exactly 0 (pruned), each (R, G):
    codes (R, G) as PTX reads them, index_bytes (R, G/2): group g's positions p0 | p1 << 2 in
    nibble g % 2 of byte g // 2; zero (R, 1); opaque: an int32 0 the compiler cannot see through."""
    R: tl.constexpr = codes.shape[0]
    G: tl.constexpr = codes.shape[1]
    pair = tl.reshape(index_bytes.to(tl.int32), (R, G // 4, 2))
    lo, hi = tl.split(pair)
    quad = tl.reshape(tl.broadcast_to((lo | hi << 8)[:, :, None], (R, G // 4, 4)), (R, G)).to(tl.uint16)
    z = zero.to(tl.uint32)
    zc = (0x00640064 + z * 0x01000100).to(tl.int32, bitcast=True)  # bytes [0x64, z, 0x64, z]
    lo_zero = ((0x6400 + z) * 0x10001).to(tl.int32, bitcast=True)  # fp16 pair 1024 + z
    t = nm24_tables(opaque)
    return tl.inline_asm_elementwise(
        PTX, CONSTRAINTS, [codes, quad, zc, lo_zero, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]],
        dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit
def nm24_columns(code_bytes, index_bytes, zero, opaque, USE_ASM: tl.constexpr):
    """2:4 int4 tile → its four dense columns (nm24_asm); code_bytes (R, G) uint8: one group's two
    codes per byte, slot 0 in the low nibble."""
    if USE_ASM:
        cols = nm24_asm(code_bytes, index_bytes, zero, opaque, NM24_PTX, NM24_CONSTRAINTS)
    else:
        slot0, slot1 = int4_minus_zero(code_bytes, zero, USE_ASM)
        cols = nm.place24(slot0, slot1, index_bytes)
    return cols


# The GEMV's step: one call takes 8 group pairs (16 groups, 64 columns) of two rows a, b (pack=8).
# Inputs: code halfwords of rows a ($8-$11) and b ($12-$15), index bytes ($16 $17, $18 $19), the
# x words of each pair: x0|x1 and x2|x3 of its even group ($20+j, $28+j) and odd group ($36+j,
# $44+j); zl = 1024 + z and zh = −(64 + z) as fp16 lanes (row a, row b) ($52, $60); $68 the table
# T = 0x76543210, whose byte p is T(p) = 0x10 + 0x22·p: the PRMT selector of x[p] among x0|x1, x2|x3.
# Per index word (8 groups) and row, PRMT looks up T for four p0 (and four p1) nibbles at once.
# Per group, both rows (lane 0 = a, lane 1 = b): two PRMTs pair the rows' selectors, one pairs
# their code bytes; LOP3 puts the low (high) nibbles under 0x6400: 1024 + q0 (1024 + 16·q1);
# HSUB2 / HFMA2 make q0 − z, q1 − z exactly; two PRMTs gather (x[p0] of a, x[p0] of b), (x[p1] …);
# two HFMA2 accumulate. $0 = the half2 sums (row a, row b) of the 16 groups; $1-$7 unused zeros.
# tests/test_kernels.py runs this on a model of the instructions.
def _gemv_ptx() -> str:
    lines = ["{ .reg .b32 c, k, s, t, l, h, x, acc, Aa0, Aa1, Ab0, Ab1, Ba0, Ba1, Bb0, Bb1;",
             " mov.b32 c, 0x2c002c00; mov.b32 acc, 0;"]  # c: fp16 pair (1/16, 1/16)
    for i in range(2):  # index word i: groups 8i … 8i + 7
        for row, word in (("a", 16 + i), ("b", 18 + i)):
            lines.append(
                f" and.b32 k, ${word}, 0x33333333; prmt.b32 A{row}0, $68, $68, k; shr.b32 k, k, 16;"
                f" prmt.b32 A{row}1, $68, $68, k; shr.b32 k, ${word}, 2; and.b32 k, k, 0x33333333;"
                f" prmt.b32 B{row}0, $68, $68, k; shr.b32 k, k, 16; prmt.b32 B{row}1, $68, $68, k;")
        for g in range(8 * i, 8 * i + 8):
            half, byte = g % 8 // 4, g % 4
            pick = byte | (4 + byte) << 4
            x01, x23 = (20, 28) if g % 2 == 0 else (36, 44)
            lines.append(
                f" prmt.b32 t, ${8 + g // 4}, ${12 + g // 4}, {byte | (4 + byte) << 8:#x};"
                " lop3.b32 l, t, 0x000f000f, 0x64006400, 0xea; lop3.b32 h, t, 0x00f000f0, 0x64006400, 0xea;"
                " sub.f16x2 l, l, $52; fma.rn.f16x2 h, h, c, $60;"
                f" prmt.b32 s, Aa{half}, Ab{half}, {pick:#x}; prmt.b32 x, ${x01 + g // 2}, ${x23 + g // 2}, s;"
                " fma.rn.f16x2 acc, x, l, acc;"
                f" prmt.b32 s, Ba{half}, Bb{half}, {pick:#x}; prmt.b32 x, ${x01 + g // 2}, ${x23 + g // 2}, s;"
                " fma.rn.f16x2 acc, x, h, acc;")
    lines.append(" mov.b32 $0, acc;" + "".join(f" mov.b32 ${i}, 0;" for i in range(1, 8)) + " }")
    return "".join(lines)


NM24_GEMV_PTX = tl.constexpr(_gemv_ptx())
GEMV_PACK = tl.constexpr(8)  # group pairs per call of NM24_GEMV_PTX: 64 columns, inside one scale group (g % 64 == 0)


@triton.jit
def _x_half(words, HIGH: tl.constexpr):
    """fp16 x value in the low (HIGH=False) or high half of uint32 words, as fp32."""
    bits = (words >> 16) if HIGH else (words & 0xFFFF)
    return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _kept_products(byte, nibble, x01, x23, zero):
    """NM24_GEMV_PTX's math for one 2:4 group per element, in fp32: x[p0]·(q0 − z) + x[p1]·(q1 − z)."""
    xs = (_x_half(x01, False), _x_half(x01, True), _x_half(x23, False), _x_half(x23, True))
    p0 = nibble & 3
    p1 = nibble >> 2
    x_p0 = tl.where(p0 == 0, xs[0], tl.where(p0 == 1, xs[1], xs[2]))  # p0 ≤ 2 (0 in the zero padding)
    x_p1 = tl.where(p1 == 3, xs[3], tl.where(p1 == 2, xs[2], tl.where(p1 == 1, xs[1], xs[0])))
    return x_p0 * ((byte & 15) - zero).to(tl.float32) + x_p1 * ((byte >> 4) - zero).to(tl.float32)


@triton.jit
def _lead(t):
    """(R, S, 8) → (R, S): element 0 of the last dimension (in-thread splits, no instructions)."""
    R: tl.constexpr = t.shape[0]
    S: tl.constexpr = t.shape[1]
    t, _ = tl.split(tl.reshape(t, (R, S, 4, 2)))
    t, _ = tl.split(tl.reshape(t, (R, S, 2, 2)))
    t, _ = tl.split(tl.reshape(t, (R, S, 1, 2)))
    return tl.reshape(t, (R, S))


@triton.jit
def kept_pairs(codes_a, codes_b, idx_a, idx_b, xw, zero_a, zero_b, opaque, USE_ASM: tl.constexpr):
    """Σ x[col]·(q − z) of two rows a, b over 64-column runs: codes (R, GP) uint16 (a group pair's
    code bytes), idx (R, GP) uint8 (its index byte), xw (GP, 4) uint32 (its 8 x values), zero
    (R, S) or (R, 1) → (R, S) fp32 per row, S = GP / 8 runs. The PTX sums each run in fp16 (the
    interpreter in fp32). opaque: an int32 0 the compiler cannot see through."""
    R: tl.constexpr = codes_a.shape[0]
    GP: tl.constexpr = codes_a.shape[1]
    S: tl.constexpr = GP // GEMV_PACK
    x02, x13 = tl.split(tl.reshape(xw, (GP, 2, 2)))  # words 0, 2 / 1, 3 of a pair
    x01e, x01o = tl.split(x02)
    x23e, x23o = tl.split(x13)
    if USE_ASM:
        za = zero_a.to(tl.uint32)
        zb = zero_b.to(tl.uint32)
        zl = ((0x6400 + za) | ((0x6400 + zb) << 16)).to(tl.int32, bitcast=True)  # 1024 + z
        zh = ((0xD400 + 16 * za) | ((0xD400 + 16 * zb) << 16)).to(tl.int32, bitcast=True)  # −(64 + z)
        # T + opaque: kept in a register across the loop, not re-materialized from a uniform
        # register at each of its 8 uses per call (0.3 instructions per byte).
        table = tl.full((1, 1), 0x76543210, tl.int32) + opaque
        zl = tl.reshape(tl.broadcast_to(zl[:, :, None], (R, S, GEMV_PACK)), (R, GP))
        zh = tl.reshape(tl.broadcast_to(zh[:, :, None], (R, S, GEMV_PACK)), (R, GP))
        sums = tl.inline_asm_elementwise(
            NM24_GEMV_PTX, "=r" * 1 + ",=r" * 7 + ",r" * 68,
            [codes_a, codes_b, idx_a, idx_b, x01e[None, :], x23e[None, :], x01o[None, :], x23o[None, :], zl, zh,
             table],
            dtype=tl.int32, is_pure=True, pack=GEMV_PACK)
        run = _lead(tl.reshape(sums, (R, S, GEMV_PACK)))  # (R, S): half2 (row a, row b)
        part_a = _x_half(run.to(tl.uint32, bitcast=True), False)
        part_b = _x_half(run.to(tl.uint32, bitcast=True), True)
    else:
        ca = codes_a.to(tl.int32)
        cb = codes_b.to(tl.int32)
        ia = idx_a.to(tl.int32)
        ib = idx_b.to(tl.int32)
        za = tl.reshape(tl.broadcast_to(zero_a.to(tl.int32)[:, :, None], (R, S, GEMV_PACK)), (R, GP))
        zb = tl.reshape(tl.broadcast_to(zero_b.to(tl.int32)[:, :, None], (R, S, GEMV_PACK)), (R, GP))
        e01 = x01e[None, :]
        e23 = x23e[None, :]
        o01 = x01o[None, :]
        o23 = x23o[None, :]
        va = _kept_products(ca & 255, ia & 15, e01, e23, za) + _kept_products(ca >> 8, ia >> 4, o01, o23, za)
        vb = _kept_products(cb & 255, ib & 15, e01, e23, zb) + _kept_products(cb >> 8, ib >> 4, o01, o23, zb)
        part_a = tl.sum(tl.reshape(va, (R, S, GEMV_PACK)), axis=2)
        part_b = tl.sum(tl.reshape(vb, (R, S, GEMV_PACK)), axis=2)
    return part_a, part_b


@triton.jit
def _run_params(z_ptr, s_ptr, rows, mask, k0, K, stride_g, GROUP: tl.constexpr, NZ: tl.constexpr):
    """Zero points (R, NZ) uint8 and scales (R, NZ) fp32 of the tile's 64-column runs (NZ = 1: one
    group holds the tile). Loaded as (R, 1) columns and joined in-thread, in the codes' layout."""
    g_offs = rows[:, None] * stride_g + ((k0 // GROUP) if GROUP > 0 else 0)  # (R, 1)
    on = mask[:, None]  # the loop's tiles start below K
    zero = tl.load(z_ptr + g_offs, mask=on, other=0)
    scale = tl.load(s_ptr + g_offs, mask=on, other=0.0).to(tl.float32)
    if NZ == 2:  # the second run's group
        g_offs = rows[:, None] * stride_g + (k0 + 64) // GROUP
        on = mask[:, None] & (tl.full((1, 1), k0 + 64, tl.int32) < K)
        zero = tl.reshape(tl.join(zero, tl.load(z_ptr + g_offs, mask=on, other=0)), (zero.shape[0], 2))
        scale = tl.reshape(tl.join(scale, tl.load(s_ptr + g_offs, mask=on, other=0.0).to(tl.float32)),
                           (scale.shape[0], 2))
    return zero, scale


@triton.jit
def _gemv(x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr, N, K, stride_v, stride_i, stride_g, stride_yb, ws_ptr,
          ticket_ptr, GROUP: tl.constexpr, EVEN: tl.constexpr, USE_ASM: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_K: tl.constexpr):
    """Batch 1: each thread takes two rows (a = even, b = odd row of the tile) over BLOCK_K columns."""
    HALF: tl.constexpr = BLOCK_N // 2
    GP: tl.constexpr = BLOCK_K // 8  # group pairs per row: code halfwords, index bytes
    S: tl.constexpr = BLOCK_K // 64  # runs of kept_pairs
    NZ: tl.constexpr = 1 if GROUP == 0 or GROUP % BLOCK_K == 0 else S  # scale groups per tile
    tl.static_assert(S <= 2)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_a = tl.program_id(0) * BLOCK_N + 2 * tl.arange(0, HALF)
    rows_b = rows_a + 1
    mask_a = rows_a < N
    mask_b = rows_b < N
    ra = rows_a.to(tl.int64)
    rb = rows_b.to(tl.int64)
    v16 = v_ptr.to(tl.pointer_type(tl.uint16))  # stride_v is even (K % 8 == 0): halfword rows
    x32 = x_ptr.to(tl.pointer_type(tl.uint32))
    acc_a = tl.zeros((HALF, S), dtype=tl.float32)
    acc_b = tl.zeros((HALF, S), dtype=tl.float32)
    first, last = k_tile_range(K, BLOCK_K)
    for t in range(first, last):
        offs_p = t * GP + tl.arange(0, GP)  # (GP,): halfword of the codes = index byte
        offs_x = (t * BLOCK_K // 2 + 4 * tl.arange(0, GP))[:, None] + tl.arange(0, 4)[None, :]  # (GP, 4) words
        if EVEN:
            codes_a = tl.load(v16 + ra[:, None] * (stride_v // 2) + offs_p[None, :])
            codes_b = tl.load(v16 + rb[:, None] * (stride_v // 2) + offs_p[None, :])
            idx_a = tl.load(i_ptr + ra[:, None] * stride_i + offs_p[None, :])
            idx_b = tl.load(i_ptr + rb[:, None] * stride_i + offs_p[None, :])
            xw = tl.load(x32 + offs_x)
        else:  # bytes past the row read 0 (code 0 at position 0), x past K reads 0
            in_row = offs_p[None, :] < stride_i
            codes_a = tl.load(v16 + ra[:, None] * (stride_v // 2) + offs_p[None, :], mask=mask_a[:, None] & in_row,
                              other=0)
            codes_b = tl.load(v16 + rb[:, None] * (stride_v // 2) + offs_p[None, :], mask=mask_b[:, None] & in_row,
                              other=0)
            idx_a = tl.load(i_ptr + ra[:, None] * stride_i + offs_p[None, :], mask=mask_a[:, None] & in_row, other=0)
            idx_b = tl.load(i_ptr + rb[:, None] * stride_i + offs_p[None, :], mask=mask_b[:, None] & in_row, other=0)
            xw = tl.load(x32 + offs_x, mask=offs_x < K // 2, other=0)
        zero_a, scale_a = _run_params(z_ptr, s_ptr, ra, mask_a, t * BLOCK_K, K, stride_g, GROUP, NZ)  # (HALF, NZ)
        zero_b, scale_b = _run_params(z_ptr, s_ptr, rb, mask_b, t * BLOCK_K, K, stride_g, GROUP, NZ)
        part_a, part_b = kept_pairs(codes_a, codes_b, idx_a, idx_b, xw, zero_a, zero_b, N >> 31, USE_ASM)
        acc_a += part_a * scale_a
        acc_b += part_b * scale_b
    acc = tl.reshape(tl.join(tl.sum(acc_a, axis=1), tl.sum(acc_b, axis=1)), (1, BLOCK_N))  # rows a0 b0 a1 b1 …
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, tl.arange(0, 1), offs_n, 1, N, stride_yb)


# Batch 2-16 on the sparse tensor cores. Triton has no 2:4 dot, so one inline asm per iteration
# runs mma.sp.sync.m16n8k32 (ptx_model's docstring has its fragment layouts): the asm is warp-wide,
# so every operand is a (threads, 4) tensor whose row i is thread i's four registers (lane i % 32 of
# warp i // 32), which the 128-bit row loads give (kernels.static_report checks the layout). The
# format needs no change: a row's index nibbles, p0 | p1 << 2 per group, are mma.sp's metadata as
# stored, and its code bytes are the kept values in order. Warp w takes weight rows 32w … 32w + 31
# (two m16 tiles), each thread (g, t) = (lane >> 2, lane & 3) the rows g and g + 8 of each tile,
# which it loads whole (32 code bytes and 16 index bytes per row and iteration, 128 columns); of
# each k32 step it uses groups t and t + 4, its a-registers. Per a-register: one PRMT copies the
# code byte to bytes 0 and 2, one LOP3 puts q0 (low nibble) and 16·q1 under 0x6400 (1024 + q0,
# 1024 + 16·q1), one HFMA2 by (1, 1/16) minus (1024 + z, 64 + z) gives (q0 − z, q1 − z) exactly.
# Per k32 step and tile, one PRMT picks the metadata (lanes t = 0 / 1: bytes 0-1 / 2-3 of the
# step's index word of rows g and g + 8) and one mma.sp per 8 batch rows; x comes as B fragments,
# four 32-bit loads per step. The fp32 sums of a scale group are scaled by one FFMA per element.
SP_M_TILES = 2  # m16 tiles per warp
SP_K_STEPS = 4  # k32 steps per iteration: 128 columns


@triton.constexpr_function
def sp_ptx(n_tiles: int, chains: int) -> tuple[str, str]:
    """(asm, constraints) of one iteration for n_tiles × 8 batch rows; chains: scale groups per
    iteration (1: g % 128 == 0, 2: g % 64 == 0, 0: one group per row, scaled after the loop).
    Operands (4 registers each): outputs acc[mt, nt]; inputs acc[mt, nt], codes[mt, h, half] (row
    g + 8h of tile mt, bytes 16·half …), index[mt, h], x[nt, step] (B fragment), zs[mt, half] =
    (−(1024 + z), −(64 + z)) of rows g, g + 8 as fp16 pairs, then their fp32 scales, for the
    iteration's first and second 64 columns (the same unless g = 64); const = (the code byte
    selector, the metadata selector, fp16 pair (1, 1/16), unused)."""
    numbers = iter(range(10_000))
    take = lambda: [next(numbers) for _ in range(4)]  # noqa: E731
    tiles = [(mt, nt) for mt in range(SP_M_TILES) for nt in range(n_tiles)]
    out = {tile: take() for tile in tiles}
    acc = {tile: take() for tile in tiles}
    codes = {(mt, h, half): take() for mt in range(SP_M_TILES) for h in range(2) for half in range(2)}
    index = {(mt, h): take() for mt in range(SP_M_TILES) for h in range(2)}
    xs = {(nt, s): take() for nt in range(n_tiles) for s in range(SP_K_STEPS)}
    zs = {(mt, c): take() for mt in range(SP_M_TILES) for c in range(2)}
    sel, msel, one16, _ = take()
    partial = {tile: [f"p{4 * j + i}" for i in range(4)] for j, tile in enumerate(tiles)}
    lines = ["{ .reg .b32 t, e, a0, a1, a2, a3; .reg .f32 zero, " + ", ".join(r for p in partial.values() for r in p)
             + "; mov.f32 zero, 0f00000000;"]  # a chain's first mma adds zero (ptxas reads RZ)
    steps = SP_K_STEPS // max(chains, 1)
    for c in range(max(chains, 1)):
        for s in range(c * steps, (c + 1) * steps):
            for mt in range(SP_M_TILES):
                for a in range(4):  # a-register a: row g + 8·(a % 2), group t + 4·(a // 2)
                    word = codes[mt, a % 2, s // 2][2 * (s % 2) + a // 2]
                    lines.append(f" prmt.b32 t, ${word}, ${word}, ${sel}; lop3.b32 t, t, 0x00f0000f, 0x64006400, 0xea;"
                                 f" fma.rn.f16x2 a{a}, t, ${one16}, ${zs[mt, c][a % 2]};")
                lines.append(f" prmt.b32 e, ${index[mt, 0][s]}, ${index[mt, 1][s]}, ${msel};")
                for nt in range(n_tiles):
                    d = partial[mt, nt] if chains else [f"${r}" for r in out[mt, nt]]
                    if s > c * steps:
                        src = d
                    else:
                        src = ["zero"] * 4 if chains else [f"${r}" for r in acc[mt, nt]]
                    b = ", ".join(f"${r}" for r in xs[nt, s])
                    lines.append(f" {ptx_model.MMA_SP} {{{', '.join(d)}}}, {{a0, a1, a2, a3}}, {{{b}}},"
                                 f" {{{', '.join(src)}}}, e, 0x0;")
        for tile in tiles if chains else ():
            for i in range(4):
                prev = acc[tile][i] if c == 0 else out[tile][i]
                lines.append(f" fma.rn.f32 ${out[tile][i]}, {partial[tile][i]}, ${zs[tile[0], c][2 + i // 2]}, ${prev};")
    n_out = 4 * len(tiles)
    return "".join(lines) + " }", ",".join(["=r"] * n_out + ["r"] * (next(numbers) - n_out))


@triton.constexpr_function
def sp_asm(n_tiles, chains, part):
    """sp_ptx's asm (part 0) or constraints (part 1), at compile time."""
    return sp_ptx(n_tiles, chains)[part]


@triton.jit
def _row_words(row_ptr, offset, on, other, EVEN: tl.constexpr):
    """Words offset … offset + 3 from each thread's row pointer (T, 4): one 128-bit load; rows past
    N read `other`."""
    ptrs = row_ptr + offset + tl.arange(0, 4)[None, :]
    return tl.load(ptrs) if EVEN else tl.load(ptrs, mask=on, other=other)


@triton.jit
def _b_fragment(x_row, first):
    """x words first, first + 4, first + 8, first + 12 of each thread's batch row (T, 4)."""
    return cols4(tl.load(x_row + first), tl.load(x_row + first + 4), tl.load(x_row + first + 8),
                 tl.load(x_row + first + 12))


@triton.jit
def _zs(za, zb, sa, sb):
    """zs operand (T, 4) of rows a, b: (−(1024 + z), −(64 + z)) as fp16 pairs (one IMAD each: the
    halves cannot carry into each other), then the fp32 scale bits."""
    ca = (za.to(tl.uint32) * 0x100001 + 0xD400E400).to(tl.int32, bitcast=True)
    cb = (zb.to(tl.uint32) * 0x100001 + 0xD400E400).to(tl.int32, bitcast=True)
    return cols4(ca, cb, sa.to(tl.float32).to(tl.int32, bitcast=True), sb.to(tl.float32).to(tl.int32, bitcast=True))


@triton.jit
def _load_rows(ptrs, on, EVEN: tl.constexpr):
    """A load from each thread's row, 0 past N."""
    return tl.load(ptrs) if EVEN else tl.load(ptrs, mask=on, other=0)


@triton.jit
def _zero_scale(z_row_a, z_row_b, s_row_a, s_row_b, group, on_a, on_b, EVEN: tl.constexpr):
    """zs of group `group` of rows a, b (row pointers into zeros, scales)."""
    za = _load_rows(z_row_a + group, on_a, EVEN).to(tl.int32)
    zb = _load_rows(z_row_b + group, on_b, EVEN).to(tl.int32)
    return _zs(za, zb, _load_rows(s_row_a + group, on_a, EVEN), _load_rows(s_row_b + group, on_b, EVEN))


@triton.jit
def _zero_scale_pair(z_row_a, z_row_b, s_row_a, s_row_b, group, on_a, on_b, EVEN: tl.constexpr):
    """zs of groups `group` and `group` + 1 (even, and the rows' group counts even) of rows a, b:
    the two zero points in one halfword load, the two scales in one word load."""
    za = _load_rows((z_row_a + group).to(tl.pointer_type(tl.uint16)), on_a, EVEN).to(tl.int32)
    zb = _load_rows((z_row_b + group).to(tl.pointer_type(tl.uint16)), on_b, EVEN).to(tl.int32)
    sa = _load_rows((s_row_a + group).to(tl.pointer_type(tl.uint32)), on_a, EVEN)
    sb = _load_rows((s_row_b + group).to(tl.pointer_type(tl.uint32)), on_b, EVEN)
    return (_zs(za & 255, zb & 255, _x_half(sa, False), _x_half(sb, False)),
            _zs(za >> 8, zb >> 8, _x_half(sa, True), _x_half(sb, True)))


@triton.jit
def _sparse_mma(x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr, B, N, K, stride_xb, stride_v, stride_i, stride_g,
                stride_yb, ws_ptr, ticket_ptr, GROUP: tl.constexpr, EVEN: tl.constexpr, N_TILES: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Batch 2-16, 2:4, fp16 x, K % 128 == 0, g = 64, a multiple of 128 or one group per row (see above).
    BLOCK_N = 32 × num_warps: one thread per row of the operands."""
    CHAINS: tl.constexpr = 0 if GROUP == 0 else (1 if GROUP % 128 == 0 else 2)  # 2: g = 64
    t = tl.arange(0, BLOCK_N)[:, None]  # (T, 1): the thread
    g = t % 32 // 4
    tig = t % 4
    row = tl.program_id(0) * BLOCK_N + t // 32 * 32 + g  # rows g of the warp's first tile
    r00 = row.to(tl.int64)  # r{mt}{h}: row g + 8h of tile mt
    r01 = r00 + 8
    r10 = r00 + 16
    r11 = r00 + 24
    on00 = r00 < N
    on01 = r01 < N
    on10 = r10 < N
    on11 = r11 < N
    v_words = v_ptr.to(tl.pointer_type(tl.int32))
    i_words = i_ptr.to(tl.pointer_type(tl.int32))
    v00 = v_words + r00 * (stride_v // 4)  # row pointers: v{mt}{h}, ip{mt}{h}
    v01 = v_words + r01 * (stride_v // 4)
    v10 = v_words + r10 * (stride_v // 4)
    v11 = v_words + r11 * (stride_v // 4)
    ip00 = i_words + r00 * (stride_i // 4)
    ip01 = i_words + r01 * (stride_i // 4)
    ip10 = i_words + r10 * (stride_i // 4)
    ip11 = i_words + r11 * (stride_i // 4)
    x_words = x_ptr.to(tl.pointer_type(tl.int32))
    # B fragments: batch rows g (tile 0) and g + 8 (tile 1); rows past B read row B − 1 (finite; their
    # sums land in y rows that are not stored), so the loads need no masks.
    x_row0 = x_words + tl.minimum(g, B - 1).to(tl.int64) * (stride_xb // 2)
    x_row1 = x_words + tl.minimum(g + 8, B - 1).to(tl.int64) * (stride_xb // 2)
    none = tl.zeros((BLOCK_N, 1), tl.int32)
    const = cols4(tig * 0x1111, tl.where(tig % 2 == 1, 0x7632, 0x5410) + none, 0x2C003C00 + none, none)
    ASM: tl.constexpr = sp_asm(N_TILES, CHAINS, 0)
    CONSTRAINTS: tl.constexpr = sp_asm(N_TILES, CHAINS, 1)
    PAD: tl.constexpr = 0x44444444  # index bytes of rows past N: valid metadata (columns 0, 1)
    acc00 = tl.zeros((BLOCK_N, 4), tl.float32)  # acc{mt}{nt}
    acc10 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc01 = tl.zeros((BLOCK_N, 4), tl.float32)
    acc11 = tl.zeros((BLOCK_N, 4), tl.float32)
    z00 = z_ptr + r00 * stride_g  # row pointers: z{mt}{h}, s{mt}{h}
    z01 = z_ptr + r01 * stride_g
    z10 = z_ptr + r10 * stride_g
    z11 = z_ptr + r11 * stride_g
    s00 = s_ptr + r00 * stride_g
    s01 = s_ptr + r01 * stride_g
    s10 = s_ptr + r10 * stride_g
    s11 = s_ptr + r11 * stride_g
    if CHAINS == 0:  # one group per row: zero points set once
        zs0 = _zero_scale(z00, z01, s00, s01, 0, on00, on01, EVEN)
        zs1 = _zero_scale(z10, z11, s10, s11, 0, on10, on11, EVEN)
    first, last = k_tile_range(K, 128)
    for kt in range(first, last):
        v0 = v00 + 8 * kt  # this iteration's 32 code bytes, 16 index bytes of each row
        v1 = v01 + 8 * kt
        v2 = v10 + 8 * kt
        v3 = v11 + 8 * kt
        c000 = _row_words(v0, 0, on00, 0, EVEN)  # c{mt}{h}{half}
        c001 = _row_words(v0, 4, on00, 0, EVEN)
        c010 = _row_words(v1, 0, on01, 0, EVEN)
        c011 = _row_words(v1, 4, on01, 0, EVEN)
        c100 = _row_words(v2, 0, on10, 0, EVEN)
        c101 = _row_words(v2, 4, on10, 0, EVEN)
        c110 = _row_words(v3, 0, on11, 0, EVEN)
        c111 = _row_words(v3, 4, on11, 0, EVEN)
        i00 = _row_words(ip00, 4 * kt, on00, PAD, EVEN)
        i01 = _row_words(ip01, 4 * kt, on01, PAD, EVEN)
        i10 = _row_words(ip10, 4 * kt, on10, PAD, EVEN)
        i11 = _row_words(ip11, 4 * kt, on11, PAD, EVEN)
        x_first = 64 * kt + tig  # word of columns 2t, 2t + 1 of the first k32 step
        x00 = _b_fragment(x_row0, x_first)  # x{nt}{step}
        x01 = _b_fragment(x_row0, x_first + 16)
        x02 = _b_fragment(x_row0, x_first + 32)
        x03 = _b_fragment(x_row0, x_first + 48)
        if CHAINS == 1:
            zs0 = _zero_scale(z00, z01, s00, s01, 128 * kt // GROUP, on00, on01, EVEN)
            zs1 = _zero_scale(z10, z11, s10, s11, 128 * kt // GROUP, on10, on11, EVEN)
        if CHAINS == 2:  # g = 64: the halves' groups
            zs0, zs0b = _zero_scale_pair(z00, z01, s00, s01, 2 * kt, on00, on01, EVEN)
            zs1, zs1b = _zero_scale_pair(z10, z11, s10, s11, 2 * kt, on10, on11, EVEN)
        else:  # one group over the 128 columns: the second half's operands are the first's
            zs0b = zs0
            zs1b = zs1
        if N_TILES == 1:
            acc00, acc10 = tl.inline_asm_elementwise(
                ASM, CONSTRAINTS, [acc00, acc10, c000, c001, c010, c011, c100, c101, c110, c111, i00, i01, i10, i11,
                                   x00, x01, x02, x03, zs0, zs0b, zs1, zs1b, const],
                dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
        else:
            x10 = _b_fragment(x_row1, x_first)
            x11 = _b_fragment(x_row1, x_first + 16)
            x12 = _b_fragment(x_row1, x_first + 32)
            x13 = _b_fragment(x_row1, x_first + 48)
            acc00, acc01, acc10, acc11 = tl.inline_asm_elementwise(
                ASM, CONSTRAINTS, [acc00, acc01, acc10, acc11, c000, c001, c010, c011, c100, c101, c110, c111,
                                   i00, i01, i10, i11, x00, x01, x02, x03, x10, x11, x12, x13, zs0, zs0b, zs1, zs1b,
                                   const],
                dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=4)
    acc, b, n = mma_fragments(acc00, acc01, acc10, acc11, row, tig, N_TILES, BLOCK_N)
    if CHAINS == 0:
        acc *= tl.load(s_ptr + n.to(tl.int64) * stride_g, mask=n < N, other=0.0).to(tl.float32)
    store_split_at(y_ptr, ws_ptr, ticket_ptr, acc, b, n, B, N, stride_yb)


@triton.jit
def _nm_int4_matmul_kernel(
    x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K,
    stride_xb, stride_xk, stride_v, stride_i, stride_g, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    EVEN: tl.constexpr,  # BLOCK_N | N and BLOCK_K | K: no masks on the weights (LLM shapes)
    USE_ASM: tl.constexpr,  # False under the interpreter
    DOT_F32: tl.constexpr,
    GEMV: tl.constexpr,  # batch 1, 2:4, fp16 x, g % 64 == 0: kept values times x gathered by index
    SPARSE_MMA: tl.constexpr,  # batch 2-16, 2:4, fp16 x, g = 64 or 128·j or one group, K % 128 == 0: mma.sp
    N_TILES: tl.constexpr,  # SPARSE_MMA: 8 batch rows each
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    if SPARSE_MMA:
        _sparse_mma(x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr, B, N, K, stride_xb, stride_v, stride_i, stride_g,
                    stride_yb, ws_ptr, ticket_ptr, GROUP, EVEN, N_TILES, BLOCK_N)
        return
    if GEMV:
        _gemv(x_ptr, v_ptr, i_ptr, s_ptr, z_ptr, y_ptr, N, K, stride_v, stride_i, stride_g, stride_yb, ws_ptr,
              ticket_ptr, GROUP, EVEN, USE_ASM, BLOCK_N, BLOCK_K)
        return
    offs_m, offs_n = block_offsets(B, N, BLOCK_M, BLOCK_N)  # (BLOCK_M,), (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)
    BLOCK_KC: tl.constexpr = BLOCK_K // M * N_KEEP  # kept values per tile row
    CODE_BYTES: tl.constexpr = BLOCK_KC // 2
    INDEX_BYTES: tl.constexpr = BLOCK_KC * INDEX_BITS // 8
    # 2:4 with the tile inside one scale group: the fast path (see the header).
    FAST: tl.constexpr = N_KEEP == 2 and M == 4 and (GROUP == 0 or GROUP % BLOCK_K == 0)
    first, last = k_tile_range(K, BLOCK_K)  # this program's split: whole BLOCK_K tiles
    k_start = first * BLOCK_K
    k_end = tl.minimum(last * BLOCK_K, K)
    c_start = k_start // M * N_KEEP  # a split is whole tiles: the byte offsets are whole tiles too
    offs_vb = tl.multiple_of(c_start // 2, CODE_BYTES) + tl.arange(0, CODE_BYTES)  # (CODE_BYTES,)
    offs_ib = tl.multiple_of(c_start * INDEX_BITS // 8, INDEX_BYTES) + tl.arange(0, INDEX_BYTES)  # (INDEX_BYTES,)
    v_ptrs = v_ptr + rows[:, None] * stride_v + offs_vb[None, :]  # (BLOCK_N, CODE_BYTES)
    i_ptrs = i_ptr + rows[:, None] * stride_i + offs_ib[None, :]  # (BLOCK_N, INDEX_BYTES)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xb + (k_start + tl.arange(0, BLOCK_K))[None, :] * stride_xk
    m_mask = offs_m[:, None] < B
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        # Masks on the rows' byte counts (strides of contiguous rows): constant over 16 bytes.
        # Bytes past Kc read 0: code 0 at position 0, finite, and x is 0 there.
        if EVEN:
            code_bytes = tl.load(v_ptrs)
            index_bytes = tl.load(i_ptrs)
            x = tl.load(x_ptrs, mask=m_mask, other=0.0)
        else:
            code_bytes = tl.load(v_ptrs, mask=n_mask[:, None] & (offs_vb[None, :] < stride_v), other=0)
            index_bytes = tl.load(i_ptrs, mask=n_mask[:, None] & (offs_ib[None, :] < stride_i), other=0)
            x = tl.load(x_ptrs, mask=m_mask & (offs_k[None, :] < K), other=0.0)  # (BLOCK_M, BLOCK_K)
        if FAST:
            g_offs = rows * stride_g
            if GROUP > 0:
                g_offs += k0 // GROUP
            zero = tl.load(z_ptr + g_offs, mask=n_mask, other=0)[:, None]  # (BLOCK_N, 1)
            scale = tl.load(s_ptr + g_offs, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
            col0, col1, col2, col3 = nm24_columns(code_bytes, index_bytes, zero, B >> 31, USE_ASM)  # (BLOCK_N, BLOCK_K/4)
            x02, x13 = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 4, 2, 2)))  # column 2a + b of a group
            x0, x2 = tl.split(x02)
            x1, x3 = tl.split(x13)
            if BLOCK_M == 16:  # yᵀ: the columns are the dot's A operand (2 instr/B fewer; not on larger tiles)
                part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
                part = dot_w(col0, x0, part, DOT_F32)
                part = dot_w(col1, x1, part, DOT_F32)
                part = dot_w(col2, x2, part, DOT_F32)
                part = dot_w(col3, x3, part, DOT_F32)
                acc += tl.trans(part * scale[:, None])
            else:
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                part = dot_t(x0, col0, part, DOT_F32)
                part = dot_t(x1, col1, part, DOT_F32)
                part = dot_t(x2, col2, part, DOT_F32)
                part = dot_t(x3, col3, part, DOT_F32)
                acc += part * scale[None, :]
        else:
            codes = unpack(code_bytes, 4)  # (BLOCK_N, BLOCK_KC)
            pos = unpack(index_bytes, INDEX_BITS)  # (BLOCK_N, BLOCK_KC)
            dense = nm_scatter(codes + 1, pos, N_KEEP, M)  # (BLOCK_N, BLOCK_K), 0 = pruned
            w = scale_columns(dense - 1, s_ptr, z_ptr, rows, n_mask, offs_k[None, :], K, stride_g, GROUP)
            acc = dot_t(x, tl.where(dense > 0, w, 0.0), acc, DOT_F32)
        v_ptrs += CODE_BYTES
        i_ptrs += INDEX_BYTES
        x_ptrs += BLOCK_K * stride_xk
        offs_vb += CODE_BYTES
        offs_ib += INDEX_BYTES
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


def config(batch: int, group: int) -> triton.Config:
    """Batch 1 with g % 64 == 0 (or one group per row): the GEMV, 256 rows × 128 columns, each thread
    two rows of 32 groups (2 × 32 code bytes, 2 × 16 index bytes: 128-bit loads). Batch 2-16, g = 64,
    a multiple of 128 or one group per row: mma.sp, 128 rows × 128 columns, 4 warps, 8 or 16 batch rows. Else int4's configs
    (kernels/int4.py), BLOCK_K ≥ 64 so that the four column dots have K ≥ 16. The launcher takes
    the tile config where neither applies (bf16 x, other n:m, K % 8 ≠ 0, or K % 128 ≠ 0 for mma.sp)."""
    if batch == 1 and group % 64 == 0:
        return triton.Config(dict(BLOCK_M=1, BLOCK_N=256, BLOCK_K=128, GEMV=True, SPARSE_MMA=False, N_TILES=1),
                             num_warps=4, num_stages=1)
    if batch <= int4.SMALL_BATCH and (group % 128 == 0 or group == 64):
        return triton.Config(dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GEMV=False, SPARSE_MMA=True,
                                  N_TILES=1 if batch <= 8 else 2), num_warps=4, num_stages=1,
                             maxnreg=max_registers(4, 128))  # 4 CTAs per SM (130-142 registers let 3)
    return tile_config(batch, group)


def tile_config(batch: int, group: int) -> triton.Config:
    cfg = int4.config(batch, group)
    return triton.Config(dict(cfg.kwargs, BLOCK_K=max(64, cfg.kwargs["BLOCK_K"]), GEMV=False, SPARSE_MMA=False,
                              N_TILES=1), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


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
    group = 0 if groups == 1 else g
    cfg = config(batch, group)
    fast = x.dtype == torch.float16 and (n, m) == (2, 4) and k % (128 if cfg.kwargs["SPARSE_MMA"] else 8) == 0
    if (cfg.kwargs["GEMV"] or cfg.kwargs["SPARSE_MMA"]) and not fast:
        cfg = tile_config(batch, group)
    if cfg.kwargs["GEMV"] or cfg.kwargs["SPARSE_MMA"]:  # 32-bit x loads; halfword / 128-bit code, index loads
        words = x.stride(1) == 1 and x.data_ptr() % 4 == 0 and (batch == 1 or x.stride(0) % 2 == 0)
        x = x if words else x.clone(memory_format=torch.contiguous_format)
        values, indices = aligned(values, 16), aligned(indices, 16)
        scales, zeros = aligned(scales, 4), aligned(zeros, 2)  # g = 64: pairs of groups
    tiles = triton.cdiv(batch, cfg.kwargs["BLOCK_M"]) * triton.cdiv(rows, cfg.kwargs["BLOCK_N"])
    ws, tickets = workspace(x, rows, tiles)
    args = (x, values, indices, scales, zeros, out, batch, rows, k, x.stride(0), x.stride(1), values.stride(0),
            indices.stride(0), scales.stride(0), out.stride(0), ws, tickets)
    meta = dict(N_KEEP=n, M=m, INDEX_BITS=nm.INDEX_BITS[m], GROUP=group,
                EVEN=rows % cfg.kwargs["BLOCK_N"] == 0 and k % cfg.kwargs["BLOCK_K"] == 0,
                USE_ASM=not INTERPRET, DOT_F32=INTERPRET and x.dtype == torch.bfloat16,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg, **cfg.kwargs)
    plan = split_for(_nm_int4_matmul_kernel, tiles, k, cfg.kwargs["BLOCK_K"], x, args, meta)
    _nm_int4_matmul_kernel[(tiles, plan.splits)](*args, **meta)
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


def _static_specs() -> tuple[CompileSpec, ...]:
    """What kernels.static_report compiles: 2:4 with groups 128 (benchmark), 64 (the pipeline's)
    and one per row."""
    def packed_bytes(cfg: triton.Config) -> int:  # code + index bytes per thread per iteration
        return cfg.kwargs["BLOCK_N"] * cfg.kwargs["BLOCK_K"] * 3 // 8 // (32 * cfg.num_warps)

    def ptx_bytes(cfg: triton.Config) -> int:  # mma.sp: the four threads of a quad each load their rows whole
        return packed_bytes(cfg) * (4 if cfg.kwargs["SPARSE_MMA"] else 1)

    def ctas(cfg: triton.Config, n: int, k: int, batch: int, per_sm: int) -> int:
        tiles, splits = int4.grid(cfg, n, k, batch, per_sm)
        return tiles * splits

    def spec(label: str, group: int) -> CompileSpec:
        flags = dict(N_KEEP=2, M=4, INDEX_BITS=2, GROUP=group, EVEN=True, USE_ASM=True, DOT_F32=False,
                     stride_xk=1)
        return CompileSpec(
            name=f"{FORMAT} 2:4 {label}", kernel=_nm_int4_matmul_kernel,
            pointers=dict(x="fp16", v="u8", i="u8", s="fp16", z="u8", y="fp16", ws="fp32", ticket="i32"), packed=("v", "i"),
            constexprs=flags,
            paths={BATCH_1_16: (config(1, group), config(2, group), config(16, group)), LARGE_BATCH: (config(int4.SMALL_BATCH + 1, group),)},
            packed_bytes=packed_bytes, ptx_bytes=ptx_bytes, ctas=ctas)

    return spec("g128", 128), spec("g64", 64), spec("g-1", 0)


STATIC = _static_specs()
