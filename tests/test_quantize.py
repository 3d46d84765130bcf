"""Group quantization: error floors vs float64, bit-exact dequantization, pruned zeros kept,
and the engine's column hook equal to round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from tasks.config import QuantizeConfig
from tasks.quantization.gptq import gptq_act_order
from tasks.pruning.patterns import NM, Unstructured
from tasks.quantization.grid import (GroupQuantizer, QuantSpec, Quantized, StaticGroupQuantizer, expand_groups,
                            find_params, rtn, sqnr_db)
from tasks.pruning.sparsegpt import sparsegpt

SPECS = [QuantSpec(b, g, sym) for b in (2, 3, 4, 8) for g in (-1, 32, 64, 128) for sym in (False, True)]

# measured on a seeded 256×1024 Gaussian (min over symmetric/asymmetric), minus 0.5 dB:
# g=128: 2b 5.2, 3b 12.4, 4b 19.1, 8b 43.7 dB; per row: 2b 3.6, 3b 10.8, 4b 17.4, 8b 42.0 dB
SQNR_FLOOR_DB = {(2, 128): 4.7, (3, 128): 11.9, (4, 128): 18.6, (8, 128): 43.2,
                 (2, -1): 3.1, (3, -1): 10.3, (4, -1): 16.9, (8, -1): 41.5}


def gaussian(rows: int, cols: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def half_mask(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5


@pytest.mark.parametrize(("bits", "group_size"), sorted(SQNR_FLOOR_DB))
@pytest.mark.parametrize("symmetric", [False, True])
def test_sqnr_floor_against_float64_weights(bits, group_size, symmetric):
    W = gaussian(256, 1024, dtype=torch.float64)
    q = rtn(W, QuantSpec(bits, group_size, symmetric))
    assert sqnr_db(W, q.dequantize(torch.float64)) >= SQNR_FLOOR_DB[bits, group_size]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_dequantize_is_exact_and_within_half_a_step(spec):
    W = gaussian(9, 129)
    q = rtn(W, spec)
    s = expand_groups(q.scales, spec.group_size, 129).double()
    z = expand_groups(q.zeros, spec.group_size, 129).double()
    # the float32 dequantization equals the float64 product: no rounding anywhere
    assert torch.equal(q.dequantize().double(), (q.codes.double() - z) * s)
    # round to nearest: half a step, plus what rounding the scale to float16 can shift the top code
    bound = 0.5 + spec.maxq * 2.0**-11 + 1e-6
    assert ((W.double() - q.dequantize().double()).abs() / s).max() <= bound


def test_parameters_follow_the_documented_convention():
    x = torch.tensor([[-1.0, 0.5, 2.0, 3.0]])
    scale, zero = find_params(x, QuantSpec(4, -1, False))
    assert scale.dtype == torch.float16 and zero.dtype == torch.uint8
    assert scale.item() == torch.tensor(4.0 / 15).half().item() and zero.item() == round(1 / scale.float().item())
    scale, zero = find_params(x, QuantSpec(4, -1, True))
    assert scale.item() == torch.tensor(2 * 3.0 / 15).half().item() and zero.item() == 8
    # all-positive group: 0 stays representable
    scale, zero = find_params(torch.tensor([[1.0, 2.0]]), QuantSpec(8, -1, False))
    assert zero.item() == 0 and scale.item() == torch.tensor(2.0 / 255).half().item()


@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_groups_get_scale_one_and_code_zero(symmetric):
    W = gaussian(4, 64)
    W[1] = 0
    W[2, :32] = 0
    q = rtn(W, QuantSpec(4, 32, symmetric))
    assert q.scales[1].tolist() == [1.0, 1.0] and q.scales[2, 0].item() == 1.0
    assert torch.equal(q.codes[1], q.zeros[1, :1].expand(64))
    assert (q.dequantize()[1] == 0).all() and (q.dequantize()[2, :32] == 0).all()


def test_tiny_weights_do_not_underflow_the_float16_scale():
    q = rtn(gaussian(3, 32) * 1e-9, QuantSpec(4, -1, False))
    assert (q.scales > 0).all() and torch.isfinite(q.dequantize()).all()


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_rtn_keeps_pruned_weights_exactly_zero(spec):
    W = gaussian(7, 37) + 3.0  # pruned entries are nonzero on input: rtn must zero them
    mask = half_mask(W.shape)
    q = rtn(W, spec, mask)
    assert (q.dequantize()[mask] == 0.0).all()
    assert torch.equal(q.codes[mask], expand_groups(q.zeros, spec.group_size, 37)[mask])


def column_loop(W: torch.Tensor, spec: QuantSpec, mask=None) -> tuple[Quantized, torch.Tensor]:
    """The engine's loop without the OBS update: quantize column j, write it back."""
    W = W.clone()
    hook = GroupQuantizer(spec)
    for j in range(W.shape[1]):
        W[:, j] = hook(W, j)
    if mask is not None:
        W[mask] = 0.0
    return hook.result(mask), W


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("cols", [37, 129])
def test_group_quantizer_in_a_plain_loop_equals_rtn(spec, cols):
    W = gaussian(6, cols)
    q, W_fake = column_loop(W, spec)
    ref = rtn(W, spec)
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales, ref.scales) and torch.equal(q.zeros, ref.zeros)
    assert torch.equal(W_fake, ref.dequantize())  # the returned columns are dequantize(codes)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_group_quantizer_keeps_pruned_weights_exactly_zero(spec):
    mask = half_mask((6, 129))
    W = gaussian(6, 129).masked_fill(mask, 0.0)
    q, W_fake = column_loop(W, spec, mask)
    assert torch.equal(q.dequantize(), W_fake)
    assert (q.dequantize()[mask] == 0.0).all()
    ref = rtn(W, spec, mask)
    assert torch.equal(q.codes, ref.codes)


