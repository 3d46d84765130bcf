"""Packed-weight Triton kernels (kernels/) against float64 references.

Without CUDA everything runs on CPU under TRITON_INTERPRET=1 (set here before Triton is
imported); with CUDA the same tests run on the GPU. Shapes are deliberately not multiples of the
block sizes (N=37; K=72/75/136/200/264) and batches cover both launch paths of int4 / int8 / nm-int4:
1 and 3 (BLOCK_M = 16, split over K), 17 and 70 (large-batch tiles, 70 spans two row blocks).
Every production config (the kernels' STATIC specs) is run by some case: test_cases_run_every_production_config.

Tolerance, elementwise: |y − x·Ŵᵀ| ≤ 1.25·eps·(|x|·|Ŵ|ᵀ), eps = 2^-10 (fp16) or 2^-7 (bf16), computed in
float64 from the packer's Ŵ: one rounding of Ŵ to x's dtype (tiled path) plus one of y, each at
most eps/2 relative, with 25% left for fp32 accumulation order.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`

pytest.importorskip("triton", reason="Triton is not installed: the kernels cannot run")

from kernels import FORMATS, _common, available, bitmask, int4, int8, launcher, nm, nm_int4, nm_int8  # noqa: E402
from kernel_checks import assert_matches, seeded  # noqa: E402
from kernels.ptx_model import run_scalar as run_ptx  # noqa: E402
from kernels.testing import Packed, pack_bitmask, pack_bits, pack_nm, pack_nm_quant, pack_quant  # noqa: E402

if not torch.cuda.is_available() and not _common.INTERPRET:
    pytest.skip("kernels was imported before TRITON_INTERPRET=1 was set and there is no CUDA",
                allow_module_level=True)

DEVICE = "cpu" if _common.INTERPRET else "cuda"
N = 37
BATCHES = [1, 3, 17, 70]
DTYPES = [torch.float16, torch.bfloat16]




def random_weight(k: int, dtype: torch.dtype, gen: torch.Generator, sparsity: float = 0.0) -> torch.Tensor:
    w = torch.randn(N, k, generator=gen)
    if sparsity:
        w[torch.rand(N, k, generator=gen) < sparsity] = 0.0
    return w.to(dtype)


def bitmask_case(k: int, sparsity: float, dtype: torch.dtype, gen: torch.Generator):
    w = random_weight(k, dtype, gen, sparsity)
    w[5] = 0.0  # an empty row: its chunks take no bytes
    packed = pack_bitmask(w, fill=float("nan"))  # NaN chunk padding: a kernel reading it turns outputs NaN
    if k % 8:  # padding bits past K are unspecified by the format: set them, the kernel must ignore them
        packed.tensors["mask"][:, -1] |= (0xFF << (k % 8)) & 0xFF
    # NaN sentinels just past the last value: using anything beyond nnz turns outputs NaN.
    values = packed.tensors["values"]
    packed.tensors["values"] = torch.cat([values, torch.full((64,), float("nan"), dtype=values.dtype)])[:values.numel()]
    return packed


# id → (launcher module, K, packer(dtype, generator) → Packed). Quantized formats keep fp16 scales
# whatever x's dtype; nm / bitmask values are stored in x's dtype.
CASES = {
    "int4-K72-g-1": (int4, 72, lambda dt, g: pack_quant(random_weight(72, torch.float32, g), 4, -1)),
    "int4-K136-g32": (int4, 136, lambda dt, g: pack_quant(random_weight(136, torch.float32, g, 0.3), 4, 32)),
    "int4-K264-g128": (int4, 264, lambda dt, g: pack_quant(random_weight(264, torch.float32, g), 4, 128)),
    "int4-K75-g16": (int4, 75, lambda dt, g: pack_quant(random_weight(75, torch.float32, g), 4, 16)),
    "int4-K200-g64": (int4, 200, lambda dt, g: pack_quant(random_weight(200, torch.float32, g), 4, 64)),
    "int8-K136-g64": (int8, 136, lambda dt, g: pack_quant(random_weight(136, torch.float32, g, 0.3), 8, 64)),
    "int8-K75-g20": (int8, 75, lambda dt, g: pack_quant(random_weight(75, torch.float32, g), 8, 20)),
    "int8-K264-g128": (int8, 264, lambda dt, g: pack_quant(random_weight(264, torch.float32, g), 8, 128)),
    "int8-K72-g-1": (int8, 72, lambda dt, g: pack_quant(random_weight(72, torch.float32, g), 8, -1)),
    "nm2:4-K136": (nm, 136, lambda dt, g: pack_nm(random_weight(136, dt, g), 2, 4)),
    "nm2:4-K72": (nm, 72, lambda dt, g: pack_nm(random_weight(72, dt, g), 2, 4)),
    "nm4:8-K264": (nm, 264, lambda dt, g: pack_nm(random_weight(264, dt, g), 4, 8)),
    "nm1:4-K72": (nm, 72, lambda dt, g: pack_nm(random_weight(72, dt, g), 1, 4)),
    "nm-int4-2:4-K136-g32": (nm_int4, 136, lambda dt, g: pack_nm_quant(random_weight(136, torch.float32, g),
                                                                        2, 4, 4, 32)),
    "nm-int4-2:4-K264-g128": (nm_int4, 264, lambda dt, g: pack_nm_quant(random_weight(264, torch.float32, g),
                                                                         2, 4, 4, 128)),
    "nm-int4-2:4-K200-g64": (nm_int4, 200, lambda dt, g: pack_nm_quant(random_weight(200, torch.float32, g),
                                                                        2, 4, 4, 64)),
    "nm-int4-2:4-K72-g-1": (nm_int4, 72, lambda dt, g: pack_nm_quant(random_weight(72, torch.float32, g),
                                                                      2, 4, 4, -1)),
    "nm-int4-4:8-K72-g24": (nm_int4, 72, lambda dt, g: pack_nm_quant(random_weight(72, torch.float32, g),
                                                                      4, 8, 4, 24)),
    # K % 128 == 0: batch 2-16 in fp16 takes the sparse tensor-core path (mma.sp, on kernels.ptx_model here)
    "nm-int4-2:4-K256-g128": (nm_int4, 256, lambda dt, g: pack_nm_quant(random_weight(256, torch.float32, g),
                                                                         2, 4, 4, 128)),
    "nm-int4-2:4-K384-g64": (nm_int4, 384, lambda dt, g: pack_nm_quant(random_weight(384, torch.float32, g),
                                                                        2, 4, 4, 64)),
    "nm-int4-2:4-K128-g-1": (nm_int4, 128, lambda dt, g: pack_nm_quant(random_weight(128, torch.float32, g),
                                                                        2, 4, 4, -1)),
    "bitmask-K136-50%": (bitmask, 136, lambda dt, g: bitmask_case(136, 0.5, dt, g)),
    "bitmask-K75-90%": (bitmask, 75, lambda dt, g: bitmask_case(75, 0.9, dt, g)),
    "bitmask-K264-10%": (bitmask, 264, lambda dt, g: bitmask_case(264, 0.1, dt, g)),
}


def dequant_kwargs(module, packed, k: int) -> dict:
    needs_k = module in (int4, nm_int4, bitmask)
    return {**packed.params, **({"k": k} if needs_k else {})}




def run_case(case: str, batch: int, dtype: torch.dtype):
    module, k, make = CASES[case]
    gen = seeded(case, batch, str(dtype))
    packed = make(dtype, gen).to(DEVICE)
    x = torch.randn(batch, k, generator=gen).to(dtype).to(DEVICE)
    out = torch.full((batch, N), float("nan"), dtype=dtype, device=DEVICE)  # poison: unwritten → NaN
    y = module.matmul(x, **packed.tensors, **packed.params, out=out)
    assert y is out
    return x, y, packed


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_float64(case, batch, dtype):
    x, y, packed = run_case(case, batch, dtype)
    assert_matches(y, x, packed.w_hat)


@pytest.mark.parametrize("case", list(CASES))
def test_dequantize_and_reference(case):
    """The torch reference unpacks exactly the Ŵ the packer started from."""
    module, k, make = CASES[case]
    gen = seeded(case)
    packed = make(torch.float16, gen)
    w = module.dequantize(**packed.tensors, **dequant_kwargs(module, packed, k))
    assert torch.equal(w.double(), packed.w_hat)
    x = torch.randn(3, k, generator=gen).half()
    assert_matches(module.reference(x, **packed.tensors, **packed.params), x, packed.w_hat)


def test_pack_bits_follows_formats_md():
    # int4: element k in byte k // 2, low nibble for even k; a missing last element is 0.
    assert pack_bits(torch.tensor([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]
    # 2-bit nm indices: value c at bits (2c) mod 8 of byte 2c // 8.
    assert pack_bits(torch.tensor([[1, 2, 3, 0, 1]]), 2).tolist() == [[1 | 2 << 2 | 3 << 4, 1]]
    # bitmask: bit k mod 8 of byte k // 8.
    assert pack_bits(torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1]]), 1).tolist() == [[0b1101, 1]]
    packed = pack_nm(torch.tensor([[0.0, 5.0, 0.0, -6.0, 7.0, 0.0, 0.0, 8.0]]), 2, 4)
    assert packed.tensors["values"].tolist() == [[5.0, -6.0, 7.0, 8.0]]
    assert packed.tensors["indices"].tolist() == [[1 | 3 << 2 | 0 << 4 | 3 << 6]]


def production_configs(module) -> set[tuple]:
    """(constexprs, warps, stages) of every config in the module's STATIC specs."""
    return {key(c) for spec in module.STATIC for configs in spec.paths.values() for c in configs}


