"""A distribution-free confidence interval for the median, from order statistics: shared by host and device.

Python standard library only: the runner carries this module to the device (see ``edgekit.onboard``) because
its stopping rule needs the interval there, and ``edgekit.measure.stats`` uses the same code on the host, so
the interval the runner stopped on is the one the report shows.

Why order statistics and not a bootstrap: latency samples are skewed and often bimodal (a preempted run, a
cache-cold run), which is exactly where a normal approximation or a small bootstrap is least trustworthy.
The number of samples below the true median is Binomial(n, 1/2) whatever the distribution, so the interval
[x_(k), x_(n+1-k)] (1-based, sorted) covers the median with probability 1 - 2 P(B <= k - 1), exactly.  Samples
must be independent for that to hold; consecutive timed repeats on a quiet device are close enough.
"""

import math

# Below this many samples no pair of order statistics reaches 95% (with 5 samples [min, max] covers 93.75%).
MIN_SAMPLES_95 = 6


def _binomial_half_cdf(n):
    """P(B <= i) for B ~ Binomial(n, 1/2), i = 0..n, computed in log space (no underflow for large n)."""
    log_half_n = n * math.log(0.5)
    log_n_fact = math.lgamma(n + 1)
    cdf, total = [], 0.0
    for i in range(n + 1):
        total += math.exp(log_n_fact - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        cdf.append(min(total, 1.0))
    return cdf


def median_ci_ranks(n, confidence=0.95):
    """(k, achieved): the 1-based rank k with [x_(k), x_(n+1-k)] covering the median with at least
    ``confidence``, as narrow as possible, and the coverage it really achieves; None when n is too small."""
    if n < 1 or not 0.0 < confidence < 1.0:
        return None
    alpha_half = (1.0 - confidence) / 2.0
    cdf = _binomial_half_cdf(n)
    best = None
    k = 1
    while k <= (n + 1) // 2 and cdf[k - 1] <= alpha_half + 1e-12:
        best = k
        k += 1
    if best is None:
        return None
    return best, 1.0 - 2.0 * cdf[best - 1]


def median_ci(sorted_samples, confidence=0.95):
    """{"low", "high", "confidence"} for the median of ``sorted_samples`` (ascending), or None when too few."""
    ranks = median_ci_ranks(len(sorted_samples), confidence)
    if ranks is None:
        return None
    k, achieved = ranks
    return {"low": sorted_samples[k - 1], "high": sorted_samples[len(sorted_samples) - k], "confidence": achieved}


def middle(sorted_samples):
    """The median (the mean of the two middle samples for an even count)."""
    n = len(sorted_samples)
    mid = n // 2
    return sorted_samples[mid] if n % 2 else (sorted_samples[mid - 1] + sorted_samples[mid]) / 2.0


def half_width_ratio(sorted_samples, confidence=0.95):
    """The interval's half-width relative to the median: the stopping rule's yardstick (inf when too few)."""
    ci = median_ci(sorted_samples, confidence)
    median = middle(sorted_samples) if sorted_samples else 0.0
    if ci is None or median <= 0:
        return math.inf
    return (ci["high"] - ci["low"]) / 2.0 / median
