"""`bitmask` sparse weights at any sparsity (docs/formats.md, version 1): y = x @ Ŵᵀ.

Format, W (N, K):
    mask         uint8 (N, ceil(K/8))        bit k mod 8 of byte k // 8 is 1 where W[n, k] is kept
    values       float16/bfloat16 (nnz,)     kept values, row-major
    row_offsets  int32 (N + 1,)              row n's values are values[row_offsets[n] : row_offsets[n+1]]
Math:
    slot(n, k) = row_offsets[n] + popcount(mask[n, 0:k])       (kept values before k in the row)
    Ŵ[n, k]    = values[slot(n, k)] if mask bit (n, k) else 0
    y[b, n]    = Σ_k x[b, k] · Ŵ[n, k]         fp32 accumulate, y in x's dtype
Shapes (rows, cols): x (B, K) fp16/bf16 (values' dtype), y (B, N).

Split over K (kernels/_sparse.py): a program starts at its split's first K tile, so it first
counts the kept weights of its rows before that tile (a byte popcount over the mask prefix,
outside the main loop). In the loop, per (BLOCK_N, BLOCK_K) tile: the mask bytes are unpacked
in-thread (each thread owns a contiguous run of columns), an exclusive tl.cumsum gives each
kept column its slot, and the value is read by a predicated gather load (L1 serves the
neighbouring slots). GEMV on CUDA cores for B ≤ 4, tl.dot with BLOCK_M = 16 above.
The helpers here (values_before, tile_slots) serve the quantized bitmask kernels too.
row_offsets and values are trusted (checking them would cost a device sync per call).

Measured on sm_90 (Triton 3.9, `python -m kernels.static_report --kernel bitmask`), batch 1:
about 14 instructions per packed byte at 50% sparsity (was 41–51), 16-bit value loads: a
value's address depends on the mask, so the loads cannot be 128 bits wide without a layout
that aligns each row's values (docs/formats.md, "Kernel limits").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import _sparse
from kernels._common import check_tensor, check_x, make_out, unpack
from kernels._sparse import accumulate_tile, k_tile_range, rows_total, store_split

FORMAT = "bitmask"


@triton.jit
def popcount8(b):
    """Set bits of each byte value (int32 in 0 … 255), SWAR."""
    b = b - ((b >> 1) & 0x55)
    b = (b & 0x33) + ((b >> 2) & 0x33)
    return (b + (b >> 4)) & 0x0F


@triton.jit
def mask_tile(mask_rows, n_mask, t, MB, BLOCK_K: tl.constexpr):
    """Mask bytes (BLOCK_N, BLOCK_K/8) of K tile t; MB = mask bytes per row (a multiple of 16 on
    LLM shapes, so each thread's bytes load as one vector)."""
    offs_b = t * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    return tl.load(mask_rows + offs_b[None, :], mask=n_mask[:, None] & (offs_b[None, :] < MB), other=0)


@triton.jit
def values_before(ro_ptr, mask_rows, offs_n, n_mask, first, MB, BLOCK_K: tl.constexpr):
    """(BLOCK_N,) int32: index in the value stream of each row's first kept weight at or after
    K tile `first` (row_offsets + kept weights of tiles 0 … first − 1, all inside K)."""
    start = tl.load(ro_ptr + offs_n, mask=n_mask, other=0)
    for t in range(0, first):
        start += tl.sum(popcount8(mask_tile(mask_rows, n_mask, t, MB, BLOCK_K).to(tl.int32)), axis=1)
    return start


@triton.jit
def tile_slots(mask_rows, n_mask, t, K, MB, BLOCK_K: tl.constexpr):
    """Kept flags (BLOCK_N, BLOCK_K) int32 0/1 of K tile t, each kept column's exclusive slot
    among the tile's kept columns, and the kept count per row (BLOCK_N,)."""
    kept = unpack(mask_tile(mask_rows, n_mask, t, MB, BLOCK_K), 1)
    offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
    kept = tl.where(offs_k[None, :] < K, kept, 0)  # padding bits of the last byte are unspecified
    slot = tl.cumsum(kept, axis=1) - kept
    return kept, slot, tl.sum(kept, axis=1)


@triton.jit
def _bitmask_matmul_kernel(
    x_ptr, mask_ptr, v_ptr, ro_ptr, y_ptr,
    B, N, K, MB,  # MB: mask bytes per row
    stride_xb, stride_mask, stride_yb,
    ws_ptr, ticket_ptr,  # split-K workspace (kernels/_sparse.py)
    batch_bucket,  # autotune key only
    GEMV_ROWS: tl.constexpr,  # B on the CUDA-core path, 0 on the tensor-core one
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    num_m = tl.cdiv(B, BLOCK_M)
    offs_m = (tl.program_id(0) % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = (tl.program_id(0) // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = offs_n < N
    mask_rows = mask_ptr + offs_n.to(tl.int64)[:, None] * stride_mask  # (BLOCK_N, 1)
    first, last = k_tile_range(K, BLOCK_K)
    # int32 value indices suffice: row_offsets are int32, so nnz < 2^31.
    start = values_before(ro_ptr, mask_rows, offs_n, n_mask, first, MB, BLOCK_K)  # (BLOCK_N,)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # B = 1: per weight, reduced after the loop
    for t in range(first, last):
        kept, slot, count = tile_slots(mask_rows, n_mask, t, K, MB, BLOCK_K)
        w = tl.load(v_ptr + (start[:, None] + slot), mask=kept != 0, other=0.0)  # (BLOCK_N, BLOCK_K)
        start += count
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)
        acc, acc2 = accumulate_tile(acc, acc2, w, x_ptr, offs_m, offs_k, B, K, stride_xb, GEMV_ROWS, DOT_F32)
    acc = rows_total(acc, acc2, GEMV_ROWS)
    store_split(y_ptr, ws_ptr, ticket_ptr, acc, offs_m, offs_n, B, N, stride_yb)


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
    gemv, tiled = interpret_configs if _sparse._interpreting() else (gemv_configs, tiled_configs)
    return (triton.autotune(gemv, key=key)(kernel),
            triton.autotune(tiled, key=key, prune_configs_by={"early_config_prune": prune_tiled})(kernel))


_GEMV, _TILED = tuned(_bitmask_matmul_kernel, GEMV_CONFIGS, TILED_CONFIGS, INTERPRET_CONFIGS, KEY)


def check_bitmask(fmt: str, x: torch.Tensor, mask: torch.Tensor, row_offsets: torch.Tensor) -> tuple[int, int, int]:
    """Checks x, mask (N, ceil(K/8)) and row_offsets (N + 1,); returns (B, K, N)."""
    batch, k = check_x(fmt, x)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{fmt}: mask must be a 2-D uint8 (N, ceil(K/8)) tensor")
    rows = mask.shape[0]
    check_tensor(fmt, "mask", mask, torch.uint8, (rows, -(-k // 8)), x, "(N, ceil(K/8))")
    check_tensor(fmt, "row_offsets", row_offsets, torch.int32, (rows + 1,), x, "(N + 1,)")
    return batch, k, rows


def matmul(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, *,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """y (B, N) = x (B, K) @ Ŵᵀ for `bitmask`. values must have x's dtype.
    `out` (B, N) in x's dtype is written if given (else allocated)."""
    batch, k, rows = check_bitmask(FORMAT, x, mask, row_offsets)
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"{FORMAT}: values must be a 1-D (nnz,) tensor")
    check_tensor(FORMAT, "values", values, x.dtype, tuple(values.shape), x, "(x's dtype) (nnz,)")
    out = make_out(FORMAT, out, x, rows)
    if batch == 0 or rows == 0:
        return out
    if k == 0:
        return out.zero_()
    x = x if x.stride(1) == 1 else x.contiguous()
    _sparse.launch(_GEMV, _TILED, x, rows,
                   (x, mask, values, row_offsets, out, batch, rows, k, mask.shape[1],
                    x.stride(0), mask.stride(0), out.stride(0)))
    return out


def kept_and_slots(mask: torch.Tensor, row_offsets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept flags (N, K) bool and each column's index in the value stream (N, K) int64."""
    shifts = torch.arange(8, device=mask.device, dtype=torch.int32)
    kept = ((mask.to(torch.int32)[:, :, None] >> shifts) & 1).reshape(mask.shape[0], -1)[:, :k]
    return kept.bool(), row_offsets[:-1, None].long() + kept.cumsum(1) - kept  # exclusive popcount prefix


def dequantize(mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor, *, k: int) -> torch.Tensor:
    """Ŵ (N, K) float32 with torch ops (K is needed: the mask rounds it up to bytes)."""
    kept, slot = kept_and_slots(mask, row_offsets, k)
    gathered = values.float()[slot.clamp(max=max(values.numel() - 1, 0))] if values.numel() else 0.0
    return torch.where(kept, gathered, 0.0)


def reference(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor) -> torch.Tensor:
    """Torch: expand to dense, fp32 matmul, cast to x's dtype."""
    return (x.float() @ dequantize(mask, values, row_offsets, k=x.shape[1]).T).to(x.dtype)


# 50% sparsity: the mask (1/8 B per weight) and half the weights' values
STATIC = (_sparse.static_spec(
    "bitmask 50%", _bitmask_matmul_kernel, dict(x="fp16", mask="u8", v="fp16", ro="i32", y="fp16"), ("mask", "v"),
    {}, GEMV_CONFIGS, TILED_CONFIGS, 1 / 8 + 0.5 * 2),)
