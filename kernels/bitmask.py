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

Design, per (BLOCK_N, BLOCK_K) tile viewed as (BLOCK_N, W = BLOCK_K/32 words, 32 bits):
- the mask bytes load as a vector per thread and become 32-bit words (padding bits past K
  cleared); a popcount per word and an exclusive cumsum across the row's words give each word
  the slot of its first kept weight (the issue's "popcount per word, prefix across the warp");
- inside a word, bit j's slot is one popcount away: shifting the word left by 31 − j leaves the
  bits ≤ j, whose count is the inclusive rank and whose sign bit says whether j is kept. So a
  column costs a shift, a popcount, one address (IMAD.WIDE), a predicated gather load and the
  multiply: no element-wise cumsum, no shuffles (kernels before: 41–51 instructions per byte).
- The gather is inline PTX (ld.global.nc under a predicate): a tl.load of those addresses makes
  Triton re-layout the pointers through shared memory. The interpreter runs the same math
  with tl ops (USE_ASM = False).
- split over K (kernels/_common.py): a program starts at its chunk's offset; only a split that
  starts inside a chunk (BLOCK_K < 512) counts the kept weights of the chunk's tiles before it
  (at most 512/BLOCK_K − 1 tiles, outside the main loop). A tile that starts a chunk in the main
  loop reloads the offset (the chunk before ends in padding).
GEMV on CUDA cores for B ≤ 4 (B = 1: one FFMA per weight, reduced after the loop), tl.dot with
BLOCK_M = 16 above. The quantized bitmask kernel (kernels/bitmask_int4.py) shares these helpers.
chunk_offsets and values are trusted (checking them would cost a device sync per call).

What it cannot do in this layout: load values 128 bits wide (a value's address depends on the
mask), or get near 6 instructions per packed byte at 50% sparsity (per column ≈ 8 instructions
against 0.56 packed bytes). See the static report and docs/formats.md, "Kernel limits".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _common, _sparse
from kernels._common import check_tensor, check_x, k_tile_range, make_out, store_split
from kernels._sparse import accumulate_tile, rows_total

FORMAT = "bitmask"
# Version 2 cuts rows into chunks of this many columns (tasks/formats/packing.py BITMASK_CHUNK);
# every BLOCK_K divides it, so a K tile lies in one chunk.
CHUNK_COLUMNS = 512
CHUNK = tl.constexpr(CHUNK_COLUMNS)
# What the gather reads: float values (the pointer's dtype says fp16/bf16), 8-bit or 4-bit codes.
VALUES, CODES8, CODES4 = tl.constexpr(0), tl.constexpr(8), tl.constexpr(4)


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
    if KIND == VALUES:
        cvt: tl.constexpr = "cvt.f32.bf16 $0, h;" if v_ptr.dtype.element_ty == tl.bfloat16 else "cvt.f32.f16 $0, h;"
        out = tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b32 s, c; .reg .b64 a; .reg .b16 h;"
            " shl.b32 s, $2, $3; setp.lt.s32 p, s, 0; popc.b32 c, s; add.s32 c, c, $1; mad.wide.s32 a, c, 2, $4;"
            " mov.b16 h, 0; @p ld.global.nc.b16 h, [a]; " + cvt + " }",
            "=r,r,r,r,l", [first, words, shift, v_ptr], dtype=tl.float32, is_pure=True, pack=1)
    elif KIND == CODES8:
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
    (0 for values, the zero code for codes: it dequantizes to exactly 0). base (BLOCK_N, W) int32
    is the stream index of the word's first kept entry; fill (BLOCK_N, W) int32.
    VALUES → fp32; CODES8 / CODES4 → int32 codes."""
    shift = 31 - tl.arange(0, 32)[None, None, :]  # bits ≤ j to the top: sign = bit j, count = rank
    w3 = words[:, :, None]
    if USE_ASM:
        out = _gather_asm(v_ptr, (base - 1)[:, :, None], w3, shift, fill[:, :, None], KIND)
    else:
        top = w3 << shift.to(tl.uint32)
        kept = (top >> 31) != 0
        index = base[:, :, None] + popcount32(top).to(tl.int32) - 1
        if KIND == VALUES:
            out = tl.load(v_ptr + index, mask=kept, other=0.0).to(tl.float32)
        elif KIND == CODES8:
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
def _bitmask_matmul_kernel(
    x_ptr, mask_ptr, v_ptr, co_ptr, y_ptr,
    B, N, K, MB, NC,  # MB: mask bytes per row; NC: chunks per row
    stride_xb, stride_mask, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    batch_bucket,  # autotune key only
    USE_ASM: tl.constexpr,  # False under the interpreter
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    W: tl.constexpr = BLOCK_K // 32
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    mask_rows = mask_ptr + offs_n.to(tl.int64)[:, None] * stride_mask  # (BLOCK_N, 1)
    first, last = k_tile_range(K, BLOCK_K)
    # int32 value indices suffice: the launcher checks the stream has fewer than 2^31 entries.
    start = values_before(co_ptr, mask_rows, offs_n, n_mask, first, NC, MB, 8, BLOCK_K)  # (BLOCK_N,)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, W, 32), dtype=tl.float32)  # B = 1: per weight, reduced after the loop
    for t in range(first, last):
        words = mask_words(mask_rows, n_mask, t, K, MB, BLOCK_K)  # (BLOCK_N, W)
        base, count = tile_bases(words, start)
        w = gather_kept(v_ptr, base, words, tl.zeros_like(base), VALUES, USE_ASM)  # (BLOCK_N, W, 32) fp32
        start = next_start(start, count, t + 1, 8, BLOCK_K)
        acc, acc2 = accumulate_words(acc, acc2, w, x_ptr, offs_m, t, B, K, stride_xb, GEMV_ROWS, DOT_F32)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


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


_GEMV, _TILED = tuned(_bitmask_matmul_kernel, GEMV_CONFIGS, TILED_CONFIGS, INTERPRET_CONFIGS, KEY)


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
    if k == 0:
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    _sparse.launch(_GEMV, _TILED, x, rows,
                   (x, mask, values, chunk_offsets, out, batch, rows, k, mask.shape[1], chunk_offsets.shape[1],
                    x.stride(0), mask.stride(0), out.stride(0)), USE_ASM=not _common.INTERPRET)
    return out


def kept_and_slots(mask: torch.Tensor, chunk_offsets: torch.Tensor, k: int, units: int) -> tuple[torch.Tensor, torch.Tensor]:
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


# 50% sparsity: the mask (1/8 B per weight) and half the weights' values
STATIC = (_sparse.static_spec(
    "bitmask 50%", _bitmask_matmul_kernel, dict(x="fp16", mask="u8", v="fp16", co="i32", y="fp16"), ("mask", "v"),
    dict(USE_ASM=True), GEMV_CONFIGS, TILED_CONFIGS, 1 / 8 + 0.5 * 2, kept=0.5),)
