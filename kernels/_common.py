"""Pieces shared by the packed-weight matmul kernels (one kernel per format file).

Every kernel computes y = x @ Ŵᵀ, with x (B, K) fp16/bf16, Ŵ (N, K) the dequantized packed
weight, y (B, N) in x's dtype and fp32 accumulation. Here:
- the one split over K of every kernel, which fills the GPU's SMs at batch 1 (full waves at the
  compiled kernel's occupancy, at least 2 CTAs per SM): plan_split_k, split_for, workspace,
  k_tile_range, store_split (why this design: the notes at its section);
- the 0x6400 exponent trick that turns 4- and 8-bit codes into fp16 (code − zero) in about one
  instruction per fp16 pair (inline PTX; plain integer ops under the interpreter), the
  per-element scale of the slow path, the tensor-core product dot_t;
- CompileSpec: what each kernel module declares for kernels/static_report.py;
- helpers of the sparse kernels (nm*, bitmask*; their launcher is kernels/_sparse.py): bit
  unpacking, N:M scatter to dense, group dequantization, the CUDA-core / tl.dot inner products;
- launcher checks with clear ValueErrors.

Shape comments are (rows, cols).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from kernels import ptx_model

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if INTERPRET:
    ptx_model.install()  # the interpreter runs the warp-level inline asm (kernels/nm_int4.py) on a model
MAX_BATCH_BUCKET = 2048
X_DTYPES = (torch.float16, torch.bfloat16)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def batch_bucket(batch: int) -> int:
    """Batch bucket (kernels/dispatch.py caches one decision per bucket): powers of two up to 2048."""
    return min(next_pow2(batch), MAX_BATCH_BUCKET)


# ----------------------------------------------------------------------------- split over K

# The one split-K of every kernel (int4, int8, nm, nm-int4, nm-int8, bitmask*).
#
# At batch 1 a grid over N alone is too small to keep the H200's HBM busy (the 4096-row shapes of
# a 7B model give 128 programs for 132 SMs), so the grid is (tiles of y, SPLIT): program (i, s)
# reduces K tiles k_tile_range(…) of tile i, with SPLIT from split_for: full waves of the CTAs the
# compiled kernel fits on an SM (its registers and shared memory decide), ≥ MIN_CTAS programs.
# The splits' fp32 partial sums meet in a workspace (B, N) by atomic adds; a ticket per tile
# counts the splits that finished, and the last one writes y in x's dtype and zeroes its slice of
# the workspace and its ticket again (store_split). Why this one, over a zeroed fp32 buffer per
# call copied into y after (the other design this repository had):
# - launches per call: one (the kernel) against three (memset, kernel, copy); at batch 1 on a
#   4096×4096 int4 weight the kernel streams 8 MB in ≈ 2 µs, about what each extra launch costs;
#   y is written once, in its dtype, with no fp32 round trip through memory;
# - concurrent streams: one workspace per (device, stream); calls on one stream run in order, so
#   two never share a workspace at once, and calls on different streams never share one;
# - CUDA graphs (a decode step captured after eager warm-up steps): capture runs on its own
#   stream, so the first call under capture allocates that stream's workspace inside the capture:
#   the graph's private pool holds it and the graph zeroes it at that point of every replay; the
#   kernels leave it zeroed, so later replays and the eager calls around them find it zero. A
#   workspace is never freed (growing retires the old one to _retired, kept alive), because a
#   graph captured earlier keeps its address. Graphs captured on one stream share its workspace:
#   replay them one after the other (as a decode loop does), not concurrently.
# - the cost: fp32 atomics in varying order, so with SPLIT > 1 the last bits of y may differ run
#   to run (gemlite's way too), and nothing outside the kernels may write the workspace.

# The H200 (sm_90): its SMs, and what one SM holds at once.
SMS, REGISTERS_PER_SM, SHARED_PER_SM, THREADS_PER_SM, CTAS_PER_SM = 132, 65536, 228 * 1024, 2048, 32
RESERVED_SHARED = 1024  # shared memory the driver keeps for each CTA
# 2 CTAs on each SM: the fewest a batch-1 grid starts (issue 13), where K has the blocks.
MIN_CTAS = 2 * SMS
# A split's fixed cost, in main-loop iterations: its start (the row's offsets and counts) and its
# end (the atomic adds, the ticket) each wait on memory about as long as one iteration does.
SPLIT_COST = 2


def max_registers(ctas: int, threads: int) -> int:
    """The most registers per thread that let `ctas` CTAs of `threads` threads share an SM: the cap
    (triton.Config's maxnreg) a batch-1 config sets where its bytes in flight need the CTAs."""
    return REGISTERS_PER_SM // (ctas * threads) // 8 * 8


def resident_ctas(registers: int, shared: int, threads: int) -> int:
    """CTAs one Hopper SM holds at once: registers are allocated per warp in blocks of 256."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp * threads // 32)
    by_shared = SHARED_PER_SM // (shared + RESERVED_SHARED)
    return min(by_registers, by_shared, THREADS_PER_SM // threads, CTAS_PER_SM)


@dataclass(frozen=True)
class SplitK:
    """K cut into `splits` ranges of `k_per_split` columns (a multiple of BLOCK_K), one per grid row."""

    splits: int
    k_per_split: int


@functools.lru_cache(maxsize=4096)
def plan_split_k(tiles: int, k: int, block_k: int, per_sm: int = 2, sms: int = SMS) -> SplitK:
    """The split of K for `tiles` tiles of y, on `sms` SMs that each hold `per_sm` of its CTAs.

    A CTA's time is about its main-loop iterations plus a fixed cost of SPLIT_COST of them, and the
    grid's that times its waves of per_sm · sms CTAs (equal CTAs run side by side, and a wave only
    partly full leaves SMs idle or nearly so): the split that minimises waves × (K blocks per split
    + SPLIT_COST), the fewest splits among equals, with at least 2 · sms CTAs where K has the blocks.
    Each split takes whole BLOCK_K blocks (so a split never starts inside a BLOCK_K tile; with
    BLOCK_K dividing the quantization group it never starts inside a group either);
    k_per_split = ceil(blocks / splits) · BLOCK_K: what k_tile_range gives each program."""
    blocks = max(-(-k // block_k), 1)
    tiles = max(tiles, 1)
    least = min(2 * sms, tiles * blocks)
    capacity = max(per_sm, 1) * sms
    best = None
    for per in range(blocks, 0, -1):  # blocks per split: the fewest splits first
        splits = -(-blocks // per)
        if tiles * splits < least:
            continue
        cost = -(-tiles * splits // capacity) * (per + SPLIT_COST)
        if best is None or cost < best[0]:
            best = cost, splits, per
    return SplitK(best[1], best[2] * block_k)


_compiled: dict = {}  # (kernel, GPU, x dtype, scalar arguments) → the kernel Triton compiled for them


def ctas_per_sm(kernel, x: torch.Tensor, args: tuple, kwargs: dict) -> int:
    """CTAs of `kernel` compiled for the call kernel[grid](*args, **kwargs) (kwargs with num_warps
    and num_stages) that one SM of x's GPU holds at once, from the compiled kernel's registers and
    shared memory (compiled, or found in Triton's cache, once per kernel, GPU, x dtype and scalar
    arguments); 2 off the GPU."""
    if not x.is_cuda:
        return 2
    scalar = (bool, int, float, str)
    key = (kernel, x.device, x.dtype, tuple(v for v in args if isinstance(v, scalar)),
           tuple((n, v) for n, v in kwargs.items() if isinstance(v, scalar)))  # a launch site's order is fixed
    if key not in _compiled:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()  # Triton reads the register count when it loads the binary
        _compiled[key] = compiled
    compiled = _compiled[key]
    return resident_ctas(compiled.n_regs, compiled.metadata.shared, 32 * compiled.metadata.num_warps)


def occupancy() -> list[dict]:
    """What the splits so far planned for, per kernel compiled on the GPU: its registers, shared
    memory, warps and CTAs per SM (bench/gpu_bench.py keeps them with a GPU run's figures)."""
    kernels = {c.hash: c for c in _compiled.values()}.values()
    return [dict(kernel=c.name, registers=c.n_regs, shared=c.metadata.shared, warps=c.metadata.num_warps,
                 ctas_per_sm=resident_ctas(c.n_regs, c.metadata.shared, 32 * c.metadata.num_warps))
            for c in kernels]


def sm_count(x: torch.Tensor) -> int:
    """SMs of x's GPU; the H200's off the GPU (what the interpreter tests and the static report model)."""
    return torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else SMS


def split_for(kernel, tiles: int, k: int, block_k: int, x: torch.Tensor, args: tuple, kwargs: dict) -> SplitK:
    """plan_split_k for the launch kernel[grid](*args, **kwargs) on x's GPU."""
    return plan_split_k(tiles, k, block_k, ctas_per_sm(kernel, x, args, kwargs), sm_count(x))


_workspaces: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_retired: list[tuple[torch.Tensor, torch.Tensor]] = []  # outgrown workspaces: a captured graph may use them


def workspace(x: torch.Tensor, n_out: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed fp32 (≥ B·N) sums and int32 (≥ tiles) tickets for a launch on x's device and current
    stream (see the notes above). The kernels leave them zeroed again, so only growing allocates."""
    stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
    key = (x.device, stream)
    sums, tickets = _workspaces.get(key, (None, None))
    if sums is None or sums.numel() < x.shape[0] * n_out or tickets.numel() < tiles:
        if sums is not None:
            _retired.append((sums, tickets))
        sums = torch.zeros(max(x.shape[0] * n_out, 0 if sums is None else sums.numel()), dtype=torch.float32,
                           device=x.device)
        tickets = torch.zeros(max(tiles, 0 if tickets is None else tickets.numel()), dtype=torch.int32,
                              device=x.device)
        _workspaces[key] = (sums, tickets)
    return sums, tickets


@triton.jit
def k_tile_range(K, BLOCK_K: tl.constexpr):
    """[first, last) K tiles of this program's split (axis 1 of the grid)."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(k_tiles, tl.num_programs(1))
    first = tl.program_id(1) * per
    return first, tl.minimum(first + per, k_tiles)


@triton.jit
def store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb):
    """y[offs_m, offs_n] = acc (BLOCK_M, BLOCK_N) summed over the splits (store_split_at)."""
    store_split_at(y_ptr, ws_ptr, ticket_ptr, acc, offs_m[:, None], offs_n[None, :], B, N, stride_yb)


@triton.jit
def store_split_at(y_ptr, ws_ptr, ticket_ptr, acc, b, n, B, N, stride_yb):
    """y[b, n] = acc summed over the splits, in y's dtype; b, n: each element's batch row and
    weight row (broadcast to acc's shape). A plain store with one split; else fp32 atomic adds
    into the workspace, and the last split of this tile (axis 0 of the grid) writes y and zeroes
    the workspace slice and the ticket again."""
    mask = (b < B) & (n < N)
    y_ptrs = y_ptr + b * stride_yb + n
    if tl.num_programs(1) == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        ws_ptrs = ws_ptr + b * N + n
        tl.atomic_add(ws_ptrs, acc, mask=mask, sem="relaxed")
        tl.debug_barrier()  # every thread's adds precede the ticket (released by acq_rel)
        ticket = tl.atomic_add(ticket_ptr + tl.program_id(0), 1, sem="acq_rel")
        if ticket == tl.num_programs(1) - 1:
            total = tl.load(ws_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.store(ws_ptrs, tl.zeros_like(total), mask=mask)
            tl.store(ticket_ptr + tl.program_id(0), 0)


# ----------------------------------------------------------------------------- integer codes → fp16

# Marlin's exponent trick: a code c < 2^10 OR-ed into the mantissa of fp16 1024.0 (0x6400) reads as
# 1024 + c, exactly; one HSUB2 / HFMA2 then takes away 1024 + zero. Per fp16 pair that is one LOP3
# (4-bit codes) or one PRMT (8-bit codes, the byte lands in the low mantissa bits) plus one
# half2 op, instead of an I2F, a subtraction and a multiply per weight. The interpreter cannot run
# PTX: USE_ASM=False computes the same values with plain integer ops.


# Per 4 bytes b0..b3 of 4-bit codes ($4): PRMT spreads them to [b0, 0, b1, 0] and [b2, 0, b3, 0];
# LOP3 keeps the low (0x000f000f) or high (0x00f000f0) nibbles under 0x6400: 1024 + lo and
# 1024 + 16·hi; HSUB2 takes 1024 + z ($5) from the first, HFMA2 scales the second by 1/16 and
# adds −(64 + z) ($9). Outputs: low nibbles ($0, $1), high nibbles ($2, $3).
INT4_PTX = tl.constexpr(
    "{ .reg .b32 t0, t1, c; mov.b32 c, 0x2c002c00;"  # fp16 pair (1/16, 1/16)
    " prmt.b32 t0, $4, 0, 0x4140; prmt.b32 t1, $4, 0, 0x4342;"
    " lop3.b32 $0, t0, 0x000f000f, 0x64006400, 0xea; lop3.b32 $1, t1, 0x000f000f, 0x64006400, 0xea;"
    " lop3.b32 $2, t0, 0x00f000f0, 0x64006400, 0xea; lop3.b32 $3, t1, 0x00f000f0, 0x64006400, 0xea;"
    " sub.f16x2 $0, $0, $5; sub.f16x2 $1, $1, $5;"
    " fma.rn.f16x2 $2, $2, c, $9; fma.rn.f16x2 $3, $3, c, $9; }")
# Per 4 bytes of 8-bit codes ($2): PRMT puts b0, b1 (b2, b3) under 0x64 high bytes, the fp16 pair
# (1024 + b0, 1024 + b1); HSUB2 takes 1024 + z ($3).
INT8_PTX = tl.constexpr(
    "{ .reg .b32 e; mov.b32 e, 0x64646464;"
    " prmt.b32 $0, $2, e, 0x5150; prmt.b32 $1, $2, e, 0x5352;"
    " sub.f16x2 $0, $0, $3; sub.f16x2 $1, $1, $3; }")


@triton.jit
def int4_minus_zero(packed, zero, USE_ASM: tl.constexpr):
    """uint8 (R, C), two 4-bit codes per byte, and integer zero points (R, 1) in [0, 15]
    → fp16 (low nibble − zero, high nibble − zero), each (R, C), exact."""
    if USE_ASM:
        # The constants per row, as fp16 pairs (bit patterns): 1024 + z = 0x6400 + z and
        # −(64 + z) = 0xD400 + 16·z. Built once per row, not per code: the asm reads one
        # register of each ($5, $9) and ignores the other copies pack=4 hands it.
        z = zero.to(tl.uint32)
        lo_zero = ((0x6400 + z) * 0x10001).to(tl.int32, bitcast=True)
        hi_zero = ((0xD400 + 16 * z) * 0x10001).to(tl.int32, bitcast=True)
        lo, hi = tl.inline_asm_elementwise(INT4_PTX, "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r", [packed, lo_zero, hi_zero],
                                           dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        p = packed.to(tl.int32)
        z = zero.to(tl.int32)
        lo = ((p & 15) - z).to(tl.float16)
        hi = ((p >> 4) - z).to(tl.float16)
    return lo, hi


@triton.jit
def int8_minus_zero(packed, zero, USE_ASM: tl.constexpr):
    """uint8 (R, C) codes and integer zero points (R, 1) → fp16 code − zero (R, C), exact."""
    if USE_ASM:
        # 1024 + z as an fp16 pair (0x6400 + z, z ≤ 255), once per row: the asm reads $3 only.
        z = zero.to(tl.uint32)
        lo_zero = ((0x6400 + z) * 0x10001).to(tl.int32, bitcast=True)
        w = tl.inline_asm_elementwise(INT8_PTX, "=r,=r,r,r,r,r,r", [packed, lo_zero], dtype=tl.float16,
                                      is_pure=True, pack=4)
    else:
        w = (packed.to(tl.int32) - zero.to(tl.int32)).to(tl.float16)
    return w


@triton.jit
def scale_columns(w, s_ptr, z_ptr, rows, n_mask, cols, K, stride_g, GROUP: tl.constexpr):
    """(w − zero) · scale in fp32, per element: codes w (R, C) at original columns `cols`
    ((1, C) or (R, C)). The slow path, for groups that BLOCK_K does not divide (every
    production group has the scale applied once per tile instead)."""
    offs = rows[:, None] * stride_g + cols // GROUP
    mask = n_mask[:, None] & (cols < K)
    scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.float32)
    return (w.to(tl.float32) - zero) * scale


@triton.jit
def dot_t(x, w, acc, DOT_F32: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) + x (BLOCK_M, BLOCK_K) @ w (BLOCK_N, BLOCK_K)ᵀ on the tensor cores,
    w rounded to x's dtype. DOT_F32: in fp32 (the interpreter's bf16 dot multiplies bit patterns)."""
    if DOT_F32:
        acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc)
    else:
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)
    return acc


@triton.jit
def dot_w(w, x, acc, DOT_F32: tl.constexpr):
    """acc (BLOCK_N, BLOCK_M) + w (BLOCK_N, BLOCK_K) @ x (BLOCK_M, BLOCK_K)ᵀ, w rounded to x's dtype:
    yᵀ, with the weight tile as the A operand, which Hopper's wgmma reads from registers (as
    dot_t's B operand it is staged in shared memory: more register moves). DOT_F32: as dot_t."""
    if DOT_F32:
        acc = tl.dot(w.to(tl.float32), tl.trans(x.to(tl.float32)), acc)
    else:
        acc = tl.dot(w.to(x.dtype), tl.trans(x), acc)
    return acc


# ----------------------------------------------------------------------------- static-compile spec

BATCH_1_16 = "batch 1-16"
LARGE_BATCH = "large batch"


@dataclass(frozen=True)
class CompileSpec:
    """How `python -m kernels.static_report` compiles one kernel for sm_90 without a GPU.

    A kernel module lists its specs in a module-level `STATIC` tuple; the report finds the module
    through kernels.FORMATS. Every config in `paths` is compiled with `constexprs` plus the
    config's own kwargs, all pointers 16-byte aligned and every int argument a multiple of 16
    except those in `unaligned` (what the JIT specialises on LLM shapes).
    """

    name: str  # row label, e.g. "int4 g128"
    kernel: object  # the @triton.jit function
    pointers: dict  # pointer argument (without "_ptr") → Triton element type: "fp16", "u8", "fp32", …
    packed: tuple  # pointer arguments (without "_ptr") that hold packed weight data
    constexprs: dict  # the format's constexprs, common to every config
    paths: dict  # BATCH_1_16 / LARGE_BATCH → tuple of production triton.Configs
    packed_bytes: Callable  # (config) → packed bytes one thread loads per main-loop iteration
    ctas: Callable  # (config, N, K, batch, CTAs per SM) → CTAs the launcher starts for y (batch, N) on the H200
    unaligned: tuple = ("B",)
    path_pointers: dict = None  # path → pointer types that differ there
    # Fraction of the predicated inline-asm gathers (kernels/bitmask.py) that load: the kept
    # fraction the packed_bytes count assumes. The report weights those loads by it.
    kept: float = 1.0
    # (config) → bytes the PTX loop issues per thread per iteration where that differs from
    # packed_bytes: loads that reread bytes (overlapping code words) count once in packed_bytes,
    # so instructions per byte are per byte streamed from memory, not per byte issued.
    ptx_bytes: Callable = None
    # Inline-asm strings (PTX text) whose `pack` elements do not depend on one another: any grouping
    # Triton hands them computes the same. Every other asm with pack > 1 must get runs of `pack`
    # consecutive elements of one row (kernels.static_report checks the compiled layouts).
    free_asm: tuple = ()


# ----------------------------------------------------------------------------- jit helpers

@triton.jit
def cols4(a, b, c, d):
    """Four (T, 1) → (T, 4) = [a, b, c, d], in-thread (join stacks along a new last axis): the
    operand of a warp-wide asm with pack = 4, row i thread i's four registers."""
    return tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), (a.shape[0], 4))


