"""kernels.ptx_model: the model of PTX that runs the warp-wide inline asm under the interpreter.

Its mma.sp is checked against a float64 product built from the PTX ISA's fragment layouts (as
ptx_model's docstring states them), its byte and bit operations against the scalar prmt the other
kernel tests use, and its interpreter hook on a small kernel, with the errors a kernel author sees.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_checks import prmt as scalar_prmt
from kernels import ptx_model

WARPS = 3
LANES = np.arange(32 * WARPS) % 32
G, T = LANES >> 2, LANES & 3
PATTERNS = [(p0, p1) for p0 in range(4) for p1 in range(p0 + 1, 4)]


def f16_pairs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return ptx_model.pair(lo.astype(np.float64), hi.astype(np.float64))


def random_problem(rng):
    """Per warp: A (16 × 32, 2:4, fp16 values), its kept values and patterns, B (32 × 8), C (16 × 8)."""
    kept = rng.standard_normal((WARPS, 16, 16)).astype(np.float16)
    patterns = rng.integers(0, len(PATTERNS), (WARPS, 16, 8))
    dense = np.zeros((WARPS, 16, 32))
    for w in range(WARPS):
        for r in range(16):
            for grp in range(8):
                p0, p1 = PATTERNS[patterns[w, r, grp]]
                dense[w, r, 4 * grp + p0] = kept[w, r, 2 * grp]
                dense[w, r, 4 * grp + p1] = kept[w, r, 2 * grp + 1]
    b = rng.standard_normal((WARPS, 32, 8)).astype(np.float16)
    c = rng.standard_normal((WARPS, 16, 8)).astype(np.float32)
    return kept, patterns, dense, b, c


def fragments(kept, patterns, b, c):
    """The registers each lane holds (ptx_model's docstring, from the PTX ISA)."""
    w = np.arange(32 * WARPS) // 32
    a = [f16_pairs(kept[w, G + dr, 2 * T + dc], kept[w, G + dr, 2 * T + dc + 1])
         for dr, dc in ((0, 0), (8, 0), (0, 8), (8, 8))]
    bregs = [f16_pairs(b[w, 2 * T + 8 * i, G], b[w, 2 * T + 8 * i + 1, G]) for i in range(4)]
    cregs = [ptx_model.f32_bits(c[w, G + dr, 2 * T + dc]) for dr, dc in ((0, 0), (0, 1), (8, 0), (8, 1))]
    nibble = lambda rows, grp: np.array([PATTERNS[p][0] | PATTERNS[p][1] << 2 for p in patterns[w, rows, grp]])  # noqa: E731
    e = np.zeros(32 * WARPS, dtype=np.uint32)
    for j in range(4):  # lanes t = 0, 1: groups 4t + j of rows g (bits 15:0) and g + 8 (bits 31:16)
        grp = 4 * (T & 1) + j
        e |= (nibble(G, grp) << 4 * j | nibble(G + 8, grp) << (16 + 4 * j)).astype(np.uint32)
    e[T >= 2] = 0xFFFFFFFF  # lanes the sparsity selector 0 does not read: anything, even invalid
    return a, bregs, cregs, e


def test_mma_sp_is_the_dense_product_of_its_fragments():
    rng = np.random.default_rng(0)
    kept, patterns, dense, b, c = random_problem(rng)
    a, bregs, cregs, e = fragments(kept, patterns, b, c)
    d = ptx_model.mma_sp(a, bregs, cregs, e)
    want = dense @ b.astype(np.float64) + c  # (WARPS, 16, 8), float64
    w = np.arange(32 * WARPS) // 32
    for reg, (dr, dc) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1))):
        got = ptx_model.f32(d[reg])
        ref = want[w, G + dr, 2 * T + dc]
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, ref, rtol=2**-23, atol=1e-6 * np.abs(ref).max())


