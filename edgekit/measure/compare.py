"""Is artifact B faster than A, beyond the noise?  Interleaved rounds on one device, and what they say.

One long measurement of A followed by one of B confounds the difference with whatever drifted in between
(a clock ramping, a thermal cap, another process).  So the two are measured in alternating rounds, A B B A
A B ..., each round a separate runner run of the same protocol; each round gives a ratio of medians
(B / A), and the difference is beyond the noise when the order-statistics interval of the median ratio
over rounds excludes 1.  The between-round spread is the noise, measured rather than assumed.  Six rounds is
the fewest whose [min, max] of ratios covers the median ratio with 95% (96.9%).
"""

from __future__ import annotations

from typing import Any

from edgekit.measure.stats import DEFAULT_CONFIDENCE, summarize
from edgekit.onboard.order_stats import median_ci, middle

DEFAULT_ROUNDS = 6


def compare_rounds(rounds_a: list[list[float]], rounds_b: list[list[float]], *, names: tuple[str, str] = ("A", "B"),
                   confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """The verdict from interleaved rounds of samples (ms): one list of samples per round and artifact."""
    if len(rounds_a) != len(rounds_b) or not rounds_a:
        raise ValueError("compare_rounds needs the same number (>= 1) of rounds of each")
    ratios = sorted(middle(sorted(b)) / middle(sorted(a)) for a, b in zip(rounds_a, rounds_b))
    ci = median_ci(ratios, confidence)
    ratio = middle(ratios)
    a_name, b_name = names
    if ci is None:
        beyond_noise, verdict = None, (f"undetermined: {len(ratios)} rounds give no {confidence:.0%} interval "
                                       "(use 6 or more)")
    elif ci["low"] > 1.0:
        beyond_noise, verdict = True, f"{b_name} is slower than {a_name}: {ratio:.3f}x its time, beyond the noise"
    elif ci["high"] < 1.0:
        beyond_noise, verdict = True, f"{b_name} is faster than {a_name}: {ratio:.3f}x its time, beyond the noise"
    else:
        beyond_noise, verdict = False, (f"no difference beyond the noise: {b_name} takes {ratio:.3f}x "
                                        f"{a_name}'s time, interval [{ci['low']:.3f}, {ci['high']:.3f}]")
    return {
        "names": list(names),
        "rounds": len(ratios),
        "ratio": ratio,  # median over rounds of B's median / A's median
        "ratio_ci_low": ci["low"] if ci else None,
        "ratio_ci_high": ci["high"] if ci else None,
        "ci_confidence": ci["confidence"] if ci else None,
        "round_ratios": ratios,
        "beyond_noise": beyond_noise,
        "verdict": verdict,
        "a": summarize([s for r in rounds_a for s in r], confidence),  # pooled over rounds
        "b": summarize([s for r in rounds_b for s in r], confidence),
    }


def compare_artifacts(a, b, host=None, *, rounds: int = DEFAULT_ROUNDS, connect: dict | None = None,
                      names: tuple[str, str] | None = None, **protocol) -> dict[str, Any]:
    """Measure artifacts ``a`` and ``b`` in interleaved rounds (A B, B A, A B, ...) here or on ``host``.

    ``protocol``: measure_latency's overrides (repeats, warmup, threads, cpus...), the same for both.
    Returns ``compare_rounds``'s verdict plus each round's reports.  On a board one SSH connection serves
    every round, and each artifact is uploaded once.
    """
    from edgekit.artifacts import CompiledArtifact
    from edgekit.measure.protocol import measure_latency

    a, b = (x if isinstance(x, CompiledArtifact) else CompiledArtifact.open(x) for x in (a, b))
    names = names or (a.artifact_id, b.artifact_id)
    reports = {0: [], 1: []}

    def run_rounds(device):
        for i in range(rounds):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first: no order bias
                reports[which].append(measure_latency((a, b)[which], device, **protocol))

    if host is None or not isinstance(host, str):
        run_rounds(host)
    else:
        from edgekit.deploy.remote import RemoteHost

        with RemoteHost(host, **(connect or {})) as remote:
            run_rounds(remote)
    result = compare_rounds([r.samples_ms for r in reports[0]], [r.samples_ms for r in reports[1]], names=names)
    result["emulated"] = any(r.emulated for r in reports[0] + reports[1])
    if result["emulated"]:
        result["verdict"] = "EMULATED, not a measurement of the board: " + result["verdict"]
    result["warnings"] = sorted({w for r in reports[0] + reports[1] for w in r.warnings})
    result["reports"] = {"a": [r.to_dict() for r in reports[0]], "b": [r.to_dict() for r in reports[1]]}
    return result
