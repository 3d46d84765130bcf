"""`int4` packed weights (docs/formats.md): y = x @ Ŵᵀ.

Format, W (N, K) = (out_features, in_features), groups of g consecutive inputs, G = ceil(K/g):
    qweight  uint8   (N, ceil(K/2))  code k in byte k // 2: low nibble for even k, high for odd k
    scales   float16 (N, G)
    zeros    uint8   (N, G)          integer zero point in [0, 15]
Math:
    Ŵ[n, k] = (q[n, k] − zeros[n, k // g]) · scales[n, k // g]
    y[b, n] = Σ_g scales[n, g] · Σ_{k in g} x[b, k] · (q[n, k] − zeros[n, g])     fp32, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16, y (B, N).

Design (Marlin's ideas on the packed layout as it is; Frantar et al. 2024, arXiv:2408.11743):
- one kernel for every batch: tensor cores on (BLOCK_M, BLOCK_N) tiles of y, BLOCK_M = 16 up to
  batch 16 (batch 1 wastes 15/16 of an MMA that costs ≈ 0.25 instructions per packed byte);
- each thread loads 16 contiguous packed bytes of one row (LDG.E.128): the mask is on the row's
  byte count, constant across a 16-byte vector, not on `k < K` per code;
- codes become fp16 (code − zero) with the 0x6400 exponent trick (_common.int4_minus_zero):
  2.5 instructions per byte, exact; the scale multiplies the tile's fp32 partial sums once per
  group per output, not each weight (needs BLOCK_K | g: true for every production group);
- the low and high nibbles come out as two (BLOCK_N, BLOCK_K/2) tiles for the even and odd
  columns: x is split into its even and odd columns to match (x is BLOCK_M/BLOCK_N the size);
- K is split over the grid's second axis into full waves of the CTAs an SM holds, ≥ 264 CTAs
  (_common.split_for), the splits adding fp32 partial sums atomically into a workspace; the last
  one writes y (_common.store_split).
Measured (python -m kernels.static_report, sm_90, Triton 3.9), batch 1-16 path, main-loop SASS
instructions per packed byte: g=128 5.6, g=64 5.7, one group per row 5.4 (capped at 128
registers for 4 CTAs per SM; 5.3 and 4.8 uncapped, with 168 and 156); every packed load
LDG.E.128; ≥ 344 CTAs at batch 1 on every benchmark shape; 128-144 registers, no spills. Where
they go (g=128 uncapped, 64 bytes per thread per iteration, ≈ 340 in all): the
0x6400 dequantization 2.5 per byte, the x tile's even/odd split (PRMT) ≈ 0.8, the packed tile's
trip through shared memory into the MMA layout (STS/LDS/LDSM/BAR) ≈ 0.5, HMMA 0.5, addressing
≈ 0.6, the group scale 0.3.
The kernel is generic in BITS: kernels/int8.py runs it with BITS=8 (3.1 instructions per byte).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import (BATCH_1_16, INTERPRET, LARGE_BATCH, CompileSpec, block_offsets, check_group,
                             check_tensor, check_x, dot_t, int4_minus_zero, int8_minus_zero, k_tile_range,
                             make_out, max_registers, plan_split_k, scale_columns, split_for, store_split,
                             workspace)

FORMAT = "int4"
SMALL_BATCH = 16  # up to here one BLOCK_M = 16 row block: every weight byte is read once


@triton.jit
def _quant_matmul_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, y_ptr,
    B, N, K,
    stride_xb, stride_xk, stride_q, stride_g, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_common.py, "split over K")
    BITS: tl.constexpr,  # 4 or 8
    GROUP: tl.constexpr,  # g, or 0 when there is one group per row
    EVEN: tl.constexpr,  # BLOCK_N | N and BLOCK_K | K: no masks on the weights (LLM shapes)
    USE_ASM: tl.constexpr,  # False under the interpreter
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m, offs_n = block_offsets(B, N, BLOCK_M, BLOCK_N)  # (BLOCK_M,), (BLOCK_N,)
    n_mask = offs_n < N
    rows = offs_n.to(tl.int64)  # N · row bytes can pass 2^31
    # The tile lies inside one group: scale its partial sums once (else per element, slowly).
    PER_TILE: tl.constexpr = GROUP == 0 or GROUP % BLOCK_K == 0
    PACKED_K: tl.constexpr = BLOCK_K * BITS // 8
    first, last = k_tile_range(K, BLOCK_K)  # this program's split: whole BLOCK_K tiles
    k_start = first * BLOCK_K
    k_end = tl.minimum(last * BLOCK_K, K)
    # a split is whole BLOCK_K tiles: the split starts on a multiple of PACKED_K (≥ 16) bytes.
    offs_b = tl.multiple_of(k_start * BITS // 8, PACKED_K) + tl.arange(0, PACKED_K)  # (PACKED_K,) row bytes
    q_ptrs = q_ptr + rows[:, None] * stride_q + offs_b[None, :]  # (BLOCK_N, PACKED_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xb + (k_start + tl.arange(0, BLOCK_K))[None, :] * stride_xk
    m_mask = offs_m[:, None] < B
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN:
            packed = tl.load(q_ptrs)
            x = tl.load(x_ptrs, mask=m_mask, other=0.0)
        else:  # stride_q is the row's byte count (contiguous rows): constant over 16 bytes
            packed = tl.load(q_ptrs, mask=n_mask[:, None] & (offs_b[None, :] < stride_q), other=0)
            x = tl.load(x_ptrs, mask=m_mask & (offs_k[None, :] < K), other=0.0)  # (BLOCK_M, BLOCK_K)
        if PER_TILE:
            g_offs = rows * stride_g
            if GROUP > 0:
                g_offs += k0 // GROUP
            zero = tl.load(z_ptr + g_offs, mask=n_mask, other=0)[:, None]  # (BLOCK_N, 1)
            scale = tl.load(s_ptr + g_offs, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            zero = tl.zeros((BLOCK_N, 1), dtype=tl.uint8)
            part = acc
        if BITS == 4:
            lo, hi = int4_minus_zero(packed, zero, USE_ASM)  # (BLOCK_N, BLOCK_K/2): even, odd columns
            if not PER_TILE:
                lo = scale_columns(lo, s_ptr, z_ptr, rows, n_mask, offs_b[None, :] * 2, K, stride_g, GROUP)
                hi = scale_columns(hi, s_ptr, z_ptr, rows, n_mask, offs_b[None, :] * 2 + 1, K, stride_g, GROUP)
            x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 2, 2)))
            part = dot_t(x_even, lo, part, DOT_F32)
            part = dot_t(x_odd, hi, part, DOT_F32)
        else:
            w = int8_minus_zero(packed, zero, USE_ASM)  # (BLOCK_N, BLOCK_K)
            if not PER_TILE:
                w = scale_columns(w, s_ptr, z_ptr, rows, n_mask, offs_k[None, :], K, stride_g, GROUP)
            part = dot_t(x, w, part, DOT_F32)
        if PER_TILE:
            acc += part * scale[None, :]
        else:
            acc = part
        q_ptrs += PACKED_K
        x_ptrs += BLOCK_K * stride_xk
        offs_b += PACKED_K
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


# ----------------------------------------------------------------------------- configs

def block_k(group: int) -> int:
    """Largest production BLOCK_K that divides the group (scale once per tile); 64 for others."""
    return next((bk for bk in (128, 64, 32) if group == 0 or group % bk == 0), 64)


def config(batch: int, group: int) -> triton.Config:
    """The production config of a launch. Up to batch 16 one BLOCK_M = 16 row block (each weight
    read once) and BLOCK_N · BLOCK_K = 16384 codes: with 4 warps each thread loads 64 packed int4
    bytes (4 × LDG.128) per iteration, which pays for the loop's fixed cost (x tile, group scale).
    With BLOCK_K = 128, at most 128 registers, so that 4 CTAs share an SM: int4 took 156-168, 3 CTAs
    and 21-24 KB in flight per SM at batch 1, under the ≈ 25-30 that cover DRAM latency; capped,
    27-31 KB for 0.3-0.6 more instructions per byte, no spills. 256 × 64 tiles (g = 64) keep theirs:
    capped, int4 would spend 6.2 per byte under the H200's Triton 3.6. Above, 64 × 128 tiles. One
    config per path: no autotuning without a GPU to time it."""
    bk = block_k(group)
    if batch <= SMALL_BATCH:
        return triton.Config(dict(BLOCK_M=16, BLOCK_N=16384 // bk, BLOCK_K=bk), num_warps=4, num_stages=1,
                             maxnreg=max_registers(4, 128) if bk == 128 else None)
    return triton.Config(dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=min(64, bk)), num_warps=4, num_stages=2)


def grid(cfg: triton.Config, n: int, k: int, batch: int, per_sm: int) -> tuple[int, int]:
    """(tiles of y, splits of K) on the H200, per_sm of its CTAs on each SM."""
    tiles = triton.cdiv(batch, cfg.kwargs["BLOCK_M"]) * triton.cdiv(n, cfg.kwargs["BLOCK_N"])
    return tiles, plan_split_k(tiles, k, cfg.kwargs["BLOCK_K"], per_sm).splits


# ----------------------------------------------------------------------------- launcher

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
    group = 0 if groups == 1 else g
    cfg = config(batch, group)
    tiles = triton.cdiv(batch, cfg.kwargs["BLOCK_M"]) * triton.cdiv(n, cfg.kwargs["BLOCK_N"])
    ws, tickets = workspace(x, n, tiles)
    args = (x, qweight, scales, zeros, out, batch, n, k,
            x.stride(0), x.stride(1), qweight.stride(0), scales.stride(0), out.stride(0), ws, tickets)
    meta = dict(BITS=bits, GROUP=group, EVEN=n % cfg.kwargs["BLOCK_N"] == 0 and k % cfg.kwargs["BLOCK_K"] == 0,
                USE_ASM=not INTERPRET, DOT_F32=INTERPRET and x.dtype == torch.bfloat16,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.maxnreg, **cfg.kwargs)
    plan = split_for(_quant_matmul_kernel, tiles, k, cfg.kwargs["BLOCK_K"], x, args, meta)
    _quant_matmul_kernel[(tiles, plan.splits)](*args, **meta)
    return out


def matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *,
           group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `int4`. group_size: g, or -1 for one group per row.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    return quant_matmul(FORMAT, 4, x, qweight, scales, zeros, group_size, out)


# ----------------------------------------------------------------------------- torch reference

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


# ----------------------------------------------------------------------------- static report

def static_specs(fmt: str, bits: int) -> tuple[CompileSpec, ...]:
    """What kernels.static_report compiles: groups 128 (benchmark), 64 (the pipeline's) and one per row."""
    def packed_bytes(cfg: triton.Config) -> int:  # per thread per iteration
        return cfg.kwargs["BLOCK_N"] * cfg.kwargs["BLOCK_K"] * bits // 8 // (32 * cfg.num_warps)

    def ctas(cfg: triton.Config, n: int, k: int, batch: int, per_sm: int) -> int:
        tiles, splits = grid(cfg, n, k, batch, per_sm)
        return tiles * splits

    def spec(label: str, group: int) -> CompileSpec:
        flags = dict(BITS=bits, GROUP=group, EVEN=True, USE_ASM=True, DOT_F32=False, stride_xk=1)
        return CompileSpec(
            name=f"{fmt} {label}", kernel=_quant_matmul_kernel,
            pointers=dict(x="fp16", q="u8", s="fp16", z="u8", y="fp16", ws="fp32", ticket="i32"), packed=("q",), constexprs=flags,
            paths={BATCH_1_16: (config(1, group),), LARGE_BATCH: (config(SMALL_BATCH + 1, group),)},
            packed_bytes=packed_bytes, ctas=ctas)

    return spec("g128", 128), spec("g64", 64), spec("g-1", 0)


STATIC = static_specs(FORMAT, 4)
