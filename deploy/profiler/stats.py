"""Statistics of latency samples: percentiles and a distribution-free confidence interval of the median.

The interval comes from order statistics (the count of samples below the true median is
Binomial(n, 1/2)), so it holds for the skewed, heavy-tailed latencies a shared machine produces,
where a mean +- t * std interval would not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["CI_LEVEL", "latency_stats", "median_ci", "median_ci_ranks", "percentile"]

CI_LEVEL = 0.95


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between the closest ranks (numpy's default method).

    ``percentile([1, 2, 3, 4], 50) == 2.5``; ``percentile(range(1, 11), 90) == 9.1``.
    """
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, not {q}")
    h = (len(xs) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def _half_binomial_cdf(n: int) -> Callable[[int], float]:
    """``k -> P(B <= k)`` for ``B ~ Binomial(n, 1/2)``: exact (integer) up to n = 2000, log-space above."""
    if n <= 2000:
        cum, acc = [], 0
        for i in range(n + 1):
            acc += math.comb(n, i)
            cum.append(acc)
        total = 2**n
        return lambda k: 0.0 if k < 0 else 1.0 if k >= n else cum[k] / total
    log_half = n * math.log(0.5)
    lg = math.lgamma(n + 1)
    pmf = [math.exp(lg - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half) for i in range(n + 1)]
    cum_f = list(np.cumsum(pmf))
    return lambda k: 0.0 if k < 0 else 1.0 if k >= n else float(cum_f[k])


def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int, float]:
    """1-based order-statistic ranks ``(l, u)`` with ``P(x_(l) <= median <= x_(u)) >= level``, and that coverage.

    Distribution-free: the number of samples below the true median is Binomial(n, 1/2), so
    ``[x_(l), x_(u)]`` with ``u = n + 1 - l`` covers it with probability ``1 - 2 P(B <= l - 1)``;
    ``l`` is the largest rank that keeps this at or above ``level``. With too few samples for the
    level (n < 6 at 95%) it is the whole range ``(1, n)`` with the (lower) coverage it really has.
    For n = 10 at 95%: ranks (2, 9), coverage 1 - 2 * 11/1024 = 0.9785.
    """
    if n < 1:
        raise ValueError("a median interval needs at least one sample")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be within (0, 1), not {level}")
    cdf = _half_binomial_cdf(n)
    alpha_half = (1 - level) / 2
    l = 1
    while l + 1 <= (n + 1) // 2 and cdf(l) <= alpha_half:  # rank l + 1 still keeps the coverage
        l += 1
    return l, n + 1 - l, 1 - 2 * cdf(l - 1)


def median_ci(samples: Iterable[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """Distribution-free ``level`` confidence interval of the median (see :func:`median_ci_ranks`)."""
    xs = sorted(float(x) for x in samples)
    l, u, _ = median_ci_ranks(len(xs), level)
    return xs[l - 1], xs[u - 1]


def latency_stats(samples_ms: Sequence[float], batch: int = 1, level: float = CI_LEVEL) -> dict[str, Any]:
    """Summary of per-call latencies (milliseconds) at ``batch`` images per call.

    ``std_ms`` is the sample standard deviation (0 for one run); ``throughput_ips`` is images per
    second over the timed runs (``batch / mean``: sustained, outliers included).
    """
    xs = sorted(float(x) for x in samples_ms)
    if not xs:
        raise ValueError("latency statistics of no samples")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    lo, hi = median_ci(xs, level)
    return {
        "runs": n,
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": xs[0],
        "p50_ms": percentile(xs, 50),
        "p90_ms": percentile(xs, 90),
        "p95_ms": percentile(xs, 95),
        "p99_ms": percentile(xs, 99),
        "p50_ci_ms": [lo, hi],
        "ci_level": level,
        "throughput_ips": batch * 1000.0 / mean if mean > 0 else float("inf"),
    }