def test_dense_mma_is_the_product_of_its_fragments():
    """mma.m16n8k16 through run(), the asm text as the kernels write it (braces close the C operand)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((WARPS, 16, 16)).astype(np.float16)
    b = rng.standard_normal((WARPS, 16, 8)).astype(np.float16)
    c = rng.standard_normal((WARPS, 16, 8)).astype(np.float32)
    w = np.arange(32 * WARPS) // 32
    regs = {f"$a{i}": f16_pairs(a[w, G + dr, 2 * T + dc], a[w, G + dr, 2 * T + dc + 1])
            for i, (dr, dc) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8)))}
    regs |= {f"$b{i}": f16_pairs(b[w, 2 * T + 8 * i, G], b[w, 2 * T + 8 * i + 1, G]) for i in range(2)}
    regs |= {f"$c{i}": ptx_model.f32_bits(c[w, G + dr, 2 * T + dc])
             for i, (dr, dc) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1)))}
    out = ptx_model.run(f"{{ {ptx_model.MMA} {{$d0, $d1, $d2, $d3}}, {{$a0, $a1, $a2, $a3}}, {{$b0, $b1}},"
                        " {$c0, $c1, $c2, $c3}; }", regs, 32 * WARPS)
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    for i, (dr, dc) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1))):
        got = ptx_model.f32(out[f"$d{i}"])
        ref = want[w, G + dr, 2 * T + dc]
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, ref, rtol=2**-23, atol=1e-6 * np.abs(ref).max())


def test_funnel_shifts_wrap_or_clamp_their_amount():
    lo, hi = 0x76543210, 0xFEDCBA98
    for n, wrap, clamp in ((4, 0x87654321, 0x87654321), (36, 0x87654321, hi), (32, lo, hi), (0, lo, lo)):
        regs = ptx_model.run_scalar("shf.r.wrap.b32 $0, $2, $3, $4; shf.r.clamp.b32 $1, $2, $3, $4;",
                                    {"$2": lo, "$3": hi, "$4": n})
        assert (regs["$0"], regs["$1"]) == (wrap, clamp), n


def test_mma_sp_refuses_metadata_the_hardware_leaves_undefined():
    rng = np.random.default_rng(1)
    a, bregs, cregs, e = fragments(*random_problem(rng)[:2], *random_problem(rng)[3:])
    e[1] = (e[1] & ~np.uint32(0xF)) | np.uint32(0b0101)  # lane 1, group 4: both kept values at column 1
    with pytest.raises(ValueError, match="first column ≥ second"):
        ptx_model.mma_sp(a, bregs, cregs, e)


def test_byte_and_bit_operations_match_the_scalar_model():
    rng = np.random.default_rng(2)
    a, b, sel = (rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32) for _ in range(3))
    got = ptx_model.prmt(a, b, sel)
    assert [int(v) for v in got] == [scalar_prmt(int(x), int(y), int(s)) for x, y, s in zip(a, b, sel)]
    lut = np.full(500, 0xEA, dtype=np.uint32)  # (a & b) | c
    assert np.array_equal(ptx_model.lop3(a, b, sel, lut), (a & b) | sel)
    lut = np.full(500, 0x96, dtype=np.uint32)  # a ^ b ^ c
    assert np.array_equal(ptx_model.lop3(a, b, sel, lut), a ^ b ^ sel)


def test_fma_f16x2_rounds_once():
    # (1 + 2⁻¹⁰)² − (1 + 2⁻⁹) = 2⁻²⁰ exactly (an fp16 subnormal); rounding the product first gives 0
    u = 1 + 2.0**-10
    regs = ptx_model.run("fma.rn.f16x2 $0, $1, $2, $3;", {"$1": f16_pairs(np.array([u]), np.array([2.0])),
                                                         "$2": f16_pairs(np.array([u]), np.array([0.5])),
                                                         "$3": f16_pairs(np.array([-(1 + 2.0**-9)]), np.array([0.25]))}, 1)
    assert [float(h[0]) for h in ptx_model.halves(regs["$0"])] == [2.0**-20, 1.25]


def test_interpreter_runs_inline_asm_on_the_model():
    triton = pytest.importorskip("triton")
    from kernels import _common

    if not _common.INTERPRET:
        pytest.skip("the model serves the interpreter (TRITON_INTERPRET=1)")
    import triton.language as tl

    @triton.jit
    def fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, ASM: tl.constexpr):
        offs = tl.arange(0, 32)[:, None] * 2 + tl.arange(0, 2)[None, :]
        a, b, c = tl.load(a_ptr + offs), tl.load(b_ptr + offs), tl.load(c_ptr + offs)
        y = tl.inline_asm_elementwise(ASM, "=r,=r,r,r,r,r,r,r", [a, b, c], dtype=tl.float32, is_pure=True, pack=2)
        tl.store(out_ptr + offs, y)

    a, b, c = (torch.randn(32, 2) for _ in range(3))
    out = torch.empty(32, 2)
    fma_kernel[(1,)](a, b, c, out, ASM="fma.rn.f32 $0, $2, $4, $6; fma.rn.f32 $1, $3, $5, $7;")
    torch.testing.assert_close(out, (a.double() * b.double() + c.double()).float(), rtol=0, atol=0)
    with pytest.raises(Exception, match="no model for PTX instruction cvt.rn.f32.s32"):
        fma_kernel[(1,)](a, b, c, out, ASM="cvt.rn.f32.s32 $0, $2; mov.b32 $1, $3;")