@triton.jit
def mma_fragments(acc00, acc01, acc10, acc11, row, q, N_TILES: tl.constexpr, BLOCK_N: tl.constexpr):
    """Warp-wide mma accumulators acc{mt}{nt} (T, 4) of two m16 tiles (weight rows row + 16mt) and
    N_TILES n8 tiles (batch rows 8nt) as (acc (T, 8·N_TILES), its batch rows, its weight rows):
    element j is fragment element i = j // (2·N_TILES) of tile mt = j // N_TILES % 2, nt =
    j % N_TILES, batch row 8nt + 2q + i % 2, weight row row + 16mt + 8(i // 2) (q = lane % 4)."""
    if N_TILES == 1:
        acc = tl.reshape(tl.join(acc00, acc10), (BLOCK_N, 8))
    else:
        acc = tl.reshape(tl.join(tl.join(acc00, acc10), tl.join(acc01, acc11)), (BLOCK_N, 16))
    j = tl.arange(0, 8 * N_TILES)[None, :]
    i = j // (2 * N_TILES)
    return acc, 8 * (j % N_TILES) + 2 * q + i % 2, row + 16 * (j // N_TILES % 2) + 8 * (i // 2)


@triton.jit
def split_cols4(v):
    """(T, 4) → its four columns, (T, 1) each, in-thread (cols4 undone)."""
    e, o = tl.split(tl.reshape(v, (v.shape[0], 2, 2)))  # columns 0 2 / 1 3
    c0, c2 = tl.split(e)
    c1, c3 = tl.split(o)
    return c0[:, None], c1[:, None], c2[:, None], c3[:, None]


@triton.jit
def unpack(packed, BITS: tl.constexpr):
    """(R, C) uint8 → (R, C·8/BITS) int32 codes; code j of a byte sits at bits [j·BITS, (j+1)·BITS).

    Built from tl.interleave, which puts the new minor dimension inside each thread: the codes keep
    the load's layout (a contiguous K chunk per thread) with no trip through shared memory.
    """
    p = packed.to(tl.int32)
    if BITS == 8:
        codes = p
    elif BITS == 4:
        codes = tl.interleave(p & 0xF, p >> 4)
    elif BITS == 2:  # (c0 ⋈ c2) ⋈ (c1 ⋈ c3) = c0 c1 c2 c3
        codes = tl.interleave(tl.interleave(p & 3, (p >> 4) & 3), tl.interleave((p >> 2) & 3, p >> 6))
    else:  # BITS == 1, the same bit-reversed pairing one level deeper
        even = tl.interleave(tl.interleave(p & 1, (p >> 4) & 1), tl.interleave((p >> 2) & 1, (p >> 6) & 1))
        odd = tl.interleave(tl.interleave((p >> 1) & 1, (p >> 5) & 1), tl.interleave((p >> 3) & 1, p >> 7))
        codes = tl.interleave(even, odd)
    return codes


@triton.jit
def _slots(x, N_KEEP: tl.constexpr):
    """(R, G·N_KEEP) → tuple of N_KEEP (R, G): slot t of every group (reshape + split, in-thread)."""
    R: tl.constexpr = x.shape[0]
    G: tl.constexpr = x.shape[1] // N_KEEP
    if N_KEEP == 1:
        slots = (x,)
    elif N_KEEP == 2:
        s0, s1 = tl.split(tl.reshape(x, (R, G, 2)))
        slots = (s0, s1)
    else:  # N_KEEP == 4: element [g, i, j] is slot 2i + j
        even, odd = tl.split(tl.reshape(x, (R, G, 2, 2)))
        s0, s2 = tl.split(even)
        s1, s3 = tl.split(odd)
        slots = (s0, s1, s2, s3)
    return slots


@triton.jit
def _column(vals, pos, c: tl.constexpr, N_KEEP: tl.constexpr):
    """Dense column c of every group (R, G): the kept value whose position is c, else 0."""
    col = tl.zeros_like(vals[0])
    for t in tl.static_range(N_KEEP):
        col = tl.where(pos[t] == c, vals[t], col)
    return col


@triton.jit
def nm_scatter(vals, pos, N_KEEP: tl.constexpr, M: tl.constexpr):
    """Kept values (R, C) and their in-group positions (R, C) → dense (R, C·M/N_KEEP), 0 elsewhere.

    Triton has no register scatter: split the N_KEEP slots of each group apart, select each of the
    M dense columns from them, and interleave the columns back (bit-reversed pairing, as in unpack).
    Positions within a group are distinct (the format lists them in increasing order).
    """
    v = _slots(vals, N_KEEP)
    p = _slots(pos, N_KEEP)
    if M == 4:
        dense = tl.interleave(tl.interleave(_column(v, p, 0, N_KEEP), _column(v, p, 2, N_KEEP)),
                              tl.interleave(_column(v, p, 1, N_KEEP), _column(v, p, 3, N_KEEP)))
    else:  # M == 8
        even = tl.interleave(tl.interleave(_column(v, p, 0, N_KEEP), _column(v, p, 4, N_KEEP)),
                             tl.interleave(_column(v, p, 2, N_KEEP), _column(v, p, 6, N_KEEP)))
        odd = tl.interleave(tl.interleave(_column(v, p, 1, N_KEEP), _column(v, p, 5, N_KEEP)),
                            tl.interleave(_column(v, p, 3, N_KEEP), _column(v, p, 7, N_KEEP)))
        dense = tl.interleave(even, odd)
    return dense


@triton.jit
def dequant(q, s_ptr, z_ptr, rows, n_mask, offs_k, k0, K, stride_g,
            GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """(q − zero) · scale in fp32 for a (BLOCK_N, BLOCK_K) tile of codes at original columns offs_k.

    GROUP = 0 means one group per row. The tile lies in one group → one scale per row; it holds
    whole groups → a (BLOCK_N, BLOCK_K/GROUP) load broadcast over a 3-D view (keeps Ŵ's layout);
    otherwise a per-element gather (L1-cached, but it imposes its own layout on the tile).
    """
    BLOCK_N: tl.constexpr = q.shape[0]
    q = q.to(tl.float32)
    if GROUP == 0 or GROUP % BLOCK_K == 0:
        offs = rows * stride_g + (k0 // GROUP if GROUP > 0 else 0)
        scale = tl.load(s_ptr + offs, mask=n_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
        zero = tl.load(z_ptr + offs, mask=n_mask, other=0).to(tl.float32)
        w = (q - zero[:, None]) * scale[:, None]
    elif BLOCK_K % GROUP == 0:
        GROUPS: tl.constexpr = BLOCK_K // GROUP
        offs_g = k0 // GROUP + tl.arange(0, GROUPS)
        offs = rows[:, None] * stride_g + offs_g[None, :]
        mask = n_mask[:, None] & (offs_g[None, :] * GROUP < K)
        scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N, GROUPS)
        zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.float32)
        w = (tl.reshape(q, (BLOCK_N, GROUPS, GROUP)) - zero[:, :, None]) * scale[:, :, None]
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))
    else:
        offs = rows[:, None] * stride_g + offs_k[None, :] // GROUP
        mask = n_mask[:, None] & (offs_k[None, :] < K)
        scale = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_K)
        zero = tl.load(z_ptr + offs, mask=mask, other=0).to(tl.float32)
        w = (q - zero) * scale
    return w


