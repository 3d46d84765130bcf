"""OWL: layer outlier ratios and the layerwise sparsities derived from them."""

from __future__ import annotations

import random

import pytest
import torch

from tasks.pruning.owl import outlier_ratio, owl_sparsities


def test_outlier_ratio_hand_example():
    # Entries 1 (×7) and 13: mean over both tensors 20/8 = 2.5, threshold 5·2.5 = 12.5 → one of 8 above.
    scores = [torch.ones(2, 2), torch.tensor([[1.0, 1.0, 1.0, 13.0]])]
    assert outlier_ratio(scores, m=5.0) == 0.125


def test_outlier_ratio_threshold_is_strict_and_over_all_tensors():
    # Entries 1 (×3) and 6: mean 9/4, threshold 2·9/4 = 4.5 → 1 of 4. Per-tensor means would find none
    # (the second tensor alone has mean 6). An entry equal to the threshold does not count.
    assert outlier_ratio([torch.ones(3), torch.tensor([6.0])], m=2.0) == 0.25
    assert outlier_ratio([torch.tensor([1.0, 1.0, 4.0])], m=2.0) == 0.0  # 4 = 2·mean(2), not above


def test_reference_formula_when_in_band():
    # Ratios 1, 2, 3 → [0, 0.5, 1]·2λ = [0, .08, .16], mean .08 → sparsity target + .08 − keep.
    assert owl_sparsities([1.0, 2.0, 3.0], target=0.5, lam=0.08) == pytest.approx([0.58, 0.5, 0.42], abs=1e-12)


@pytest.mark.parametrize("target, lam", [(0.5, 0.08), (0.7, 0.08), (0.6, 0.1), (0.05, 0.08)])
def test_mean_band_and_order(target, lam):
    rng = random.Random(int(target * 100 + lam * 1000))
    cases = [
        [rng.uniform(0, 10) for _ in range(32)],
        [0.0] * 31 + [5.0],  # one outlier-heavy layer: the reference formula would reach target − 2λ
        [5.0] * 31 + [0.0],
        [rng.expovariate(1.0) for _ in range(40)],
    ]
    for ratios in cases:
        sparsities = owl_sparsities(ratios, target, lam)
        assert sum(sparsities) / len(sparsities) == pytest.approx(target, abs=1e-9)
        assert all(max(0.0, target - lam) - 1e-12 <= s <= target + lam + 1e-12 for s in sparsities)
        by_ratio = [s for _, s in sorted(zip(ratios, sparsities))]
        assert all(a >= b for a, b in zip(by_ratio, by_ratio[1:]))  # more outliers → not more sparsity
        assert sparsities[ratios.index(max(ratios))] < sparsities[ratios.index(min(ratios))]


def test_equal_ratios_give_uniform_sparsity():
    assert owl_sparsities([3.2] * 5, target=0.6) == [0.6] * 5


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        owl_sparsities([], target=0.5)
    with pytest.raises(ValueError):
        owl_sparsities([1.0, 2.0], target=1.2)
    with pytest.raises(ValueError):
        outlier_ratio([torch.empty(0)])