def test_group_quantizer_result_sets_pruned_codes_even_if_the_column_was_not_zeroed():
    spec = QuantSpec(4, 32, False)
    mask = half_mask((5, 64))
    q, _ = column_loop(gaussian(5, 64) + 2.0, spec, mask)  # pruned entries quantized as nonzero
    assert (q.dequantize()[mask] == 0.0).all()


@pytest.mark.parametrize("pattern", [NM(2, 4), Unstructured(0.5), None], ids=str)
@pytest.mark.parametrize("spec", [QuantSpec(4, 32, False), QuantSpec(4, -1, True), QuantSpec(8, 64, False)], ids=str)
def test_group_quantizer_in_sparsegpt_records_exactly_the_returned_weight(pattern, spec):
    W, X = gaussian(16, 128, seed=2), gaussian(128, 512, seed=3)
    hook = GroupQuantizer(spec)
    result = sparsegpt(W, 2 * X @ X.T / 512, pattern, blocksize=64, quantizer=hook)  # 64 % group_size == 0
    assert torch.equal(hook.result(result.mask).dequantize(), result.weight)
    assert (result.weight[result.mask] == 0).all()


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_group_quantizer_sizes_groups_on_the_weights_that_are_not_pruned(spec):
    # Joint SparseGPT + GPTQ: the column still holds weights about to be pruned; large ones must not
    # widen the group's range. The parameters equal rtn's on the masked weight.
    mask = half_mask((6, 129))
    W = gaussian(6, 129) + 40.0 * mask
    hook = GroupQuantizer(spec)
    for j in range(W.shape[1]):
        hook(W, j, mask)
    ref = rtn(W, spec, mask)
    q = hook.result(mask)
    assert torch.equal(q.scales, ref.scales) and torch.equal(q.zeros, ref.zeros)
    assert torch.equal(q.codes, ref.codes)


