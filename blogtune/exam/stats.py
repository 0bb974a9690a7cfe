"""Confidence intervals for exam rates and paired differences (a few hundred items: intervals matter)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion (good at small n and near 0 or 1)."""
    if n <= 0:
        return None, None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags: Sequence[bool]) -> dict:
    """{"n", "k", "rate", "ci": [lo, hi]} for a list of booleans."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson(k, n)
    return {"n": n, "k": k, "rate": (k / n) if n else None, "ci": [lo, hi]}


def mean_ci(values: Sequence[float], seed: int = 0, n_boot: int = 2000) -> dict:
    """Mean with a percentile bootstrap interval (for token F1, which is not a proportion)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"n": 0, "mean": None, "ci": [None, None]}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    return {"n": int(v.size), "mean": float(v.mean()), "ci": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def paired_lift(before: Sequence[float], after: Sequence[float], seed: int = 0, n_boot: int = 2000) -> dict:
    """after - before on the same items, with a paired bootstrap interval (items resampled together)."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if b.size != a.size:
        raise ValueError("paired_lift: before and after must score the same items")
    if b.size == 0:
        return {"n": 0, "lift": None, "ci": [None, None]}
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
    return {
        "n": int(d.size),
        "lift": float(d.mean()),
        "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
    }


def by_lang(rows: Sequence[dict], measure: Callable[[list[dict]], Any]) -> dict[str, Any]:
    """measure(rows) per language of the items (a bilingual blog: a small model's weaker language
    shows as its own row instead of hiding in the total)."""
    langs = sorted({str(r.get("lang") or "?") for r in rows})
    return {lang: measure([r for r in rows if str(r.get("lang") or "?") == lang]) for lang in langs}
