"""`nm` N:M semi-structured sparse weights (docs/formats.md): y = x @ Ŵᵀ.

Format, W (N, K), n kept of every m consecutive inputs, K % m == 0, Kc = K·n/m:
    values   float16/bfloat16 (N, Kc)                 kept values, group by group
    indices  uint8 (N, ceil(Kc·b_i/8))                position (0…m−1) of each kept value inside
                                                      its group, b_i = 2 (m=4) or 4 (m=8) bits,
                                                      little-endian: value c at bits (c·b_i) mod 8
                                                      of byte (c·b_i) // 8
Math:
    col(r, c) = (c // n)·m + idx[r, c]                (original column of kept value c)
    y[b, r]   = Σ_c values[r, c] · x[b, col(r, c)]    fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16 (values' dtype), y (B, N).

Two paths in one kernel, both split over K (kernels/_common.py) so batch 1 fills the GPU:
- B ≤ 4, CUDA cores: gather x by the kept indices. A tile is (BLOCK_N rows, BLOCK_K/m groups,
  n slots); slot t of a group can only sit at t + d, 0 ≤ d ≤ m − n, so its x is picked from the
  group's x (converted to fp32 once) by a select tree on the bits of d, and only the n kept
  values are multiplied: half the multiply-adds of a dense 2:4 tile, one FFMA per kept value
  into a per-(row, group) accumulator reduced once after the loop (B = 1).
- B > 4, tensor cores, BLOCK_M = 16 rows of x (one M block up to B = 16). 2:4 and 4:8 load each
  group's values as 32-bit pairs and build its m dense columns with byte permutes in inline PTX
  (2:4: one selector word per group from the index nibble, columns24; 4:8: two PRMTs per
  column pair with selectors from a 256-entry table indexed by the group's kept-column mask,
  columns48); tl ops do the same under the interpreter. Then one tl.dot per column against x's
  columns c, c + m, … (a dot's K order is free, so the columns need no interleaving). Other n:m
  scatter the kept values into a dense tile (a column looks only at the slots that can land on
  it) and run one tl.dot.
Loads of values and index bytes are masked per row and on a length that is a multiple of 16
(Kc, the index bytes per row), so the compiler sees 16 contiguous bytes per thread; the configs
give every thread ≥ 16 index bytes per iteration, so those loads are 128 bits wide too.
Supported: m ∈ {4, 8} and n a power of two below m (2:4, 1:4, 4:8, 2:8, 1:8).

Main loop on sm_90 (Triton 3.9, `python -m kernels.static_report --kernel nm`), SASS
instructions per packed byte, all packed loads 128-bit, ≥ 344 CTAs at batch 1:
    batch 1 (GEMV)            2:4  3.97    4:8  5.34     (before: 9.0-11.2 / 11.6-13.5)
    batch 5-16 (BLOCK_M = 16) 2:4  4.40-4.51  4:8  5.33-5.41  (before: 11.0-11.4 / 22.0-22.5)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _common, _sparse
from kernels._common import _slots, aligned, check_tensor, check_x, dot_t, k_tile_range, make_out, store_split, unpack
from kernels._sparse import rows_total

FORMAT = "nm"
INDEX_BITS = {4: 2, 8: 4}


@triton.jit
def _columns(x, M: tl.constexpr):
    """x (G, M) → tuple of its M columns (G,), in-thread splits."""
    G: tl.constexpr = x.shape[0]
    e, o = tl.split(tl.reshape(x, (G, M // 2, 2)))  # even / odd columns
    if M == 4:
        x0, x2 = tl.split(e)
        x1, x3 = tl.split(o)
        cols = (x0, x1, x2, x3)
    else:  # M == 8
        ee, eo = tl.split(tl.reshape(e, (G, 2, 2)))  # columns 0 4, 2 6
        oe, oo = tl.split(tl.reshape(o, (G, 2, 2)))  # columns 1 5, 3 7
        x0, x4 = tl.split(ee)
        x2, x6 = tl.split(eo)
        x1, x5 = tl.split(oe)
        x3, x7 = tl.split(oo)
        cols = (x0, x1, x2, x3, x4, x5, x6, x7)
    return cols


@triton.jit
def scatter_dense(vals, pos, N_KEEP: tl.constexpr, M: tl.constexpr):
    """Kept values (R, G·N_KEEP) and their positions → dense (R, G·M), 0 where pruned, in vals'
    dtype. Column c can only hold slots t with t ≤ c ≤ t + M − N_KEEP (positions increase), so
    each column looks at those slots alone: 12 compare-selects per 2:4 group instead of 16."""
    v = _slots(vals, N_KEEP)
    p = _slots(pos, N_KEEP)
    cols = ()
    for c in tl.static_range(M):
        col = tl.zeros_like(v[0])
        for t in tl.static_range(max(0, c - (M - N_KEEP)), min(c, N_KEEP - 1) + 1):
            col = tl.where(p[t] == c, v[t], col)
        cols = cols + (col,)
    return _interleave_columns(cols, M)


# 2:4 dense columns by byte permutes, two groups per call (pack=2; 32-bit inputs one register per
# element: $4 $5 value pairs, $6 $7 index nibbles p0 | p1 << 2; fp16 outputs two per register,
# element 0 in the low half: $0 … $3 = columns 0 … 3). Per group a selector word s holds, in byte
# c, the PRMT selector of column c among {pair, 0}: 0x10 first value, 0x32 second, 0x54 zero;
# it starts as 0x54545454 and two shifted XORs place the kept ones (0x54 ^ 0x10 = 0x44 at byte
# p0, 0x54 ^ 0x32 = 0x66 at byte p1). PRMT reads selector bits 15:0, so s >> 16 serves columns
# 2, 3. Four more PRMTs pair the two groups' halves per column. tests/test_kernels_sparse.py
# runs this on a model of the instructions.
NM24_VALUES_PTX = tl.constexpr(
    "{ .reg .b32 t0, t1, s, z, la, ha, lb, hb; mov.b32 z, 0;"
    " shl.b32 t0, $6, 3; and.b32 t0, t0, 0x18; shl.b32 t1, $6, 1; and.b32 t1, t1, 0x18;"
    " shl.b32 t0, 0x44, t0; shl.b32 t1, 0x66, t1; xor.b32 s, t0, t1; xor.b32 s, s, 0x54545454;"
    " prmt.b32 la, $4, z, s; shr.b32 s, s, 16; prmt.b32 ha, $4, z, s;"
    " shl.b32 t0, $7, 3; and.b32 t0, t0, 0x18; shl.b32 t1, $7, 1; and.b32 t1, t1, 0x18;"
    " shl.b32 t0, 0x44, t0; shl.b32 t1, 0x66, t1; xor.b32 s, t0, t1; xor.b32 s, s, 0x54545454;"
    " prmt.b32 lb, $5, z, s; shr.b32 s, s, 16; prmt.b32 hb, $5, z, s;"
    " prmt.b32 $0, la, lb, 0x5410; prmt.b32 $1, la, lb, 0x7632;"
    " prmt.b32 $2, ha, hb, 0x5410; prmt.b32 $3, ha, hb, 0x7632; }")


@triton.jit
def columns24(pairs, index_bytes, v_ptr, USE_ASM: tl.constexpr):
    """2:4 groups → their 4 dense columns: pairs (R, G) uint32 (a group's two kept 16-bit values,
    first in the low half), index_bytes (R, G/2) → 4 tensors (R, G) in the values' dtype, 0 where
    pruned. Elementwise in (R, G), so it holds whatever registers Triton packs together."""
    if USE_ASM:
        b = index_bytes.to(tl.int32)
        nibble = tl.interleave(b & 0xF, b >> 4)  # (R, G): p0 | p1 << 2
        c0, c1, c2, c3 = tl.inline_asm_elementwise(
            NM24_VALUES_PTX, "=r,=r,=r,=r,r,r,r,r", [pairs, nibble],
            dtype=(v_ptr.dtype.element_ty, v_ptr.dtype.element_ty, v_ptr.dtype.element_ty, v_ptr.dtype.element_ty),
            is_pure=True, pack=2)
    else:
        c0, c1, c2, c3 = place24((pairs & 0xFFFF).to(tl.uint16).to(v_ptr.dtype.element_ty, bitcast=True),
                                 (pairs >> 16).to(tl.uint16).to(v_ptr.dtype.element_ty, bitcast=True), index_bytes)
    return c0, c1, c2, c3


@triton.jit
def place24(slot0, slot1, index_bytes):
    """2:4 groups' two values slot0, slot1 (R, G) into their four columns by their index nibbles
    (index_bytes (R, G/2): group g's p0 | p1 << 2 in nibble g % 2 of byte g // 2), 0 elsewhere:
    what the byte-permute PTX does (columns24, kernels/nm_int4.py's nm24_asm), on tensors."""
    b = index_bytes.to(tl.int32)
    pos = tl.interleave(b & 15, b >> 4)
    p0 = pos & 3
    p1 = pos >> 2
    none = tl.zeros_like(slot0)
    col0 = tl.where(p0 == 0, slot0, none)
    col1 = tl.where(p0 == 1, slot0, tl.where(p1 == 1, slot1, none))
    col2 = tl.where(p1 == 2, slot1, tl.where(p0 == 2, slot0, none))
    col3 = tl.where(p1 == 3, slot1, none)
    return col0, col1, col2, col3


# 4:8 dense columns by byte permutes, two groups per call (pack=2): $8 $9 / $10 $11 the groups'
# value pairs (v0 | v1 << 16, v2 | v3 << 16), $12 … $19 their table entries (S_lo, S_hi, Z_lo,
# Z_hi: selectors for columns 0-3 and 4-7, see selectors48). A first PRMT per output register
# picks each column's value from {pair0, pair1} (anything for a pruned column), a second keeps
# it or takes a zero from {it, 0}. Four PRMTs per call pair up the two groups' halves per column:
# $0 … $7 = columns 0 … 7. tests/test_kernels_sparse.py runs this on a model of the instructions.
NM48_VALUES_PTX = tl.constexpr(
    "{ .reg .b32 z, s, t, r0a, r1a, r2a, r3a, r0b, r1b, r2b, r3b; mov.b32 z, 0;"
    + "".join(
        f" prmt.b32 t, ${8 + i}, ${10 + i}, ${12 + i}; prmt.b32 r0{ab}, t, z, ${16 + i};"
        f" shr.b32 s, ${12 + i}, 16; prmt.b32 t, ${8 + i}, ${10 + i}, s; shr.b32 s, ${16 + i}, 16;"
        f" prmt.b32 r1{ab}, t, z, s;"
        f" prmt.b32 t, ${8 + i}, ${10 + i}, ${14 + i}; prmt.b32 r2{ab}, t, z, ${18 + i};"
        f" shr.b32 s, ${14 + i}, 16; prmt.b32 t, ${8 + i}, ${10 + i}, s; shr.b32 s, ${18 + i}, 16;"
        f" prmt.b32 r3{ab}, t, z, s;"
        for i, ab in ((0, "a"), (1, "b")))
    + "".join(f" prmt.b32 ${2 * k}, r{k}a, r{k}b, 0x5410; prmt.b32 ${2 * k + 1}, r{k}a, r{k}b, 0x7632;"
              for k in range(4))
    + " }")


def selectors48() -> list[list[int]]:
    """Per kept-column mask k (8 bits, 4 set: a 4:8 group), the PRMT selectors of NM48_VALUES_PTX:
    S: column c reads the 16 bits of slot t (bytes 2t, 2t+1 of {pair0, pair1}) where c is the t-th
    kept column; Z: column c keeps its own 16 bits (0x10 / 0x32 within its register) or reads the
    zero register (0x54 / 0x76). Byte c of the 64-bit word is column c; returns [S_lo, S_hi,
    Z_lo, Z_hi] as int32 bit patterns (masks with other counts never occur and get zeros)."""
    table = []
    for k in range(256):
        cols = [c for c in range(8) if k >> c & 1]
        if len(cols) != 4:
            table.append([0, 0, 0, 0])
            continue
        sel, keep = 0, 0
        for c in range(8):
            own = 0x32 if c % 2 else 0x10
            sel |= (0x10 + 0x22 * cols.index(c) if c in cols else 0x10) << 8 * c
            keep |= (own if c in cols else own + 0x44) << 8 * c
        table.append([w - (1 << 32) if w >> 31 else w
                      for w in (sel & 0xFFFFFFFF, sel >> 32, keep & 0xFFFFFFFF, keep >> 32)])
    return table


_tables: dict = {}


def table48(device) -> torch.Tensor:
    """selectors48() as int32 (256, 4) on `device`, built once."""
    if device not in _tables:
        _tables[device] = torch.tensor(selectors48(), dtype=torch.int32, device=device)
    return _tables[device]


@triton.jit
def _prmt_half(lo, hi, sel, c: tl.constexpr):
    """The 16 bits PRMT selector byte c of `sel` (uint64) picks from the uint64 pool hi:lo."""
    return (((hi << 32) | lo) >> (8 * ((sel >> (8 * c)) & 7))) & 0xFFFF


@triton.jit
def _split8(x):
    """x (R, C, 8) → its 8 columns (R, C), in-thread splits (bit-reversed pairing undone)."""
    R: tl.constexpr = x.shape[0]
    C: tl.constexpr = x.shape[1]
    e, o = tl.split(tl.reshape(x, (R, C, 4, 2)))  # columns 0 2 4 6 / 1 3 5 7
    ee, eo = tl.split(tl.reshape(e, (R, C, 2, 2)))  # 0 4 / 2 6
    oe, oo = tl.split(tl.reshape(o, (R, C, 2, 2)))  # 1 5 / 3 7
    x0, x4 = tl.split(ee)
    x2, x6 = tl.split(eo)
    x1, x5 = tl.split(oe)
    x3, x7 = tl.split(oo)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def columns48(pair0, pair1, index_bytes, lut_ptr, v_ptr, USE_ASM: tl.constexpr):
    """4:8 groups → their 8 dense columns: pair0, pair1 (R, G) uint32 (values 0, 1 and 2, 3),
    index_bytes (R, 2·G) → 8 tensors (R, G) in the values' dtype, 0 where pruned. The kept-column
    mask of each group indexes selectors48's table (one 16-byte gather per group)."""
    R: tl.constexpr = pair0.shape[0]
    G: tl.constexpr = pair0.shape[1]
    b0, b1 = tl.split(tl.reshape(index_bytes.to(tl.int32), (R, G, 2)))
    idx = b0 | (b1 << 8)  # four 4-bit positions
    kept = (1 << (idx & 7)) | (1 << ((idx >> 4) & 7)) | (1 << ((idx >> 8) & 7)) | (1 << ((idx >> 12) & 7))
    entry = tl.load(lut_ptr + kept[:, :, None] * 4 + tl.arange(0, 4)[None, None, :])  # (R, G, 4)
    s_part, z_part = tl.split(tl.reshape(entry, (R, G, 2, 2)))  # (S_lo, Z_lo) / (S_hi, Z_hi)
    s_lo, z_lo = tl.split(s_part)
    s_hi, z_hi = tl.split(z_part)
    if USE_ASM:
        cols = tl.inline_asm_elementwise(
            NM48_VALUES_PTX, "=r,=r,=r,=r,=r,=r,=r,=r" + ",r" * 12, [pair0, pair1, s_lo, s_hi, z_lo, z_hi],
            dtype=(v_ptr.dtype.element_ty,) * 8, is_pure=True, pack=2)
    else:  # the same permutes on 64-bit integers
        lo = pair0.to(tl.uint64)
        hi = pair1.to(tl.uint64)
        sel = s_lo.to(tl.uint32).to(tl.uint64) | (s_hi.to(tl.uint32).to(tl.uint64) << 32)
        keep = z_lo.to(tl.uint32).to(tl.uint64) | (z_hi.to(tl.uint32).to(tl.uint64) << 32)
        cols = ()
        for c in tl.static_range(8):
            half = tl.where(((keep >> (8 * c)) & 7) < 4, _prmt_half(lo, hi, sel, c), 0)
            cols = cols + (half.to(tl.uint16).to(v_ptr.dtype.element_ty, bitcast=True),)
    return cols


@triton.jit
def _interleave_columns(cols, M: tl.constexpr):
    """Inverse of _columns: M tensors (R, G) → (R, G·M) with column c of each group from cols[c]."""
    if M == 4:
        dense = tl.interleave(tl.interleave(cols[0], cols[2]), tl.interleave(cols[1], cols[3]))
    else:  # M == 8
        even = tl.interleave(tl.interleave(cols[0], cols[4]), tl.interleave(cols[2], cols[6]))
        odd = tl.interleave(tl.interleave(cols[1], cols[5]), tl.interleave(cols[3], cols[7]))
        dense = tl.interleave(even, odd)
    return dense


@triton.jit
def _pick(cols, d, lo: tl.constexpr, count: tl.constexpr, bit: tl.constexpr):
    """cols[lo + d] for d in [0, count), by a select tree on the bits of d (bit = 2^level above):
    ⌈log2 count⌉ tests and count − 1 selects, instead of count − 1 compares and selects."""
    if count == 1:
        picked = cols[lo][None, :]
    else:
        low = _pick(cols, d, lo, bit, bit // 2)
        high = _pick(cols, d, lo + bit, count - bit, bit // 2)
        picked = tl.where((d & bit) != 0, high, low)
    return picked


@triton.jit
def kept_gemv(acc, acc2, vals, pos, x_ptr, stride_xb, offs_m, t, K, N_KEEP: tl.constexpr, M: tl.constexpr,
              GEMV_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    """Tile t's kept values (BLOCK_N, BLOCK_KC) times the GEMV_ROWS rows of x they select. B = 1: into
    acc2 (BLOCK_N, BLOCK_G), reduced once after the loop (rows_total); B > 1: into acc row b."""
    offs_x = t * BLOCK_K + tl.arange(0, BLOCK_G)[:, None] * M + tl.arange(0, M)[None, :]
    for b in tl.static_range(GEMV_ROWS):
        xb = tl.load(x_ptr + b * stride_xb + offs_x, mask=offs_x < K, other=0.0)  # (BLOCK_G, M)
        prod = kept_products(vals, pos, xb, N_KEEP, M)  # (BLOCK_N, BLOCK_G)
        if GEMV_ROWS == 1:
            acc2 += prod
        else:
            part = tl.sum(prod, axis=1)  # (BLOCK_N,)
            acc = tl.where(offs_m[:, None] == b, acc + part[None, :], acc)
    return acc, acc2


@triton.jit
def kept_products(vals, pos, x, N_KEEP: tl.constexpr, M: tl.constexpr):
    """Σ over slots of values · x[b, col] per (row, group): vals, pos (R, G·N_KEEP), x (G, M) one
    row of x by groups → (R, G) fp32. Positions in a group increase, so slot t sits at t + d,
    0 ≤ d ≤ M − N_KEEP: a select tree on d picks its x, one FFMA multiplies."""
    v = _slots(vals, N_KEEP)
    p = _slots(pos, N_KEEP)
    cols = _columns(x.to(tl.float32), M)  # fp32 before the selects: 32-bit SELs, no half extraction
    OPTIONS: tl.constexpr = M - N_KEEP + 1
    TOP: tl.constexpr = 1 if OPTIONS <= 2 else (2 if OPTIONS <= 4 else 4)  # highest bit of OPTIONS − 1
    acc = tl.zeros(v[0].shape, dtype=tl.float32)
    for t in tl.static_range(N_KEEP):
        picked = _pick(cols, p[t] - t, t, OPTIONS, TOP)
        acc += v[t].to(tl.float32) * picked
    return acc


@triton.jit
def _nm_matmul_kernel(
    x_ptr, v_ptr, i_ptr, y_ptr, lut_ptr,  # lut: selectors48's table (4:8 on the tensor cores)
    B, N, K, KC, IB,  # IB: index bytes per row
    stride_xb, stride_v, stride_i, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    batch_bucket,  # autotune key only
    N_KEEP: tl.constexpr, M: tl.constexpr, INDEX_BITS: tl.constexpr,
    USE_ASM: tl.constexpr,  # False under the interpreter
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # 2:4 and 4:8 on the tensor cores: value pairs → M column tiles by byte permutes, one dot each
    PAIRS: tl.constexpr = GEMV_ROWS == 0 and N_KEEP == 2 and M == 4
    QUADS: tl.constexpr = GEMV_ROWS == 0 and N_KEEP == 4 and M == 8 and BLOCK_K >= 128  # dots of K ≥ 16
    BLOCK_G: tl.constexpr = BLOCK_K // M  # groups per tile
    BLOCK_KC: tl.constexpr = BLOCK_G * N_KEEP  # kept values per tile row
    BLOCK_IB: tl.constexpr = BLOCK_KC * INDEX_BITS // 8  # index bytes per tile row
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
        if PAIRS:
            offs_g = t * BLOCK_G + tl.arange(0, BLOCK_G)
            pairs = tl.load(v_rows.to(tl.pointer_type(tl.uint32)) + offs_g[None, :],
                            mask=n_mask[:, None] & (offs_g[None, :] < KC // 2), other=0)  # (BLOCK_N, BLOCK_G)
            cols = columns24(pairs, index_bytes, v_ptr, USE_ASM)  # 4 × (BLOCK_N, BLOCK_G)
            offs_x = t * BLOCK_K + tl.arange(0, BLOCK_G)[:, None] * 4 + tl.arange(0, 4)[None, :]  # (BLOCK_G, 4)
            x = tl.load(x_ptr + offs_m[:, None, None] * stride_xb + offs_x[None, :, :],
                        mask=(offs_m[:, None, None] < B) & (offs_x[None, :, :] < K), other=0.0)  # (BLOCK_M, BLOCK_G, 4)
            xe, xo = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_G, 2, 2)))  # columns 0 2 / 1 3
            x0, x2 = tl.split(xe)
            x1, x3 = tl.split(xo)
            acc = dot_t(x0, cols[0], acc, DOT_F32)
            acc = dot_t(x1, cols[1], acc, DOT_F32)
            acc = dot_t(x2, cols[2], acc, DOT_F32)
            acc = dot_t(x3, cols[3], acc, DOT_F32)
        elif QUADS:
            offs_w = t * BLOCK_G * 2 + tl.arange(0, BLOCK_G * 2)
            words = tl.load(v_rows.to(tl.pointer_type(tl.uint32)) + offs_w[None, :],
                            mask=n_mask[:, None] & (offs_w[None, :] < KC // 2), other=0)  # (BLOCK_N, 2·BLOCK_G)
            pair0, pair1 = tl.split(tl.reshape(words, (BLOCK_N, BLOCK_G, 2)))
            cols = columns48(pair0, pair1, index_bytes, lut_ptr, v_ptr, USE_ASM)  # 8 × (BLOCK_N, BLOCK_G)
            offs_x = t * BLOCK_K + tl.arange(0, BLOCK_G)[:, None] * 8 + tl.arange(0, 8)[None, :]  # (BLOCK_G, 8)
            x = tl.load(x_ptr + offs_m[:, None, None] * stride_xb + offs_x[None, :, :],
                        mask=(offs_m[:, None, None] < B) & (offs_x[None, :, :] < K), other=0.0)  # (BLOCK_M, BLOCK_G, 8)
            xs = _split8(x)
            for c in tl.static_range(8):
                acc = dot_t(xs[c], cols[c], acc, DOT_F32)
        else:
            offs_c = t * BLOCK_KC + tl.arange(0, BLOCK_KC)
            vals = tl.load(v_rows + offs_c[None, :], mask=n_mask[:, None] & (offs_c[None, :] < KC),
                           other=0.0)  # (BLOCK_N, BLOCK_KC)
            pos = unpack(index_bytes, INDEX_BITS)  # (BLOCK_N, BLOCK_KC) in 0 … M−1
            if GEMV_ROWS > 0:
                acc, acc2 = kept_gemv(acc, acc2, vals, pos, x_ptr, stride_xb, offs_m, t, K, N_KEEP, M, GEMV_ROWS,
                                      BLOCK_K, BLOCK_G)
            else:
                w = scatter_dense(vals, pos, N_KEEP, M)  # (BLOCK_N, BLOCK_K), x's dtype, 0 where pruned
                offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + offs_m[:, None] * stride_xb + offs_k[None, :],
                            mask=(offs_m[:, None] < B) & (offs_k[None, :] < K), other=0.0)  # (BLOCK_M, BLOCK_K)
                acc = dot_t(x, w, acc, DOT_F32)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


def _cfg(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# B ≤ 4 (BLOCK_M comes from the launcher). Each thread loads 64 kept values (8 × 128 bits) and their
# indices (128 bits for 2:4, 2 × 128 for 4:8) per iteration; narrower tiles push 4:8 past 6
# instructions per byte (the x columns cost the same per thread whatever its share of values).
GEMV_CONFIGS = [
    _cfg(4, 1, BLOCK_N=32, BLOCK_K=512),
    _cfg(8, 1, BLOCK_N=32, BLOCK_K=1024),
]
# B > 4. BLOCK_M = 16 serves B ≤ 16 in one M block; 128 × 128 and 256 × 128 tiles give every
# thread 16 index bytes (one 128-bit load) and 8 × 128 bits of values per iteration.
TILED_CONFIGS = [
    _cfg(4, 1, BLOCK_M=16, BLOCK_N=128, BLOCK_K=128),
    _cfg(8, 1, BLOCK_M=16, BLOCK_N=256, BLOCK_K=128),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
]
INTERPRET_CONFIGS = ([_cfg(4, 1, BLOCK_N=16, BLOCK_K=64)], [_cfg(4, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64)])
KEY = ["N", "K", "batch_bucket", "N_KEEP", "M"]


def _prune_tiled(configs, named_args, **kwargs):
    fits = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, kwargs["batch_bucket"])]
    return fits or configs[:1]


def _tuned():
    gemv, tiled = INTERPRET_CONFIGS if _common.INTERPRET else (GEMV_CONFIGS, TILED_CONFIGS)
    return (triton.autotune(gemv, key=KEY)(_nm_matmul_kernel),
            triton.autotune(tiled, key=KEY, prune_configs_by={"early_config_prune": _prune_tiled})(_nm_matmul_kernel))


_GEMV, _TILED = _tuned()


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
    index_bytes = -(-kc * INDEX_BITS[m] // 8)
    check_tensor(FORMAT, "values", values, x.dtype, (rows, kc), x, "(x's dtype) (N, K·n/m)")
    check_tensor(FORMAT, "indices", indices, torch.uint8, (rows, index_bytes), x,
                 f"(N, ceil(Kc·{INDEX_BITS[m]}/8))")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    values = aligned(values, 4)  # the tensor-core paths read value pairs as uint32
    _sparse.launch(_GEMV, _TILED, x, rows,
                   (x, values, indices, out, table48(x.device), batch, rows, k, kc, index_bytes,
                    x.stride(0), values.stride(0), indices.stride(0), out.stride(0)),
                   N_KEEP=n, M=m, INDEX_BITS=INDEX_BITS[m], USE_ASM=not _common.INTERPRET)
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


def _static(n: int, m: int):
    return _sparse.static_spec(
        f"nm {n}:{m}", _nm_matmul_kernel, dict(x="fp16", v="fp16", i="u8", y="fp16", lut="i32"), ("v", "i"),
        dict(N_KEEP=n, M=m, INDEX_BITS=INDEX_BITS[m], USE_ASM=True), GEMV_CONFIGS, TILED_CONFIGS,
        n / m * (2 + INDEX_BITS[m] / 8),
        free_asm=(NM24_VALUES_PTX.value, NM48_VALUES_PTX.value))  # each group's columns from its own registers


STATIC = (_static(2, 4), _static(4, 8))
