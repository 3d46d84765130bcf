"""The dispatcher's extra paths on the CPU: the fused dequantize kernel under TRITON_INTERPRET=1
against its torch reference and a float64 Ŵ, and our int4 codes in tinygemm's layout."""

from __future__ import annotations

import pytest
import torch

from kernels import available, dispatch
from kernels._common import INTERPRET
from kernels.testing import pack_nm, pack_nm_quant, pack_quant

pytestmark = pytest.mark.skipif(not available(), reason="needs Triton with CUDA or TRITON_INTERPRET=1")
DEVICE = "cpu" if INTERPRET else "cuda"


@pytest.mark.parametrize("bits,n,k,group", [(4, 37, 264, 128), (4, 40, 75, 20), (8, 33, 75, 20), (4, 16, 64, -1)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_dequantize_is_the_reference_bit_for_bit(bits, n, k, group, dtype):
    from kernels import dequant

    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02
    packed = pack_quant(w, bits, group).to(DEVICE)
    t = packed.tensors
    got = dequant.dequantize(t["qweight"], t["scales"], t["zeros"], group_size=group, k=k, bits=bits, dtype=dtype)
    want = dequant.reference(t["qweight"], t["scales"], t["zeros"], group_size=group, k=k, bits=bits, dtype=dtype)
    assert got.shape == (n, k) and got.dtype == dtype and torch.isfinite(got).all()
    assert torch.equal(got, want)
    # and the reference is the float64 Ŵ of the packer, rounded once to dtype
    assert torch.equal(want, packed.w_hat.to(dtype))


@pytest.mark.parametrize("fmt,n,m,k,group", [("nm", 2, 4, 200, None), ("nm", 4, 8, 264, None), ("nm", 1, 4, 72, None),
                                             ("nm-int8", 2, 4, 264, 128), ("nm-int4", 2, 4, 200, 64),
                                             ("nm-int4", 4, 8, 136, 24), ("nm-int4", 2, 4, 72, -1)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_nm_dequantize_is_the_packers_weight(fmt, n, m, k, group, dtype):
    """Tail tiles past K, rows past a 32-row block, every n:m the launchers take: Ŵ is the packer's
    float64 weight rounded once to dtype, bit for bit, pruned columns exactly 0."""
    from kernels import dequant

    w = torch.randn(37, k, generator=torch.Generator().manual_seed(k + n)).to(dtype)
    packed = (pack_nm(w, n, m) if fmt == "nm" else
              pack_nm_quant(w.float(), n, m, 8 if fmt == "nm-int8" else 4, group)).to(DEVICE)
    got = dequant.dequantize_nm(fmt, **packed.tensors, **packed.params, k=k, dtype=dtype)
    assert got.shape == (37, k) and torch.isfinite(got).all()
    assert torch.equal(got, packed.w_hat.to(dtype))
    assert int((got == 0).sum(1).min()) >= k // m * (m - n)


def test_fused_dequantize_names_a_bad_tensor():
    from kernels import dequant

    t = pack_quant(torch.randn(8, 64), 4, 32).tensors
    with pytest.raises(ValueError, match=r"qweight must be uint8 \(8, 32\) for K=64 at 4 bits"):
        dequant.dequantize(t["qweight"][:, :31], t["scales"], t["zeros"], group_size=32, k=64)
    with pytest.raises(ValueError, match=r"scales must be torch.float16 \(8, 2\)"):
        dequant.dequantize(t["qweight"], t["scales"].float(), t["zeros"], group_size=32, k=64)


def test_tinygemm_inputs_dequantize_to_our_weight():
    """tinygemm computes (q − 8)·s + z' per group from the high nibble of even columns: rebuilt
    here from what tinygemm_inputs hands it, it is our Ŵ up to bf16 rounding of s and z'."""
    group, k = 32, 128
    packed = pack_quant(torch.randn(16, k, generator=torch.Generator().manual_seed(3)), 4, group)
    t = packed.tensors
    codes, scales_and_zeros = dispatch.tinygemm_inputs(t["qweight"], t["scales"], t["zeros"], group)
    assert codes.shape == (16, k // 2) and scales_and_zeros.shape == (k // group, 16, 2)
    q = torch.stack([codes >> 4, codes & 15], dim=-1).reshape(16, k).double()
    s, z = (scales_and_zeros.double().transpose(0, 1).repeat_interleave(group, 1)).unbind(-1)
    tiny = (q - 8) * s + z
    assert (tiny - packed.w_hat).abs().max() <= 2**-8 * packed.w_hat.abs().max()
    assert [dispatch.tinygemm_tiles(k) for k in (4096, 576, 96, 40)] == [8, 4, 2, None]
