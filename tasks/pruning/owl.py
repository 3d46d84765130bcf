"""OWL: non-uniform layerwise sparsity from outlier ratios.

Paper: Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
High Sparsity", ICML 2024. Reference implementation: github.com/luuyin/OWL, lib/prune_all.py
(`check_outlier_mean`, `prune_wanda_outlier`).

Per decoder layer ℓ, with the Wanda scores A = |W|·‖X_j‖₂ (rows, cols) of all its Linears taken together:
    D_ℓ = #{a ∈ A : a > m·mean(A)} / #A                     (layer outlier ratio; m = 5 by default)
Layers with more outliers are pruned less. The reference maps the ratios to keep fractions
    k_ℓ = 2λ·(D_ℓ − min D) / (max D − min D),     k_ℓ ← k_ℓ − mean(k) + (1 − S)
and prunes layer ℓ at 1 − k_ℓ, so the mean sparsity is the target S. The paper asks for S_ℓ ∈ [S − λ, S + λ],
which the reference only meets when mean(k) is close to λ (a skewed spread such as one outlier-heavy layer
reaches S ± 2λ); here such values are clipped into the band with the common shift that keeps the mean at S.
"""

from __future__ import annotations

import torch


def outlier_ratio(scores: list[torch.Tensor], m: float = 5.0) -> float:
    """Fraction (not the reference's percent) of one layer's score entries above m × their mean.

    scores: the Wanda scores of every Linear of the layer, any shapes; the mean is over all their entries
    together, as the reference's concatenation, without building the concatenated copy.
    """
    total = sum(s.sum(dtype=torch.float64).item() for s in scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        raise ValueError("outlier_ratio needs at least one score entry")
    threshold = m * total / count
    return sum((s > threshold).sum().item() for s in scores) / count


def owl_sparsities(ratios: list[float], target: float, lam: float = 0.08) -> list[float]:
    """Per-layer sparsities: mean `target`, within [target − lam, target + lam] ∩ [0, 1], lower for more outliers.

    ratios: outlier ratios per layer (any common scale: fraction or percent). Equal ratios give uniform sparsity.
    """
    if not ratios:
        raise ValueError("owl_sparsities needs at least one layer ratio")
    if not 0.0 <= target < 1.0 or lam < 0:
        raise ValueError(f"need 0 <= target < 1 and lam >= 0, got target={target}, lam={lam}")
    r = torch.tensor(ratios, dtype=torch.float64)
    spread = (r.max() - r.min()).item()
    if spread == 0 or lam == 0:
        return [target] * len(ratios)
    keep = (r - r.min()) / spread * (2 * lam)  # reference: min-max to [0, 2λ]
    sparsity = target + keep.mean() - keep  # reference: 1 − (keep − mean(keep) + 1 − target)
    return _clip_keeping_mean(sparsity, target, max(0.0, target - lam), min(1.0, target + lam)).tolist()


def _clip_keeping_mean(values: torch.Tensor, target: float, lo: float, hi: float) -> torch.Tensor:
    """clip(values + c, lo, hi) with the shift c that makes the mean `target` (lo <= target <= hi).

    mean(clip(values + c)) is continuous and non-decreasing in c, so bisection finds c; order is preserved.
    Values already within [lo, hi] with mean target come back unchanged (c = 0).
    """
    if values.min() >= lo and values.max() <= hi:
        return values
    below, above = lo - values.max().item(), hi - values.min().item()  # mean is lo at `below`, hi at `above`
    for _ in range(200):  # the bracket halves each step: far past float64 resolution
        c = (below + above) / 2
        if (values + c).clamp(lo, hi).mean() < target:
            below = c
        else:
            above = c
    return (values + (below + above) / 2).clamp(lo, hi)
