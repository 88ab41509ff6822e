"""Summary statistics over latency samples; the samples themselves are always kept too."""

from __future__ import annotations

import statistics


def percentile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not sorted_samples:
        raise ValueError("no samples")
    position = (len(sorted_samples) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(sorted_samples) - 1)
    return sorted_samples[low] + (sorted_samples[high] - sorted_samples[low]) * (position - low)


def summarize(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    stdev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
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
    }


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
