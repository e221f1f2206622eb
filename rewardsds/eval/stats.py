"""Statistics of a sweep table: mean, sample std, percentile-bootstrap intervals and paired win rates.

Every interval in the evaluation tables is a percentile bootstrap of the mean: ``B`` resamples (default
10000) of the values with replacement, drawn as one ``[B, n]`` index matrix from
``numpy.random.default_rng(seed)`` (default seed 0), the mean of each resample, and the 2.5th and 97.5th
percentiles of those means (numpy's linear interpolation) for a 95% interval. This is what
``scipy.stats.bootstrap(..., method="percentile")`` computes for the same generator; the tests check the
two against each other. The interval says how much the mean would move under resampling of the runs (prompts
and seeds); with fewer than two values there is none.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: bootstrap resamples and generator seed used when a caller does not choose them
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed: ``resamples`` draws from ``default_rng(seed)``, ``confidence`` two-sided."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = DEFAULT_CONFIDENCE

    def describe(self) -> str:
        return (f"{100 * self.confidence:g}% percentile bootstrap of the mean ({self.resamples} resamples, "
                f"numpy default_rng seed {self.seed})")


def bootstrap_ci(values: Sequence[float], boot: Bootstrap = Bootstrap()) -> Optional[tuple[float, float]]:
    """Percentile-bootstrap interval of the mean of ``values``.

    Args:
        values: the sample [n] (runs of one table row, or per-pair outcomes).
        boot: resamples, seed and confidence.

    Returns:
        ``(low, high)``, or None for fewer than two values.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return None
    rng = np.random.default_rng(boot.seed)
    means = x[rng.integers(0, n, size=(boot.resamples, n))].mean(axis=1)
    alpha = (1.0 - boot.confidence) / 2.0
    lo, hi = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (n - 1; None below two values) and bootstrap interval of one table cell."""

    n: int
    mean: Optional[float]
    std: Optional[float]
    ci: Optional[tuple[float, float]]


def summarize(values: Sequence[float], boot: Bootstrap = Bootstrap()) -> Summary:
    """The statistics of one cell (``mean`` None for no values)."""
    xs = [float(v) for v in values]
    return Summary(
        n=len(xs),
        mean=statistics.fmean(xs) if xs else None,
        std=statistics.stdev(xs) if len(xs) > 1 else None,
        ci=bootstrap_ci(xs, boot),
    )


def win_indicator(variant: float, baseline: float) -> float:
    """1 when the variant scores higher, 0 when lower, 0.5 on a tie (higher is better for every metric)."""
    if variant > baseline:
        return 1.0
    if variant < baseline:
        return 0.0
    return 0.5


@dataclass(frozen=True)
class Paired:
    """A variant against the baseline on the same (prompt, seed) pairs.

    Attributes:
        pairs: number of (prompt, seed) pairs both have.
        win_rate: fraction of pairs the variant wins (ties count half).
        win_ci: bootstrap interval of the win rate (pairs resampled).
        diff_mean: mean of variant - baseline over the pairs.
        diff_ci: bootstrap interval of that mean (the same resampled pairs).
    """

    pairs: int
    win_rate: Optional[float]
    win_ci: Optional[tuple[float, float]]
    diff_mean: Optional[float]
    diff_ci: Optional[tuple[float, float]]


def paired(variant: dict, baseline: dict, boot: Bootstrap = Bootstrap()) -> Paired:
    """Compare two ``{pair key: value}`` maps on their common keys (sorted, so the bootstrap is reproducible).

    Args:
        variant: ``{(prompt, seed): metric value}`` of the variant's runs.
        baseline: the same for the baseline.
        boot: resamples, seed and confidence of both intervals.
    """
    keys = sorted(set(variant) & set(baseline), key=lambda k: tuple(str(p) for p in k))
    if not keys:
        return Paired(0, None, None, None, None)
    wins = [win_indicator(variant[k], baseline[k]) for k in keys]
    diffs = [variant[k] - baseline[k] for k in keys]
    return Paired(len(keys), statistics.fmean(wins), bootstrap_ci(wins, boot), statistics.fmean(diffs),
                  bootstrap_ci(diffs, boot))


def finite(x: object) -> Optional[float]:
    """``x`` as a float when it is a finite real number (bools excluded), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x