def test_group_quantizer_needs_columns_in_order():
    hook = GroupQuantizer(QuantSpec(4, 32, False))
    W = gaussian(3, 64)
    with pytest.raises(ValueError, match="in order"):
        hook(W, 5)
    hook(W, 0)
    with pytest.raises(ValueError, match="in order"):
        hook(W, 2)
    with pytest.raises(ValueError, match="every column"):
        hook.result()


def test_spec_validation_and_sqnr_of_identical_weights():
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(5, 128, False)
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec(4, 0, False)
    W = gaussian(2, 8)
    assert sqnr_db(W, W) == float("inf")


def test_static_group_quantizer_records_weight_columns_in_their_own_groups():
    # The engine sees the columns permuted; codes, scales and zeros stay in the weight's order and
    # a plain loop over the permuted columns (no error feedback) reproduces rtn exactly.
    spec = QuantSpec(4, 32, False)
    W, mask = gaussian(6, 96), half_mask((6, 96))
    W = W.masked_fill(mask, 0.0)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(5))
    hook = StaticGroupQuantizer(rtn(W, spec, mask), order)
    seen = W[:, order].clone()
    for j in range(96):
        seen[:, j] = hook(seen, j)
    ref = rtn(W, spec, mask)
    q = hook.result(mask)
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales, ref.scales)
    assert torch.equal(seen, ref.dequantize()[:, order])


def test_act_order_gptq_keeps_zeros_and_beats_plain_gptq_on_uneven_inputs():
    # Inputs of very different energy: quantizing the strong ones first leaves the most room to correct them.
    rows, cols, n = 32, 128, 512
    scales = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=torch.Generator().manual_seed(8))]
    X = gaussian(cols, n, seed=7) * scales.unsqueeze(1)
    H = 2 * X @ X.T / n
    mask = half_mask((rows, cols))
    W = gaussian(rows, cols, seed=9).masked_fill(mask, 0.0)
    cfg = QuantizeConfig(bits=4, group_size=32, act_order=True)
    q, weight = gptq_act_order(W, H, cfg, None, mask, False, log=lambda s: None)
    assert torch.equal(q.dequantize(), weight)
    assert (weight[mask] == 0).all()
    hook = GroupQuantizer(QuantSpec(4, 32, False))
    plain = sparsegpt(W, H, None, blocksize=128, quantizer=hook, mask=mask).weight

    def output_error(W_hat):
        return ((W.double() - W_hat.double()) @ X.double()).norm().item()

    assert output_error(weight) < output_error(plain) < output_error(rtn(W, QuantSpec(4, 32, False), mask).dequantize())


def test_joint_act_order_prunes_half_records_its_weight_and_beats_rounding_the_pruned_weight():
    # SparseGPT + GPTQ in one pass in descending diag(H) order, from the dense W.
    rows, cols, n = 32, 128, 512
    scales = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=torch.Generator().manual_seed(8))]
    X = gaussian(cols, n, seed=7) * scales.unsqueeze(1)
    H = 2 * X @ X.T / n
    W = gaussian(rows, cols, seed=9)
    cfg = QuantizeConfig(bits=4, group_size=32, act_order=True, joint=True)
    q, weight = gptq_act_order(W, H, cfg, Unstructured(0.5), None, False, log=lambda s: None)
    assert torch.isfinite(weight).all() and torch.equal(q.dequantize(), weight)
    # one block of 128 columns: exactly half of it pruned, and a few kept weights that round to 0
    assert rows * cols // 2 <= (weight == 0).sum() < 0.55 * rows * cols
    order = torch.argsort(torch.diag(H), descending=True)
    pruned_only = torch.empty_like(W)
    pruned_only[:, order] = sparsegpt(W[:, order], H[order][:, order], Unstructured(0.5), blocksize=128).weight
    rounded = rtn(pruned_only, QuantSpec(4, 32, False), pruned_only == 0).dequantize()

    def output_error(W_hat):
        return ((W.double() - W_hat.double()) @ X.double()).norm().item()

    assert output_error(weight) < output_error(rounded)
