"""The sparse kernels (nm, nm-int8, bitmask, bitmask-int4, bitmask-int8) against float64.

Without CUDA they run on the CPU under TRITON_INTERPRET=1 (set before Triton is imported).
Shapes are not multiples of the blocks (N = 37, K = 72 … 1000); batches 1 and 3 take the
CUDA-core path, 17 the tensor-core one (two M blocks); every case splits K (the interpreter's
BLOCK_K = 64 leaves ≥ 2 K tiles, and 3 row blocks ask for many splits), so the fp32 workspace,
the tickets and the last split's store all run. Outputs start as NaN: all must be written.

Tolerance, elementwise: |y − x·Ŵᵀ| ≤ 1.25·eps·(|x|·|Ŵ|ᵀ), eps = 2^-10 (fp16) or 2^-7 (bf16): one
rounding of Ŵ to x's dtype (tensor-core path) plus one of y, 25% left for the summation order.
The interpreter casts fp32 to bf16 by truncation (numpy), a rounding of up to eps rather than
eps/2: there bf16 gets 2·eps.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`

pytest.importorskip("triton", reason="Triton is not installed: the kernels cannot run")

from kernels import FORMATS, _common, _sparse, bitmask, bitmask_int4, bitmask_int8, launcher, nm, nm_int8  # noqa: E402
from kernels._common import MIN_CTAS, SplitK, plan_split_k  # noqa: E402
from kernel_checks import assert_matches, seeded  # noqa: E402
from kernels.ptx_model import run_scalar as run_ptx  # noqa: E402
from kernels.testing import Packed, chunked, pack_bits, pack_nm, pack_nm_quant, quantize  # noqa: E402

if not torch.cuda.is_available() and not _common.INTERPRET:
    pytest.skip("kernels was imported before TRITON_INTERPRET=1 was set and there is no CUDA",
                allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = 37
BATCHES = [1, 3, 17]
DTYPES = [torch.float16, torch.bfloat16]




def sparse_weight(k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """(N, K) float32 with about `sparsity` zeros, row 5 empty, row 6 full."""
    w = torch.randn(N, k, generator=gen)
    w[torch.rand(N, k, generator=gen) < sparsity] = 0.0
    w[5] = 0.0
    w[6] = torch.randn(k, generator=gen)
    return w


def with_tail(t: torch.Tensor, fill) -> torch.Tensor:
    """t viewed in a longer buffer whose extra entries are `fill`: reading past nnz shows."""
    return torch.cat([t, torch.full((64,), fill, dtype=t.dtype)])[:t.numel()]


def bitmask_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    mask = pack_bits(w != 0, 1)
    if k % 8:  # padding bits past K are unspecified by the format: set them, the kernel must ignore them
        mask[:, -1] |= (0xFF << (k % 8)) & 0xFF
    return mask


def pack_bitmask_float(k: int, sparsity: float, dtype: torch.dtype, gen: torch.Generator) -> Packed:
    """Chunk padding and the stream's tail are NaN: a kernel that reads either turns outputs NaN."""
    w = sparse_weight(k, sparsity, gen).to(dtype)
    values, offsets = chunked(w != 0, w, 8, float("nan"))
    tensors = {"mask": bitmask_mask(w, k), "values": with_tail(values, float("nan")), "chunk_offsets": offsets}
    return Packed("bitmask", tensors, {}, w.double())


def pack_bitmask_quant(k: int, sparsity: float, bits: int, group_size: int, gen: torch.Generator) -> Packed:
    """Codes of the kept weights chunk by chunk; int4 two per byte, low nibble first; padding and
    tail all ones (a code that would show)."""
    w = sparse_weight(k, sparsity, gen)
    q, scales, zeros, w_hat = quantize(w, bits, group_size)
    codes, offsets = chunked(w != 0, q, 128 // bits, 2**bits - 1)
    stream = pack_bits(codes[None], 4)[0] if bits == 4 else codes.to(torch.uint8)
    tensors = {"mask": bitmask_mask(w, k), "values": with_tail(stream, 0xFF), "chunk_offsets": offsets,
               "scales": scales, "zeros": zeros}
    return Packed(f"bitmask-int{bits}", tensors, {"group_size": group_size}, torch.where(w != 0, w_hat, 0.0))


def nm_values(k: int, n: int, m: int, dtype: torch.dtype, gen: torch.Generator) -> Packed:
    return pack_nm(torch.randn(N, k, generator=gen).to(dtype), n, m)


# id → (module, K, packer(dtype, generator) → Packed)
CASES = {
    "nm-2:4-K136": (nm, 136, lambda dt, g: nm_values(136, 2, 4, dt, g)),
    "nm-2:4-K1000": (nm, 1000, lambda dt, g: nm_values(1000, 2, 4, dt, g)),
    "nm-4:8-K264": (nm, 264, lambda dt, g: nm_values(264, 4, 8, dt, g)),
    "nm-1:4-K72": (nm, 72, lambda dt, g: nm_values(72, 1, 4, dt, g)),
    "nm-2:8-K200": (nm, 200, lambda dt, g: nm_values(200, 2, 8, dt, g)),
    "nm-int8-2:4-K136-g32": (nm_int8, 136, lambda dt, g: pack_nm_quant(torch.randn(N, 136, generator=g), 2, 4, 8, 32)),
    "nm-int8-4:8-K264-g128": (nm_int8, 264, lambda dt, g: pack_nm_quant(torch.randn(N, 264, generator=g), 4, 8, 8, 128)),
    "nm-int8-2:4-K72-g-1": (nm_int8, 72, lambda dt, g: pack_nm_quant(torch.randn(N, 72, generator=g), 2, 4, 8, -1)),
    "nm-int8-2:4-K1000-g128": (nm_int8, 1000,
                               lambda dt, g: pack_nm_quant(torch.randn(N, 1000, generator=g), 2, 4, 8, 128)),
    "nm-int8-2:4-K200-g64": (nm_int8, 200, lambda dt, g: pack_nm_quant(torch.randn(N, 200, generator=g), 2, 4, 8, 64)),
    "nm-int8-4:8-K72-g24": (nm_int8, 72, lambda dt, g: pack_nm_quant(torch.randn(N, 72, generator=g), 4, 8, 8, 24)),
    "bitmask-K136-50%": (bitmask, 136, lambda dt, g: pack_bitmask_float(136, 0.5, dt, g)),
    "bitmask-K1024-50%": (bitmask, 1024, lambda dt, g: pack_bitmask_float(1024, 0.5, dt, g)),
    "bitmask-K384-90%": (bitmask, 384, lambda dt, g: pack_bitmask_float(384, 0.9, dt, g)),
    "bitmask-K75-90%": (bitmask, 75, lambda dt, g: pack_bitmask_float(75, 0.9, dt, g)),
    "bitmask-K264-10%": (bitmask, 264, lambda dt, g: pack_bitmask_float(264, 0.1, dt, g)),
    "bitmask-K1000-70%": (bitmask, 1000, lambda dt, g: pack_bitmask_float(1000, 0.7, dt, g)),
    "bitmask-int4-K136-50%-g32": (bitmask_int4, 136, lambda dt, g: pack_bitmask_quant(136, 0.5, 4, 32, g)),
    "bitmask-int4-K75-90%-g-1": (bitmask_int4, 75, lambda dt, g: pack_bitmask_quant(75, 0.9, 4, -1, g)),
    "bitmask-int4-K264-30%-g128": (bitmask_int4, 264, lambda dt, g: pack_bitmask_quant(264, 0.3, 4, 128, g)),
    "bitmask-int4-K600-50%-g64": (bitmask_int4, 600, lambda dt, g: pack_bitmask_quant(600, 0.5, 4, 64, g)),
    "bitmask-int4-K200-50%-g20": (bitmask_int4, 200, lambda dt, g: pack_bitmask_quant(200, 0.5, 4, 20, g)),
    # K % 128 == 0: up to batch 16 the bitmask formats take REG_MMA (mma fragments built in registers)
    "bitmask-int4-K1024-50%-g64": (bitmask_int4, 1024, lambda dt, g: pack_bitmask_quant(1024, 0.5, 4, 64, g)),
    "bitmask-int4-K640-30%-g128": (bitmask_int4, 640, lambda dt, g: pack_bitmask_quant(640, 0.3, 4, 128, g)),
    "bitmask-int4-K384-90%-g-1": (bitmask_int4, 384, lambda dt, g: pack_bitmask_quant(384, 0.9, 4, -1, g)),
    "bitmask-int8-K136-50%-g64": (bitmask_int8, 136, lambda dt, g: pack_bitmask_quant(136, 0.5, 8, 64, g)),
    "bitmask-int8-K75-80%-g-1": (bitmask_int8, 75, lambda dt, g: pack_bitmask_quant(75, 0.8, 8, -1, g)),
    "bitmask-int8-K1000-50%-g128": (bitmask_int8, 1000, lambda dt, g: pack_bitmask_quant(1000, 0.5, 8, 128, g)),
}




def run_case(case: str, batch: int, dtype: torch.dtype):
    module, k, make = CASES[case]
    gen = seeded(case, batch, str(dtype))
    packed = make(dtype, gen).to(DEVICE)
    x = torch.randn(batch, k, generator=gen).to(dtype).to(DEVICE)
    out = torch.full((batch, N), float("nan"), dtype=dtype, device=DEVICE)
    y = module.matmul(x, **packed.tensors, **packed.params, out=out)
    assert y is out
    return x, y, packed


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_float64(case, batch, dtype):
    x, y, packed = run_case(case, batch, dtype)
    assert_matches(y, x, packed.w_hat, truncating_bf16=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("bitmask")])