@triton.jit
def block_offsets(B, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row offsets into x/y (BLOCK_M,) and into the weight (BLOCK_N,) for this program.
    M varies fastest; up to batch BLOCK_M there is one row block."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n


@triton.jit
def accumulate(acc, w, x_ptr, offs_m, offs_k, B, K, stride_xb, stride_xk,
               GEMV_ROWS: tl.constexpr, DOT_F32: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) += x[offs_m, offs_k] (BLOCK_M, BLOCK_K) @ w (BLOCK_N, BLOCK_K)ᵀ, w fp32.

    x outside (B, K) reads as 0, so (finite) padding in Ŵ past K never matters.
    """
    k_mask = offs_k < K
    if GEMV_ROWS > 0:
        # CUDA cores, one row of x at a time: the product keeps Ŵ's layout (a K chunk per thread),
        # so the K reduction is mostly in-thread and Ŵ never goes through shared memory.
        for b in tl.static_range(GEMV_ROWS):
            xb = tl.load(x_ptr + b * stride_xb + offs_k * stride_xk, mask=k_mask, other=0.0)  # (BLOCK_K,)
            part = tl.sum(w * xb.to(tl.float32)[None, :], axis=1)  # (BLOCK_N,)
            acc = tl.where(offs_m[:, None] == b, acc + part[None, :], acc)
    else:
        x = tl.load(x_ptr + offs_m[:, None] * stride_xb + offs_k[None, :] * stride_xk,
                    mask=(offs_m[:, None] < B) & k_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        # Round Ŵ to x's dtype, as a dense fp16/bf16 weight would be, for the tensor cores.
        wt = tl.trans(w.to(x.dtype))  # (BLOCK_K, BLOCK_N)
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), wt.to(tl.float32), acc)
        else:
            acc = tl.dot(x, wt, acc)
    return acc


# ----------------------------------------------------------------------------- launcher checks

# The bitmask kernels read a stream's words or 16-byte vectors around each mask byte's first entry:
# up to 32 bytes past the stream's end. Where the tensor's storage holds that many more bytes (any
# bytes: what they read there lands in no column) they load without clamping each address.
STREAM_SLACK = 32


def aligned(t: torch.Tensor, nbytes: int, rows: bool = False) -> torch.Tensor:
    """t, or a contiguous copy where its start (with rows, also a row's start) is not nbytes-aligned:
    what a kernel passes that reads t in nbytes-wide loads."""
    if t.data_ptr() % nbytes == 0 and not (rows and t.stride(0) * t.element_size() % nbytes):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def has_slack(t: torch.Tensor) -> bool:
    """Whether STREAM_SLACK bytes of t's storage follow its last element (t contiguous)."""
    end = (t.storage_offset() + t.numel()) * t.element_size()
    return t.untyped_storage().nbytes() - end >= STREAM_SLACK


def with_slack(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """t (1-D) with STREAM_SLACK zero bytes of storage after it: t itself if it has them and no
    copy is asked for, else a copy in a fresh, larger buffer."""
    if has_slack(t) and not copy:
        return t
    buf = t.new_zeros(t.numel() + -(-STREAM_SLACK // t.element_size()))
    buf[:t.numel()].copy_(t)
    return buf[:t.numel()]


def describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def check_x(fmt: str, x: torch.Tensor) -> tuple[int, int]:
    """x must be (B, K) fp16/bf16 on a device the kernels can run on. Returns (B, K)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = describe(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fmt}: x must be a 2-D (B, K) tensor (reshape leading dims into B), got {got}")
    if x.dtype not in X_DTYPES:
        raise ValueError(f"{fmt}: x must be float16 or bfloat16, got {describe(x)}")
    if x.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{fmt}: x is on {x.device}; the Triton kernels need CUDA tensors "
                         "(or TRITON_INTERPRET=1 for CPU tensors)")
    return x.shape[0], x.shape[1]


def check_tensor(fmt: str, name: str, t: torch.Tensor, dtypes, shape: tuple[int, ...], x: torch.Tensor,
                 what: str) -> None:
    """Exact dtype, shape, contiguity and device, with the expected layout spelled out."""
    dtypes = dtypes if isinstance(dtypes, tuple) else (dtypes,)
    want = "/".join(str(d).removeprefix("torch.") for d in dtypes)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{fmt}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in dtypes or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fmt}: {name} must be {want} {what} = {tuple(shape)}, got {describe(t)}")
    if not t.is_contiguous():
        raise ValueError(f"{fmt}: {name} must be contiguous")
    if t.device != x.device:
        raise ValueError(f"{fmt}: {name} is on {t.device} but x is on {x.device}")


def check_group(fmt: str, group_size: int, k: int) -> tuple[int, int]:
    """Returns (g, G) with g = K for group_size = -1."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or not (group_size == -1 or group_size >= 1):
        raise ValueError(f"{fmt}: group_size must be -1 (one group per row) or a positive int, got {group_size!r}")
    g = k if group_size == -1 else group_size
    return g, -(-k // g)


def make_out(fmt: str, out: torch.Tensor | None, x: torch.Tensor, n_out: int) -> torch.Tensor:
    if out is None:
        return torch.empty((x.shape[0], n_out), dtype=x.dtype, device=x.device)
    check_tensor(fmt, "out", out, x.dtype, (x.shape[0], n_out), x, "(B, N)")
    return out