def key(config) -> tuple:
    return (*sorted(config.kwargs.items()), config.num_warps, config.num_stages)


SPARSE_MMA_CASES = [case for case in CASES if case.startswith("nm-int4-2:4") and CASES[case][1] % 128 == 0]
SPARSE_MMA_BATCHES = [9, 16]  # two n8 tiles (batch 3 in BATCHES: one)


@pytest.mark.parametrize("rows", [N, 256], ids=["N37", "N256"])
@pytest.mark.parametrize("batch", SPARSE_MMA_BATCHES)
@pytest.mark.parametrize("case", SPARSE_MMA_CASES)
def test_sparse_mma_tiles_match_float64(case, batch, rows):
    """The mma.sp path with two batch tiles, on rows that fill its 128-row blocks (256) and that do
    not (37: masked rows, whose index padding must still be valid metadata)."""
    module, k, make = CASES[case]
    gen = seeded(case, batch, rows)
    packed = make(torch.float16, gen)
    packed = Packed(packed.format, {name: t.repeat(-(-rows // N), 1)[:rows] for name, t in packed.tensors.items()},
                    packed.params, packed.w_hat.repeat(-(-rows // N), 1)[:rows]).to(DEVICE)
    assert nm_int4.config(batch, launch_group(make, k)).kwargs["SPARSE_MMA"]
    x = torch.randn(batch, k, generator=gen).half().to(DEVICE)
    out = torch.full((batch, rows), float("nan"), dtype=torch.float16, device=DEVICE)
    assert_matches(nm_int4.matmul(x, **packed.tensors, **packed.params, out=out), x, packed.w_hat)


def test_sparse_mma_copies_operands_it_cannot_load_whole():
    """x rows at an odd stride (2-byte aligned) and packed tensors off their 16-byte alignment (views
    at an offset) are copied first: the mma.sp path loads x as words and codes 16 bytes at a time."""
    module, k, make = CASES["nm-int4-2:4-K256-g128"]
    gen = seeded("unaligned")
    packed = make(torch.float16, gen).to(DEVICE)
    shifted = {name: torch.cat([t.flatten()[:1], t.flatten()])[1:].view(t.shape) for name, t in packed.tensors.items()}
    assert all(t.data_ptr() % 16 for t in shifted.values() if t.element_size() == 1)
    x = torch.randn(5, k + 1, generator=gen).half().to(DEVICE)[:, :k]  # row stride k + 1
    assert_matches(nm_int4.matmul(x, **shifted, **packed.params), x, packed.w_hat)


def test_cases_run_every_production_config():
    """The launchers pick one config per (batch path, group): the cases above reach all of them."""
    for module, config in ((int4, int4.config), (int8, int4.config), (nm_int4, nm_int4.config)):
        runs = [(case, batch) for case in CASES for batch in BATCHES]
        runs += [(case, batch) for case in SPARSE_MMA_CASES for batch in SPARSE_MMA_BATCHES]
        run = {key(config(batch, launch_group(CASES[case][2], CASES[case][1]))) for case, batch in runs
               if CASES[case][0] is module}
        assert production_configs(module) <= run, f"{module.__name__}: never run: {production_configs(module) - run}"


def launch_group(make, k: int) -> int:
    """The GROUP constexpr a case launches with (0: one group per row)."""
    g = make(torch.float16, seeded("group")).params["group_size"]
    return 0 if g == -1 or g >= k else g


# ----------------------------------------------------------------------------- inline PTX
# The interpreter does not run the kernels' element-wise asm (their USE_ASM=False twins run
# instead), so each asm string is checked here on kernels.ptx_model, one thread, fed as Triton packs it (pack=4: 4 uint8 codes in one register, element 0 in
# the low byte; fp16 outputs two per register, element 0 in the low half; 32-bit inputs one
# register per element). It checks the asm's logic, not ptxas.

def _f16(bits: int) -> np.float16:
    return np.array([bits], dtype=np.uint16).view(np.float16)[0]


def _bits(value) -> int:
    return int(np.array([value], dtype=np.float16).view(np.uint16)[0])


def _halves(reg: int) -> tuple:
    return np.float64(_f16(reg & 0xFFFF)), np.float64(_f16(reg >> 16))


def _pair(lo, hi) -> int:
    return _bits(lo) | _bits(hi) << 16




def test_int4_ptx_gives_codes_minus_zero():
    rng = np.random.default_rng(0)
    for _ in range(200):
        codes, z = rng.integers(0, 256, 4), int(rng.integers(0, 16))
        lo_zero, hi_zero = (0x6400 + z) * 0x10001, (0xD400 + 16 * z) * 0x10001
        inputs = {"$4": int.from_bytes(bytes(codes.tolist()), "little"),
                  **{f"${i}": lo_zero for i in range(5, 9)}, **{f"${i}": hi_zero for i in range(9, 13)}}
        out = run_ptx(_common.INT4_PTX.value, inputs)
        lo = [h for r in ("$0", "$1") for h in _halves(out[r])]
        hi = [h for r in ("$2", "$3") for h in _halves(out[r])]
        assert lo == [(c & 15) - z for c in codes] and hi == [(c >> 4) - z for c in codes], (codes, z)


def test_int8_ptx_gives_codes_minus_zero():
    rng = np.random.default_rng(1)
    for _ in range(200):
        codes, z = rng.integers(0, 256, 4), int(rng.integers(0, 256))
        inputs = {"$2": int.from_bytes(bytes(codes.tolist()), "little"),
                  **{f"${i}": (0x6400 + z) * 0x10001 for i in range(3, 7)}}
        out = run_ptx(_common.INT8_PTX.value, inputs)
        assert [h for r in ("$0", "$1") for h in _halves(out[r])] == [c - z for c in codes], (codes, z)


def _nm24_cases(seed: int, code_range: int):
    """Random quads of 2:4 groups (every pattern, and the all-zero padding byte) and zero points,
    with nm24_ptx's index and table operands: (codes (4, 2) of 0 … code_range − 1, nibbles, z,
    operands by offset from the index operand)."""
    rng = np.random.default_rng(seed)
    patterns = [(p0, p1) for p0 in range(4) for p1 in range(p0 + 1, 4)]
    for _ in range(300):
        codes, z = rng.integers(0, code_range, (4, 2)), int(rng.integers(0, code_range))
        nibbles = [(p0 | p1 << 2) if rng.random() < 0.9 else 0 for p0, p1 in
                   (patterns[i] for i in rng.integers(0, len(patterns), 4))]
        w = nibbles[0] | nibbles[1] << 4 | nibbles[2] << 8 | nibbles[3] << 12  # the quad's index halfword
        operands = {0: w | w << 16, 1: w | w << 16, **{i: 0x00640064 + z * 0x01000100 for i in range(2, 6)},
                    **{i: (0x6400 + z) * 0x10001 for i in range(6, 10)},
                    **{10 + 4 * t + j: word for t, word in enumerate(nm_int4.NM24_TABLES) for j in range(4)}}
        yield codes, nibbles, z, operands


def _nm24_check(out: dict, codes, nibbles, z):
    """Column c of each group is code − zero where a kept value sits in c, else exactly 0."""
    for c in range(4):
        got = [h for r in (f"${2 * c}", f"${2 * c + 1}") for h in _halves(out[r])]
        want = [(codes[g][0] - z if nibbles[g] and nibbles[g] & 3 == c else
                 codes[g][1] - z if nibbles[g] and nibbles[g] >> 2 == c else 0) for g in range(4)]
        assert got == want, (c, codes, nibbles, z)


def test_nm24_ptx_gives_dense_columns():
    """nm-int4's tiles: 4-bit codes, slot 0 in a group's low nibble."""
    for codes, nibbles, z, operands in _nm24_cases(2, 16):
        code_bytes = sum(int(codes[g][0] | codes[g][1] << 4) << 8 * g for g in range(4))
        out = run_ptx(nm_int4.NM24_PTX.value, {"$8": code_bytes, **{f"${9 + i}": v for i, v in operands.items()}})
        _nm24_check(out, codes, nibbles, z)


def test_nm24_codes8_ptx_gives_dense_columns():
    """nm-int8's tiles: 8-bit codes, a group's two in a halfword, two groups per register."""
    for codes, nibbles, z, operands in _nm24_cases(3, 256):
        pair = lambda g: int(codes[g][0] | codes[g][1] << 8)  # noqa: E731
        inputs = {"$8": pair(0) | pair(1) << 16, "$9": pair(2) | pair(3) << 16,
                  **{f"${10 + i}": v for i, v in operands.items()}}
        _nm24_check(run_ptx(nm_int8.NM24_CODES8_PTX.value, inputs), codes, nibbles, z)


def test_nm24_gemv_ptx_gives_kept_products():
    """Two rows of 16 groups (every 2:4 pattern, and the zero padding against x = 0), random codes and
    zero points, small integer x so that every fp16 sum is exact: lane r of $0 is row r's
    Σ x[col]·(q − z)."""
    rng = np.random.default_rng(3)
    patterns = [(p0, p1) for p0 in range(4) for p1 in range(p0 + 1, 4)]
    word = lambda b: int.from_bytes(bytes(int(v) for v in b), "little")  # noqa: E731
    for _ in range(100):
        x = rng.integers(-4, 5, (16, 4))
        codes, zeros = rng.integers(0, 256, (2, 16)), rng.integers(0, 16, 2)
        pos = [[patterns[i] for i in rng.integers(0, len(patterns), 16)] for _ in range(2)]
        for g in np.nonzero(rng.random(16) < 0.1)[0]:  # padding: code 0 at position 0, x 0
            x[g] = 0
            for r in range(2):
                codes[r, g], pos[r][g] = 0, (0, 0)
        nibbles = [[p0 | p1 << 2 for p0, p1 in row] for row in pos]
        index = [[nib[2 * j] | nib[2 * j + 1] << 4 for j in range(8)] for nib in nibbles]
        xw = [[_pair(x[g, 0], x[g, 1]), _pair(x[g, 2], x[g, 3])] for g in range(16)]
        inputs = {**{f"${8 + 4 * r + i}": word(codes[r, 4 * i:4 * i + 4]) for r in range(2) for i in range(4)},
                  **{f"${16 + 2 * r + i}": word(index[r][4 * i:4 * i + 4]) for r in range(2) for i in range(2)},
                  **{f"${20 + j}": xw[2 * j][0] for j in range(8)}, **{f"${28 + j}": xw[2 * j][1] for j in range(8)},
                  **{f"${36 + j}": xw[2 * j + 1][0] for j in range(8)},
                  **{f"${44 + j}": xw[2 * j + 1][1] for j in range(8)},
                  **{f"${52 + j}": (0x6400 + zeros[0]) | (0x6400 + zeros[1]) << 16 for j in range(8)},
                  **{f"${60 + j}": (0xD400 + 16 * zeros[0]) | (0xD400 + 16 * zeros[1]) << 16 for j in range(8)},
                  **{f"${68 + j}": 0x76543210 for j in range(8)}}
        out = run_ptx(nm_int4.NM24_GEMV_PTX.value, inputs)
        want = [sum(x[g, p0] * ((codes[r, g] & 15) - zeros[r]) + x[g, p1] * ((codes[r, g] >> 4) - zeros[r])
                    for g, (p0, p1) in enumerate(pos[r])) for r in range(2)]
        assert list(_halves(out["$0"])) == want, (codes, pos, zeros, x)


@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("fmt,group", [("int4", 128), ("int8", 64), ("nm-int4", 128), ("nm-int4", 64), ("int4", -1)])
def test_unmasked_path_on_llm_like_shapes(fmt, group, batch):
    """N and K multiples of the tiles (as on LLM shapes): the kernels drop the weight masks (EVEN)."""
    gen = seeded("even", fmt, group, batch)
    w = torch.randn(256, 512, generator=gen)
    packed = {"int4": lambda: pack_quant(w, 4, group), "int8": lambda: pack_quant(w, 8, group),
              "nm-int4": lambda: pack_nm_quant(w, 2, 4, 4, group)}[fmt]().to(DEVICE)
    x = torch.randn(batch, 512, generator=gen).half().to(DEVICE)
    out = torch.full((batch, 256), float("nan"), dtype=torch.float16, device=DEVICE)
    assert_matches(launcher(fmt)(x, **packed.tensors, **packed.params, out=out), x, packed.w_hat)


def test_strided_x_and_empty_batch():
    gen = seeded("strided")
    packed = pack_quant(random_weight(136, torch.float32, gen), 4, 32).to(DEVICE)
    for batch in (2, 20):
        wide = torch.randn(batch, 2 * 136, generator=gen).half().to(DEVICE)
        x = wide[:, ::2]  # stride (272, 2)
        assert_matches(int4.matmul(x, **packed.tensors, **packed.params), x, packed.w_hat)
        xt = torch.randn(136, batch, generator=gen).half().to(DEVICE).T  # stride (1, batch)
        assert_matches(int4.matmul(xt, **packed.tensors, **packed.params), xt, packed.w_hat)
    empty = int4.matmul(torch.empty(0, 136, dtype=torch.float16, device=DEVICE), **packed.tensors, **packed.params)
    assert empty.shape == (0, N)


def _inputs(fmt: str):
    """Small valid inputs per format (K=72, g=24): x (2, 72) fp16 and the packed tensors."""
    gen = seeded("errors", fmt)
    w = random_weight(72, torch.float32, gen)
    packed = {"int4": lambda: pack_quant(w, 4, 24), "nm": lambda: pack_nm(w.half(), 2, 4),
              "nm-int4": lambda: pack_nm_quant(w, 2, 4, 4, 24),
              "bitmask": lambda: pack_bitmask(torch.where(w.abs() < 0.67, 0.0, w).half())}[fmt]()
    return torch.randn(2, 72, generator=gen).half().to(DEVICE), packed.to(DEVICE).tensors


# (id, inputs, call(x, tensors), message regex). The tensors are valid unless the call breaks them.
BAD_CALLS = [
    ("x 3-D", "int4", lambda x, t: int4.matmul(x[None], **t, group_size=24), "x must be a 2-D"),
    ("x fp32", "int4", lambda x, t: int4.matmul(x.float(), **t, group_size=24), "x must be float16 or bfloat16"),
    ("K mismatch", "int4", lambda x, t: int4.matmul(x[:, :70], **t, group_size=24),
     r"qweight must be uint8 \(N, ceil\(K/2\)\) = \(37, 35\), got uint8 \(37, 36\)"),
    ("int8 on int4 bytes", "int4", lambda x, t: int8.matmul(x, **t, group_size=24), r"qweight must be uint8 \(N, K\)"),
    ("group mismatch", "int4", lambda x, t: int4.matmul(x, **t, group_size=16), r"scales must be float16 .*\(37, 5\)"),
    ("group 0", "int4", lambda x, t: int4.matmul(x, **t, group_size=0), "group_size must be -1"),
    ("scales fp32", "int4", lambda x, t: int4.matmul(x, t["qweight"], t["scales"].float(), t["zeros"], group_size=24),
     "scales must be float16"),
    ("qweight strided", "int4",
     lambda x, t: int4.matmul(x, t["qweight"].t().contiguous().t(), t["scales"], t["zeros"], group_size=24),
     "qweight must be contiguous"),
    ("out shape", "int4", lambda x, t: int4.matmul(x, **t, group_size=24, out=x.new_empty(2, 36)),
     r"out must be float16 \(B, N\)"),
    ("out dtype", "int4", lambda x, t: int4.matmul(x, **t, group_size=24, out=x.new_empty(2, 37).float()),
     "out must be float16"),
    ("nm K % m", "nm", lambda x, t: nm.matmul(x[:, :70], **t), "K=70 must be a multiple of m=4"),
    ("nm m=16", "nm", lambda x, t: nm.matmul(x, **t, n=2, m=16), "m must be 4 or 8"),
    ("nm 3:4", "nm", lambda x, t: nm.matmul(x, **t, n=3, m=4), "n must be a power of two"),
    ("nm x bf16", "nm", lambda x, t: nm.matmul(x.bfloat16(), **t), "values must be bfloat16"),
    ("nm indices", "nm", lambda x, t: nm.matmul(x, t["values"], t["indices"][:, :-1]), "indices must be uint8"),
    ("nm-int4 values", "nm-int4", lambda x, t: nm_int4.matmul(x, **{**t, "values": t["values"][:, :-1]}, group_size=24),
     r"values must be uint8 \(N, ceil\(Kc/2\)\)"),
    ("nm-int4 group", "nm-int4", lambda x, t: nm_int4.matmul(x, **t, group_size=-1), "scales must be float16"),
    ("bitmask offsets", "bitmask", lambda x, t: bitmask.matmul(x, **{**t, "chunk_offsets": t["chunk_offsets"][:-1]}),
     r"chunk_offsets must be int32 \(N, ceil\(K/512\)\) \(format version 2\) = \(37, 1\)"),
    ("bitmask offsets int64", "bitmask",
     lambda x, t: bitmask.matmul(x, **{**t, "chunk_offsets": t["chunk_offsets"].long()}), "chunk_offsets must be int32"),
    ("bitmask values 2-D", "bitmask", lambda x, t: bitmask.matmul(x, **{**t, "values": t["values"][None]}),
     "values must be a 1-D"),
    ("bitmask mask K", "bitmask", lambda x, t: bitmask.matmul(x[:, :64], **t), r"mask must be uint8 .*\(37, 8\)"),
]


@pytest.mark.parametrize("fmt,call,match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_launcher_errors(fmt, call, match):
    x, tensors = _inputs(fmt)
    with pytest.raises(ValueError, match=match):
        call(x, tensors)


def test_registry():
    assert {"int4", "int8", "nm", "nm-int4", "bitmask"} <= set(FORMATS)
    assert launcher("nm-int4") is nm_int4.matmul and launcher("int8") is int8.matmul
    with pytest.raises(ValueError, match="no kernel for format 'dense'"):
        launcher("dense")
    assert available()


@pytest.mark.skipif(not torch.cuda.is_available() or _common.INTERPRET, reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 16, 33, 512])
def test_llm_shape_on_gpu(batch):
    """An LLM-like shape (K multiple of 128, N of 64): compiled kernels, 16-byte specialisations."""
    gen = seeded("gpu", batch)
    w = torch.randn(2048, 1024, generator=gen)
    x = torch.randn(batch, 1024, generator=gen).half().cuda()
    for packed in (pack_quant(w, 4, 128), pack_quant(w, 8, 128), pack_nm(w.half(), 2, 4),
                   pack_nm_quant(w, 2, 4, 4, 128), pack_bitmask(torch.where(w.abs() < 0.67, 0.0, w).half())):
        packed = packed.to("cuda")
        assert_matches(launcher(packed.format)(x, **packed.tensors, **packed.params), x, packed.w_hat)


@pytest.mark.skipif(not torch.cuda.is_available() or _common.INTERPRET, reason="needs a CUDA GPU")
def test_ctas_per_sm_match_the_drivers_occupancy():
    """The split over K fills whole waves of the CTAs an SM holds (kernels/_common.py): its count,
    from the compiled kernel's registers and shared memory, against CUDA's occupancy calculator
    for every kernel a batch-1 and a batch-16 call compiled. One too many would leave a few CTAs
    to a second wave."""
    import ctypes

    test_llm_shape_on_gpu(1)
    test_llm_shape_on_gpu(16)
    driver = ctypes.CDLL("libcuda.so.1")
    assert _common._compiled
    for compiled in _common._compiled.values():
        blocks = ctypes.c_int()
        threads = 32 * compiled.metadata.num_warps
        assert driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(blocks), ctypes.c_void_p(compiled.function), threads,
            ctypes.c_size_t(compiled.metadata.shared)) == 0
        assert _common.resident_ctas(compiled.n_regs, compiled.metadata.shared, threads) == blocks.value, \
            (compiled.name, compiled.n_regs, compiled.metadata.shared, threads)
