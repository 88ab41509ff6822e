"""Summary statistics over latency samples; the samples themselves are always kept too.

The median's confidence interval is distribution-free (order statistics; edgekit/onboard/order_stats.py
says why), the same code the device runner's stopping rule uses.
"""

from __future__ import annotations

import statistics

from edgekit.onboard.order_stats import median_ci

DEFAULT_CONFIDENCE = 0.95


def percentile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not sorted_samples:
        raise ValueError("no samples")
    position = (len(sorted_samples) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * (position - low)


def summarize(samples_ms: list[float], confidence: float = DEFAULT_CONFIDENCE) -> dict[str, float | None]:
    """median/mean/p90/p99/min/max/stdev/cv and the median's interval (None for each bound when under
    6 samples: no pair of order statistics then covers the median with 95%)."""
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    stdev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    ci = median_ci(ordered, confidence)
    median = percentile(ordered, 50)
    return {
        "count": len(ordered),
        "median_ms": percentile(ordered, 50),
        "mean_ms": mean,
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "stdev_ms": stdev,
        "cv": stdev / mean if mean > 0 else 0.0,  # spread relative to the mean: how far to trust the median
        "median_ci_low_ms": ci["low"] if ci else None,
        "median_ci_high_ms": ci["high"] if ci else None,
        "ci_confidence": ci["confidence"] if ci else None,  # achieved: at least the confidence asked for
        "ci_half_width_ratio": (ci["high"] - ci["low"]) / 2 / median if ci and median > 0 else None,
        "ci_method": "order-statistics",
    }


def format_interval(stats: dict) -> str:
    """'[0.512, 0.530] ms (95%, ±1.7%)' for terminal lines; says so when there were too few samples."""
    if stats.get("median_ci_low_ms") is None:
        return "no interval (fewer than 6 samples)"
    return (f"[{stats['median_ci_low_ms']:.4g}, {stats['median_ci_high_ms']:.4g}] ms "
            f"({stats['ci_confidence']:.0%}, ±{stats['ci_half_width_ratio']:.1%})")


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Time ``fn()`` in this process: ``warmup`` untimed calls, then ``repeats`` samples in ms (all kept).

    For host-side baselines (torch eager, ONNX Runtime) that benchmarks set beside edgekit's runner.
    """
    import time

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples
