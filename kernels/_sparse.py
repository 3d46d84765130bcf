"""The launcher and CUDA-core helpers of the sparse kernels (nm*, bitmask*).

Their batch-1…16 paths split over K as every kernel does (kernels/_common.py, "split over K":
split_for, workspace, k_tile_range, store_split): the grid is (row blocks, SPLIT).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import INTERPRET, plan_split_k, split_for, workspace


@triton.jit
def accumulate_tile(acc, acc2, w, x_ptr, offs_m, offs_k, B, K, stride_xb,
                    GEMV_ROWS: tl.constexpr, DOT_F32: tl.constexpr):
    """Add x (BLOCK_M, BLOCK_K) @ w (BLOCK_N, BLOCK_K)ᵀ. B = 1: one FFMA per weight into acc2
    (BLOCK_N, BLOCK_K), reduced once after the loop (rows_total); 1 < B ≤ 4: per x row, a sum over
    the tile into acc (BLOCK_M, BLOCK_N); tensor-core path (GEMV_ROWS = 0): tl.dot in x's dtype."""
    k_mask = offs_k < K
    if GEMV_ROWS == 1:
        xb = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0)  # (BLOCK_K,)
        acc2 += w.to(tl.float32) * xb.to(tl.float32)[None, :]
    elif GEMV_ROWS > 1:
        for b in tl.static_range(GEMV_ROWS):
            xb = tl.load(x_ptr + b * stride_xb + offs_k, mask=k_mask, other=0.0)  # (BLOCK_K,)
            part = tl.sum(w.to(tl.float32) * xb.to(tl.float32)[None, :], axis=1)  # (BLOCK_N,)
            acc = tl.where(offs_m[:, None] == b, acc + part[None, :], acc)
    else:
        x = tl.load(x_ptr + offs_m[:, None] * stride_xb + offs_k[None, :],
                    mask=(offs_m[:, None] < B) & k_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        wt = tl.trans(w.to(x.dtype))  # (BLOCK_K, BLOCK_N), rounded as a dense weight would be
        if DOT_F32:  # the interpreter's tl.dot multiplies bf16 bit patterns as integers
            acc = tl.dot(x.to(tl.float32), wt.to(tl.float32), acc)
        else:
            acc = tl.dot(x, wt, acc)
    return acc, acc2


@triton.jit
def rows_total(acc, acc2, GEMV_ROWS: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) after the loop: B = 1 reduces acc2 (BLOCK_N, …) over the rest here."""
    if GEMV_ROWS == 1:
        PER_ROW: tl.constexpr = acc2.numel // acc2.shape[0]
        acc = tl.sum(tl.reshape(acc2, (acc2.shape[0], PER_ROW)), axis=1)[None, :]
    return acc


@triton.jit
def code_value(q, zero):
    """Code q − zero in fp32, int32 inputs below 2^23: OR q into 2^23's mantissa, subtract."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + zero.to(tl.float32))

# ----------------------------------------------------------------------------- launch

# FMA path (x gathered per kept value, CUDA cores) up to this batch; tensor cores above, where
# B multiply-adds per weight would outgrow the weight stream.
GEMV_MAX_BATCH = 4

# Tests set this to run one exact config instead of the autotuned ones.
FORCE_CONFIG: triton.Config | None = None


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def batch_bucket(batch: int) -> int:
    """Autotune key for the batch: powers of two up to 2048."""
    return min(next_pow2(batch), 2048)


def launch(gemv, tiled, x: torch.Tensor, n_out: int, args: tuple, gemv_max: int = GEMV_MAX_BATCH, **meta) -> None:
    """Launch `gemv` (B ≤ gemv_max) or `tiled` over a (row blocks, SPLIT) grid.

    `args` are the kernel's runtime arguments from x_ptr to stride_yb; the workspace pointers
    and batch_bucket follow them. `meta` are the format's constexprs."""
    batch = x.shape[0]
    is_gemv = batch <= gemv_max
    kernel = gemv if is_gemv else tiled
    if is_gemv:
        meta.update(BLOCK_M=next_pow2(batch), GEMV_ROWS=batch, DOT_F32=False)
    else:  # the interpreter's tl.dot multiplies bf16 bit patterns as integers: give it fp32 there
        meta.update(GEMV_ROWS=0, DOT_F32=INTERPRET and x.dtype == torch.bfloat16)
    if FORCE_CONFIG is not None:
        kernel = kernel.fn
        meta.update(FORCE_CONFIG.all_kwargs())
    k = x.shape[1]

    def blocks(m: dict) -> int:
        return triton.cdiv(batch, m["BLOCK_M"]) * triton.cdiv(n_out, m["BLOCK_N"])

    largest = min(c.kwargs["BLOCK_N"] for c in (kernel.configs if FORCE_CONFIG is None else [FORCE_CONFIG]))
    ws, tickets = workspace(x, n_out, triton.cdiv(batch, 1 if is_gemv else 16) * triton.cdiv(n_out, largest))
    fn = kernel if FORCE_CONFIG is not None else kernel.fn

    def grid(m: dict) -> tuple[int, int]:  # m: the launch's arguments by name, the config's constexprs among them
        config = FORCE_CONFIG or next(c for c in kernel.configs if all(m[n] == v for n, v in c.kwargs.items()))
        options = dict(num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg)
        return blocks(m), split_for(fn, blocks(m), k, m["BLOCK_K"], x, (), {**m, **options}).splits

    kernel[grid](*args, ws, tickets, batch_bucket(batch), **meta)


# ----------------------------------------------------------------------------- static report

def static_spec(name: str, kernel, pointers: dict, packed: tuple, constexprs: dict, gemv_configs, tiled_configs,
                bytes_per_weight: float, kept: float = 1.0, ptx_bytes_per_weight: float | None = None,
                free_asm: tuple = ()):
    """The kernels._common.CompileSpec of a sparse kernel: its GEMV configs at batch 1 and its
    BLOCK_M = 16 tiled configs make the batch 1-16 path, the wider tiled ones the large batch.
    bytes_per_weight: packed bytes per (row, column) of W that the main loop streams; kept: the
    fraction of the predicated gathers that load (the sparsity the bytes assume);
    ptx_bytes_per_weight: what the loop's loads issue per weight where they reread bytes;
    free_asm: CompileSpec.free_asm."""
    from kernels._common import BATCH_1_16, LARGE_BATCH, CompileSpec

    def gemv(c):
        return triton.Config(dict(c.kwargs, BLOCK_M=1, GEMV_ROWS=1, DOT_F32=False), num_warps=c.num_warps,
                             num_stages=c.num_stages, maxnreg=c.maxnreg)

    def tiled(c):
        return triton.Config(dict(c.kwargs, GEMV_ROWS=0, DOT_F32=False), num_warps=c.num_warps,
                             num_stages=c.num_stages, maxnreg=c.maxnreg)

    def packed_bytes(c, per_weight: float = bytes_per_weight) -> int:  # per thread per main-loop iteration
        return round(c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] * per_weight / (32 * c.num_warps))

    def ctas(c, n: int, k: int, batch: int, per_sm: int) -> int:
        blocks = triton.cdiv(batch, c.kwargs["BLOCK_M"]) * triton.cdiv(n, c.kwargs["BLOCK_N"])
        return blocks * plan_split_k(blocks, k, c.kwargs["BLOCK_K"], per_sm).splits

    small = tuple(gemv(c) for c in gemv_configs) + tuple(tiled(c) for c in tiled_configs if c.kwargs["BLOCK_M"] <= 16)
    large = tuple(tiled(c) for c in tiled_configs if c.kwargs["BLOCK_M"] > 16)
    return CompileSpec(name=name, kernel=kernel, pointers=dict(pointers, ws="fp32", ticket="i32"), packed=packed,
                       constexprs=constexprs, paths={BATCH_1_16: small, LARGE_BATCH: large},
                       packed_bytes=packed_bytes, ctas=ctas, unaligned=("B", "batch_bucket"), kept=kept,
                       free_asm=free_asm,
                       ptx_bytes=None if ptx_bytes_per_weight is None else
                       lambda c: packed_bytes(c, ptx_bytes_per_weight))