def test_fused_bitmask_dequantize_is_the_packers_weight(case, dtype):
    """The dispatcher's one-pass dequantization (kernels/dequant.py): Ŵ bit for bit the packer's
    float64 weight rounded once to dtype (float values are stored in dtype already), with NaN /
    all-ones chunk padding and stream tails and set mask bits past K that it must not read."""
    from kernels import dequant

    _, k, make = CASES[case]
    packed = make(dtype, seeded(case, str(dtype))).to(DEVICE)
    got = dequant.dequantize_bitmask(packed.format, **packed.tensors, **packed.params, k=k, dtype=dtype)
    assert got.shape == (N, k) and torch.isfinite(got).all()
    assert torch.equal(got, packed.w_hat.to(dtype))


def test_stream_slack_helpers():
    values = torch.arange(48, dtype=torch.uint8)
    assert not _common.has_slack(values) and _common.has_slack(values[:16])  # 32 bytes of its buffer follow
    padded = _common.with_slack(values)
    assert _common.has_slack(padded) and torch.equal(padded, values)
    assert _common.with_slack(padded) is padded
    assert _common.with_slack(padded, copy=True).data_ptr() != padded.data_ptr()
    halves = _common.with_slack(torch.ones(8, dtype=torch.float16))  # 16 more halves: 32 bytes
    assert _common.has_slack(halves) and halves.untyped_storage().nbytes() == 48


@pytest.mark.parametrize("case", ["bitmask-K1000-70%", "bitmask-K75-90%", "bitmask-int4-K600-50%-g64",
                                  "bitmask-int4-K264-30%-g128", "bitmask-int4-K75-90%-g-1",
                                  "bitmask-int4-K1024-50%-g64", "bitmask-int4-K384-90%-g-1", "bitmask-K1024-50%",
                                  "bitmask-int8-K1000-50%-g128", "bitmask-int8-K136-50%-g64"])
