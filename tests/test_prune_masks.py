"""Masks of the pruning methods: hand-computed Wanda, exact counts per row and per N:M group."""

from __future__ import annotations

import pytest
import torch

from tasks.config import PruneConfig
from tasks.pruning.patterns import NM, Unstructured, mask_from_scores, parse_pattern
from tasks.engine.sequential import InputStats
from tasks.pruning.pruners import prune_magnitude, prune_wanda

LOG = lambda message: None  # noqa: E731


def stats_with_norms(norms: list[float]) -> InputStats:
    stats = InputStats(len(norms), torch.device("cpu"), hessian=False)
    stats.sumsq = torch.tensor(norms) ** 2
    return stats


def test_wanda_mask_matches_hand_computation():
    W = torch.tensor([[1.0, -2.0, 3.0, -4.0],
                      [4.0, 3.0, -2.0, 1.0]])
    # scores |W|·‖X‖ with ‖X‖ = (4, 1, 1, 0.25): row 0 → 4, 2, 3, 1; row 1 → 16, 3, 2, 0.25
    result = prune_wanda(W, stats_with_norms([4.0, 1.0, 1.0, 0.25]), Unstructured(0.5), PruneConfig(), LOG)
    assert result.mask.tolist() == [[False, True, False, True], [False, False, True, True]]
    assert result.weight.tolist() == [[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]
    # magnitude alone would keep -4 in row 0: Wanda's activation weighting changes the answer
    assert prune_magnitude(W, None, Unstructured(0.5), PruneConfig(), LOG).mask[0].tolist() == [True, True, False, False]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_unstructured_exact_count_per_row(sparsity):
    torch.manual_seed(0)
    W = torch.randn(33, 100)
    result = prune_wanda(W, stats_with_norms(torch.rand(100).add(0.1).tolist()), Unstructured(sparsity),
                         PruneConfig(), LOG)
    assert result.mask.sum(dim=1).eq(int(100 * sparsity)).all()
    assert torch.equal(result.weight == 0, result.mask)


@pytest.mark.parametrize("sparsity", [0.01, 0.3, 0.5, 0.99])
def test_unstructured_mask_is_the_stable_sort_one_with_ties(sparsity):
    """The k lowest of each row; among equal scores the leftmost go first, as a stable sort orders them."""
    torch.manual_seed(2)
    scores = torch.randint(0, 6, (40, 96)).float()  # six values: ties everywhere, also at the k-th
    scores[0] = 1.0                                  # a row of one value: the first k columns go
    k = int(96 * sparsity)
    expected = torch.zeros_like(scores, dtype=torch.bool)
    expected.scatter_(-1, torch.argsort(scores, dim=-1, stable=True)[:, :k], True)
    mask = mask_from_scores(scores, Unstructured(sparsity))
    assert torch.equal(mask, expected)
    assert mask[0].tolist() == [True] * k + [False] * (96 - k)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_exact_count_per_group(n, m):
    torch.manual_seed(1)
    W = torch.randn(17, 64)
    result = prune_wanda(W, stats_with_norms(torch.rand(64).add(0.1).tolist()), NM(n, m), PruneConfig(), LOG)
    kept = (~result.mask).reshape(17, 64 // m, m).sum(-1)
    assert kept.eq(n).all()


def test_nm_keeps_the_largest_of_each_group():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 2.0, 1.0, 0.0]])
    assert mask_from_scores(scores, NM(2, 4)).tolist() == [[True, False, False, True, False, False, True, True]]


def test_nm_needs_width_multiple_of_m():
    with pytest.raises(ValueError, match="multiple of 8"):
        mask_from_scores(torch.rand(2, 12), NM(4, 8))


@pytest.mark.parametrize("value,message", [
    (1.0, r"fraction in \[0, 1\)"), (-0.1, r"fraction in \[0, 1\)"), ("4:2", "0 < N < M"),
    ("2:2", "0 < N < M"), ("a:b", "two integers"), ("half", "fraction in"),
])
def test_bad_patterns(value, message):
    with pytest.raises(ValueError, match=message):
        parse_pattern(value)


def test_method_none_keeps_every_weight_without_a_calibration_pass():
    from conftest import tiny_llama
    from tasks.config import SequentialConfig
    from tasks.pruning.pruners import prune_model

    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    no_tokens = torch.empty(0, 0, dtype=torch.long)   # a calibration pass would fail on these
    report = prune_model(model, no_tokens, PruneConfig(method="none", sparsity=0), SequentialConfig(), log=print)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert len(report.records) == 2 * 7 and {r.layer for r in report.records} == {0, 1}
    assert {(r.target, r.sparsity) for r in report.records} == {(0.0, 0.0)}
    assert report.records[0].name == "model.layers.0.self_attn.q_proj" and report.records[0].rows == 64


@pytest.mark.parametrize("settings", [{"sparsity": 0.5}, {"sparsity": "2:4"}, {"sparsity": 0, "owl": {"enabled": True}}])
def test_method_none_refuses_a_sparsity(settings):
    with pytest.raises(ValueError, match=r"prune.method = 'none' keeps every weight: it needs prune.sparsity = 0"):
        PruneConfig(method="none", **settings)
