"""The exact Pareto front: the options no other option beats on every objective at once."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` on every objective and strictly better on one (all minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """For each point, whether it is non-dominated. Equal points are all kept. O(n^2), exact."""
    return [not any(dominates(q, p) for q in points if q is not p) for p in points]