@pytest.mark.parametrize("batch", [1, 17])
def test_streams_with_slack_load_unclamped_to_the_same_y(case, batch):
    """A stream whose storage goes on for STREAM_SLACK bytes (a packed model's, on a GPU) is read
    without clamping each address: what lies there (NaN or all-ones codes here) lands in no column,
    and y is the clamped path's, bit for bit."""
    module, k, make = CASES[case]
    gen = seeded(case, batch)
    packed = make(torch.float16, gen).to(DEVICE)
    x = torch.randn(batch, k, generator=gen).half().to(DEVICE)
    values = packed.tensors["values"]
    poison = float("nan") if values.is_floating_point() else 0xFF
    buf = torch.full((values.numel() + _common.STREAM_SLACK // values.element_size(),), poison, dtype=values.dtype,
                     device=DEVICE)
    buf[:values.numel()] = values
    slack = buf[:values.numel()]
    exact = values.clone()  # storage of its own size: every address clamped
    assert _common.has_slack(slack) and not _common.has_slack(exact)
    clamped = module.matmul(x, **dict(packed.tensors, values=exact), **packed.params)
    unclamped = module.matmul(x, **dict(packed.tensors, values=slack), **packed.params)
    assert torch.equal(unclamped, clamped)
    assert_matches(unclamped, x, packed.w_hat, truncating_bf16=True)


@pytest.mark.parametrize("case", ["bitmask-int4-K1024-50%-g64", "bitmask-int4-K640-30%-g128",
                                  "bitmask-int4-K384-90%-g-1", "bitmask-K1024-50%", "bitmask-K384-90%"])
@pytest.mark.parametrize("batch", [1, 12])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_register_mma_path_matches_float64(case, batch, dtype, monkeypatch):
    """REG_MMA (8 and 16 batch rows per tile, batch rows past B in both) takes x up to batch 16 when
    K % 128 == 0 (test_kernel_matches_float64 adds batch 3, and 17 past it); x, the mask and
    (g = 64) the zero points and scales as unaligned views are copied, not misread. Row 5 is
    empty, row 6 full (every mask byte 0xFF, the one without a free slot for the zero code);
    N = 37 leaves rows past N in the last warp, and a split over K that starts inside a chunk."""
    module, k, make = CASES[case]
    calls = []
    launch = module.reg_launch

    def checked(kernel, x, rows, args, **meta):  # what the kernel reads in vectors is aligned for them
        x, mask, *_ = args
        assert x.data_ptr() % 16 == 0 and x.stride(0) % 8 == 0 and mask.data_ptr() % 16 == 0
        if meta.get("GROUP") == 64:  # scales, zeros: a word and a halfword per row and iteration
            assert args[4].data_ptr() % 4 == 0 and args[5].data_ptr() % 2 == 0
        calls.append(1)
        launch(kernel, x, rows, args, **meta)

    monkeypatch.setattr(module, "reg_launch", checked)
    gen = seeded(case, batch, str(dtype), "reg")
    packed = make(dtype, gen).to(DEVICE)
    x = torch.randn(batch, k + 8, generator=gen).to(dtype).to(DEVICE)[:, 8:]  # rows 16 bytes off 16-aligned
    off = {}
    for name in ("mask", "scales", "zeros"):  # each one element off its alignment
        if name in packed.tensors:
            t = packed.tensors[name]
            off[name] = torch.zeros(t.numel() + 1, dtype=t.dtype, device=DEVICE)[1:].view(t.shape)
            off[name].copy_(t)
    out = torch.full((batch, N), float("nan"), dtype=dtype, device=DEVICE)
    y = module.matmul(x, **dict(packed.tensors, **off), **packed.params, out=out)
    assert calls == [1]
    assert plan_split_k(1, k, 128).splits > 1
    assert_matches(y, x, packed.w_hat, truncating_bf16=True)


def test_split_workspace_is_left_zeroed():
    """A second call with the same workspace gives the same y (the last split zeroes it again)."""
    x, y, packed = run_case("bitmask-K1000-70%", 1, torch.float16)
    again = bitmask.matmul(x, **packed.tensors)
    assert torch.equal(again, y)
    for sums, tickets in _common._workspaces.values():
        assert not sums.any() and not tickets.any()


@pytest.mark.parametrize("case", list(CASES))
def test_dequantize_and_reference(case):
    """The torch reference dequantizes exactly the Ŵ the packer started from."""
    module, k, make = CASES[case]
    gen = seeded(case)
    packed = make(torch.float16, gen)
    needs_k = module in (bitmask, bitmask_int4, bitmask_int8)
    w = module.dequantize(**packed.tensors, **packed.params, **({"k": k} if needs_k else {}))
    assert torch.equal(w.double(), packed.w_hat)
    x = torch.randn(3, k, generator=gen).half()
    assert_matches(module.reference(x, **packed.tensors, **packed.params), x, packed.w_hat, truncating_bf16=True)


# one case per kernel and path for the production configs: K large enough for their widest BLOCK_K
PRODUCTION = {
    "nm": ("nm-2:4-K1000", nm.GEMV_CONFIGS, nm.TILED_CONFIGS),
    "nm-4:8": ("nm-4:8-K264", nm.GEMV_CONFIGS, nm.TILED_CONFIGS),
    "nm-int8": ("nm-int8-4:8-K264-g128", nm.GEMV_CONFIGS, nm.TILED_CONFIGS),
    "nm-int8-tc": ("nm-int8-2:4-K1000-g128", nm.TILED_CONFIGS, nm.TILED_CONFIGS),  # fp16: tensor cores at every batch
    "nm-int8-tc64": ("nm-int8-2:4-K200-g64", nm_int8.TC64_CONFIGS, nm_int8.TC64_CONFIGS),
    "bitmask": ("bitmask-K1000-70%", bitmask.VEC_CONFIGS, bitmask.VEC_CONFIGS),
    "bitmask-int4-lut": ("bitmask-int4-K264-30%-g128", bitmask_int4.LUT_CONFIGS, bitmask_int4.LUT_CONFIGS),
    "bitmask-int4-lut-g64": ("bitmask-int4-K600-50%-g64", bitmask_int4.LUT64_CONFIGS, bitmask_int4.LUT64_CONFIGS),
    "bitmask-int4": ("bitmask-int4-K136-50%-g32", bitmask.GEMV_CONFIGS, bitmask.TILED_CONFIGS),
    "bitmask-int8-lut": ("bitmask-int8-K1000-50%-g128", bitmask_int4.LUT8_CONFIGS, bitmask_int4.LUT8_CONFIGS),
    "bitmask-int8-lut-g64": ("bitmask-int8-K136-50%-g64", bitmask_int4.LUT8_64_CONFIGS, bitmask_int4.LUT8_64_CONFIGS),
}


@pytest.mark.parametrize("kernel", list(PRODUCTION))
def test_every_production_config(kernel, monkeypatch):
    case, gemv, tiled = PRODUCTION[kernel]
    for batch, configs in ((1, gemv), (3, gemv), (17, tiled)):
        for config in configs:
            monkeypatch.setattr(_sparse, "FORCE_CONFIG", config)
            x, y, packed = run_case(case, batch, torch.float16)
            assert_matches(y, x, packed.w_hat, truncating_bf16=True)


def test_split_plan_reaches_two_ctas_per_sm_and_every_split_has_a_tile():
    for n_blocks, k_tiles in ((128, 16), (344, 8), (128, 43), (256, 28), (1, 1), (3, 2), (100, 5)):
        for per_sm in (1, 2, 3, 4, 7):
            plan = plan_split_k(n_blocks, k_tiles * 64, 64, per_sm)
            per = -(-k_tiles // plan.splits)  # what k_tile_range gives each program
            assert plan.k_per_split == per * 64
            assert plan.splits <= k_tiles and (plan.splits - 1) * per < k_tiles  # every split has a tile
            assert n_blocks * plan.splits >= min(MIN_CTAS, n_blocks * k_tiles)


def test_split_plan_fills_whole_waves_at_the_occupancy():
    """The target shapes at bitmask-int4's REG_MMA occupancy (4 CTAs per SM at batch 1-8, 3 at 9-16):
    8192×28672 (64 tiles of 128 rows, 224 K blocks) takes 8 splits, one wave of 512 CTAs (3.9 per
    SM), where the fewest splits reaching 264 CTAs gave 5 (2.4 per SM, 45 iterations each);
    28672×8192 (224 tiles, 64 blocks) at 3 per SM takes 5 splits, 1120 CTAs in 2.8 waves of 13
    iterations, where 2 splits gave 448 CTAs: one wave and 52 CTAs of 32 iterations after it."""
    assert plan_split_k(64, 28672, 128, per_sm=4) == SplitK(8, 28 * 128)
    assert plan_split_k(224, 8192, 128, per_sm=4) == SplitK(2, 32 * 128)  # 448 of 528: one wave
    assert plan_split_k(224, 8192, 128, per_sm=3) == SplitK(5, 13 * 128)
    assert plan_split_k(64, 28672, 128, per_sm=4, sms=108) == SplitK(6, 38 * 128)  # an A100: 384 of 432
    assert plan_split_k(2000, 4096, 128, per_sm=4).splits == 1  # the tiles alone fill the GPU


def test_occupancy_is_read_from_the_compiled_kernel_once(monkeypatch):
    """On a GPU the launchers size the split by the CTAs the compiled kernel fits on an SM (its
    registers and shared memory), and a GPU run's JSON lists them; off it they plan for 2 per SM
    without compiling anything."""
    monkeypatch.setattr(_common, "_compiled", {})
    compiled = SimpleNamespace(n_regs=112, metadata=SimpleNamespace(shared=0, num_warps=4), _init_handles=lambda: None,
                               name="_kernel", hash="h")
    calls = []

    class Kernel:
        def warmup(self, *args, grid, **kwargs):
            calls.append((args, kwargs))
            return compiled

    kernel = Kernel()
    gpu_x = SimpleNamespace(is_cuda=True, device="cuda:0", dtype=torch.float16)
    args, meta = (None, 1, 4096), dict(BLOCK_K=128, num_warps=4)
    assert _common.ctas_per_sm(kernel, gpu_x, args, meta) == 4  # 112 registers × 128 threads
    assert _common.ctas_per_sm(kernel, gpu_x, args, meta) == 4
    assert len(calls) == 1
    assert _common.occupancy() == [dict(kernel="_kernel", registers=112, shared=0, warps=4, ctas_per_sm=4)]
    compiled.n_regs = 136
    assert _common.ctas_per_sm(kernel, gpu_x, (None, 2, 4096), meta) == 3  # another batch: looked up again
    assert _common.ctas_per_sm(kernel, torch.zeros(1), args, meta) == 2 and len(calls) == 2


def test_resident_ctas_follows_hoppers_limits():
    assert _common.resident_ctas(112, 0, 128) == 4  # 65536 registers / (112 · 128)
    assert _common.resident_ctas(130, 0, 128) == 3  # allocated in 8s per thread: 136
    assert _common.resident_ctas(64, 100 * 1024, 128) == 2  # 228 KB of shared memory, 1 KB more per CTA
    assert _common.resident_ctas(32, 0, 1024) == 2  # 2048 threads
    assert _common.resident_ctas(16, 0, 32) == 32  # 32 CTAs
    assert [_common.max_registers(n, 128) for n in (3, 4, 5)] == [168, 128, 96]  # the caps that let n share an SM
    assert all(_common.resident_ctas(_common.max_registers(n, 128), 0, 128) == n for n in (3, 4, 5))


def test_outgrown_workspace_is_kept_alive():
    """A graph captured earlier keeps the old workspace's address: growing must not free it."""
    x = torch.zeros(1, 8, dtype=torch.float16, device=DEVICE)
    small = _common.workspace(x, 4, 2)
    big = _common.workspace(x, small[0].numel() + 8, small[1].numel() + 1)
    assert big[0].numel() > small[0].numel() and any(old[0] is small[0] for old in _common._retired)


# The element-wise asm (kernels/nm.py's byte permutes, the bitmask kernels' columns) runs here on
# kernels.ptx_model, one thread, fed as Triton packs it with pack=2 (32-bit inputs one register per
# element; 16-bit outputs two per register, element 0 in the low half).


def test_nm48_ptx_places_kept_values_in_their_columns():
    """Every 4:8 pattern (70) against a random one, through selectors48's table entries."""
    import itertools
    patterns = list(itertools.combinations(range(8), 4))
    table = nm.selectors48()
    gen = torch.Generator().manual_seed(5)
    for i, pa in enumerate(patterns):
        pb = patterns[int(torch.randint(0, len(patterns), (), generator=gen))]
        values = torch.randint(1, 0xFFFF, (8,), generator=gen).tolist()  # two groups' four values, never 0
        inputs = {}
        for j, (pattern, vals) in enumerate(((pa, values[:4]), (pb, values[4:]))):
            entry = [w & 0xFFFFFFFF for w in table[sum(1 << c for c in pattern)]]
            inputs |= {f"${8 + j}": vals[0] | vals[1] << 16, f"${10 + j}": vals[2] | vals[3] << 16,
                       f"${12 + j}": entry[0], f"${14 + j}": entry[1], f"${16 + j}": entry[2], f"${18 + j}": entry[3]}
        out = run_ptx(nm.NM48_VALUES_PTX.value, inputs)
        for c in range(8):
            want_a = values[pa.index(c)] if c in pa else 0
            want_b = values[4 + pb.index(c)] if c in pb else 0
            assert out[f"${c}"] == want_a | want_b << 16, (pa, pb, c)

@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_codes4_ptx_expands_mask_bytes(dtype):
    """Every mask byte (and 64 random ones), codes at any nibble offset, zero points: column c ($c,
    16 bits) is code − zero where bit c is kept (its rank among the byte's kept codes), else 0."""
    gen = torch.Generator().manual_seed(4)
    table = bitmask_int4.byte_table()
    asm = (bitmask_int4.CODES4_BF16_PTX if dtype == torch.bfloat16 else bitmask_int4.CODES4_FP16_PTX).value
    bias = 0x4300 if dtype == torch.bfloat16 else 0x6400
    for m in list(range(256)) + torch.randint(0, 256, (64,), generator=gen).tolist():
        idx = int(torch.randint(0, 64, (), generator=gen))  # nibble index of the byte's first code
        stream = torch.randint(0, 16, (80,), generator=gen).tolist()
        z = int(torch.randint(0, 16, (), generator=gen))
        word = lambda w: sum(stream[8 * w + j] << 4 * j for j in range(8))  # noqa: E731
        entry = table[4 * m:4 * m + 4]
        assert entry[3] == 4 * bin(m).count("1")
        inputs = {"$8": word(idx >> 3), "$9": word((idx >> 3) + 1),  # $10: only the bit index mod 32 may count
                  "$10": 4 * (idx & 7) + (int(torch.randint(0, 1 << 20, (), generator=gen)) << 5),
                  "$11": entry[0], "$12": entry[1], "$13": entry[2], "$14": z, "$15": (bias + z) * 0x10001}
        ranks = [bin(m & ((1 << c) - 1)).count("1") for c in range(8)]
        out = run_ptx(asm, inputs)
        got = torch.tensor([out[f"${c}"] for c in range(8)], dtype=torch.int32).to(torch.int16).view(dtype).float()
        assert got.tolist() == [float(stream[idx + ranks[c]] - z if m >> c & 1 else 0) for c in range(8)], m


def test_codes8_ptx_expands_mask_bytes():
    """Every mask byte (and 64 random ones), 32 code bytes with the byte's first at any of the
    first 16 (the PTX gets the whole code index: only its low 4 bits may count), zero points:
    column c ($c, 16 bits) is code − zero where bit c is kept (its rank), else 0."""
    gen = torch.Generator().manual_seed(7)
    table = bitmask_int4.code8_table()
    for m in list(range(256)) + torch.randint(0, 256, (64,), generator=gen).tolist():
        codes = torch.randint(0, 256, (32,), generator=gen).tolist()
        idx = int(torch.randint(0, 1 << 20, (), generator=gen))
        s = idx & 15
        z = int(torch.randint(0, 256, (), generator=gen))
        entry = table[4 * m:4 * m + 4]
        assert entry[3] == bin(m).count("1")
        inputs = {f"${8 + j}": sum(codes[4 * j + q] << 8 * q for q in range(4)) for j in range(8)}
        inputs |= {"$16": idx, "$17": entry[0], "$18": entry[1], "$19": entry[2], "$20": z,
                   "$21": (0x6400 + z) * 0x10001}
        ranks = [bin(m & ((1 << c) - 1)).count("1") for c in range(8)]
        out = run_ptx(bitmask_int4.CODES8_COLUMNS_PTX.value, inputs)
        got = torch.tensor([out[f"${c}"] for c in range(8)], dtype=torch.int32).to(torch.int16).view(torch.float16)
        assert got.float().tolist() == [float(codes[s + ranks[c]] - z if m >> c & 1 else 0) for c in range(8)], m


def test_values_ptx_expands_mask_bytes():
    """Every mask byte (and 64 random ones), 16 values with the byte's first at any of the first 8
    (the PTX gets the whole value index: only its low 3 bits may count): column c ($c, one 16-bit
    output each, pack=1) is the value of rank popcount(m & (2^c − 1)) where bit c is kept, else 0."""
    gen = torch.Generator().manual_seed(6)
    table = bitmask.value_selectors()
    for m in list(range(256)) + torch.randint(0, 256, (64,), generator=gen).tolist():
        halves = torch.randint(1, 0xFFFF, (16,), generator=gen).tolist()  # never 0: a stray one shows
        idx = int(torch.randint(0, 1 << 20, (), generator=gen))
        s = idx & 7  # its first value: s + 7 < 16 always
        inputs = {f"${8 + j}": halves[2 * j] | halves[2 * j + 1] << 16 for j in range(8)}
        inputs |= {"$16": idx, "$17": table[m], "$18": bin(m).count("1")}
        ranks = [bin(m & ((1 << c) - 1)).count("1") for c in range(8)]
        out = run_ptx(bitmask.VALUES_PTX.value, inputs)
        assert [out[f"${c}"] for c in range(8)] == [halves[s + ranks[c]] if m >> c & 1 else 0 for c in range(8)], m


def test_nm24_ptx_places_kept_values_in_their_columns():
    patterns = [(p0, p1) for p0 in range(4) for p1 in range(p0 + 1, 4)]
    rng = torch.Generator().manual_seed(3)
    for a, b in [(i, j) for i in range(6) for j in range(6)]:
        values = torch.randint(1, 0xFFFF, (4,), generator=rng).tolist()  # two groups' pairs, never 0
        (pa0, pa1), (pb0, pb1) = patterns[a], patterns[b]
        out = run_ptx(nm.NM24_VALUES_PTX.value, {"$4": values[0] | values[1] << 16, "$5": values[2] | values[3] << 16,
                                                  "$6": pa0 | pa1 << 2, "$7": pb0 | pb1 << 2})
        for c in range(4):
            want_a = values[0] if c == pa0 else values[1] if c == pa1 else 0
            want_b = values[2] if c == pb0 else values[3] if c == pb1 else 0
            assert out[f"${c}"] == want_a | want_b << 16, (patterns[a], patterns[b], c)

def _x(k=64, dtype=torch.float16):
    return torch.zeros(2, k, dtype=dtype, device=DEVICE)


def _u8(*shape):
    return torch.zeros(*shape, dtype=torch.uint8, device=DEVICE)


def _f16(*shape):
    return torch.zeros(*shape, dtype=torch.float16, device=DEVICE)


def _co(n, chunks=1):
    return torch.zeros(n, chunks, dtype=torch.int32, device=DEVICE)


ERRORS = {
    "nm-K-not-multiple": (lambda: nm.matmul(_x(66), _f16(4, 33), _u8(4, 9)), r"K=66 must be a multiple of m=4"),
    "nm-values-shape": (lambda: nm.matmul(_x(), _f16(4, 31), _u8(4, 8)), r"values must be float16 .*\(4, 32\)"),
    "nm-indices-shape": (lambda: nm.matmul(_x(), _f16(4, 32), _u8(4, 9)), r"indices must be uint8 .*\(4, 8\)"),
    "nm-bad-n": (lambda: nm.matmul(_x(), _f16(4, 48), _u8(4, 12), n=3, m=4), r"n must be a power of two"),
    "nm-int8-group": (lambda: nm_int8.matmul(_x(), _u8(4, 32), _u8(4, 8), _f16(4, 7), _u8(4, 7), group_size=10),
                      r"group_size=10 must be a multiple of m=4"),
    "nm-int8-scales": (lambda: nm_int8.matmul(_x(), _u8(4, 32), _u8(4, 8), _f16(4, 3), _u8(4, 2), group_size=32),
                       r"scales must be float16 .*\(4, 2\)"),
    "bitmask-mask": (lambda: bitmask.matmul(_x(), _u8(4, 7), _f16(10), _co(4)), r"mask must be uint8 .*\(4, 8\)"),
    "bitmask-values-dtype": (lambda: bitmask.matmul(_x(), _u8(4, 8), _u8(10), _co(4)), r"values must be float16"),
    "bitmask-values-chunks": (lambda: bitmask.matmul(_x(), _u8(4, 8), _f16(10), _co(4)),
                              r"values holds 10 entries, not whole 16-byte chunks"),
    "bitmask-int4-chunks": (lambda: bitmask_int4.matmul(_x(), _u8(4, 8), _u8(10), _co(4), _f16(4, 1), _u8(4, 1),
                                                        group_size=-1), r"values holds 10 bytes, not whole 16-byte"),
    "bitmask-chunk-offsets": (lambda: bitmask.matmul(_x(), _u8(4, 8), _f16(10), _co(4, 2)),
                              r"chunk_offsets must be int32 \(N, ceil\(K/512\)\) \(format version 2\) = \(4, 1\)"),
    "bitmask-int4-values": (lambda: bitmask_int4.matmul(_x(), _u8(4, 8), _f16(10), _co(4), _f16(4, 1), _u8(4, 1),
                                                        group_size=-1), r"values must be uint8"),
    "bitmask-int4-zeros": (lambda: bitmask_int4.matmul(_x(), _u8(4, 8), _u8(10), _co(4), _f16(4, 2), _u8(4, 1),
                                                       group_size=32), r"zeros must be uint8 .*\(4, 2\)"),
    "bitmask-int8-group": (lambda: bitmask_int8.matmul(_x(), _u8(4, 8), _u8(10), _co(4), _f16(4, 1), _u8(4, 1),
                                                       group_size=0), r"group_size must be -1"),
    "bitmask-x-dtype": (lambda: bitmask.matmul(_x(dtype=torch.float32), _u8(2, 8), _f16(1), _co(2)),
                        r"x must be float16 or bfloat16"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_launcher_errors(case):
    call, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_registry_names_every_sparse_format():
    for fmt, module in (("nm", nm), ("nm-int8", nm_int8), ("bitmask", bitmask), ("bitmask-int4", bitmask_int4),
                        ("bitmask-int8", bitmask_int8)):
        assert fmt in FORMATS and launcher(fmt) is module.matmul
