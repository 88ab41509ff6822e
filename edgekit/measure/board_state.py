"""Did the board run at one speed?  Warnings from the clocks the runner read before and after timing.

The runner (edgekit/onboard/device_facts.py: clock_state) reads every CPU's governor and current frequency,
every thermal zone and, on a Raspberry Pi, the firmware's throttle flags.  A measurement taken while the
governor scales the clock, or across a frequency drop, is a measurement of the governor: the report says so.
"""

from __future__ import annotations

from typing import Any

# A drop of the fastest CPU's clock by more than this between before and after counts as throttling: cpufreq
# readings jitter by a step or two on boards that scale, and a real thermal cap cuts far deeper.
FREQ_DROP_RATIO = 0.05
HOT_C = 80.0  # Cortex-A boards start to cap their clocks around here (the Pi 4 firmware soft-limits at 80 C)
# Raspberry Pi get_throttled bits: under-voltage now (0), frequency capped now (1), throttled now (2), soft
# temperature limit now (3).
PI_NOW_BITS = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}


def board_warnings(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Plain-words warnings about the clocks across one measurement; none when the board exposes nothing."""
    if not before or not after:
        return []
    warnings = []
    governors = sorted({g for state in (before, after) for g in (state.get("governors") or {}).values()})
    slow = [g for g in governors if g != "performance"]
    if slow:
        warnings.append(f"CPU governor is {', '.join(slow)}, not performance: the clock may change while "
                        "timing (set it with `cpupower frequency-set -g performance`)")
    top_before = max((before.get("freqs_khz") or {}).values(), default=None)
    top_after = max((after.get("freqs_khz") or {}).values(), default=None)
    if top_before and top_after and top_after < top_before * (1 - FREQ_DROP_RATIO):
        warnings.append(f"the board throttled: the fastest CPU clock fell from {top_before / 1000:.0f} MHz to "
                        f"{top_after / 1000:.0f} MHz during the measurement")
    hottest = max((after.get("temps_c") or {}).values(), default=None)
    if hottest is not None and hottest >= HOT_C:
        warnings.append(f"the board reached {hottest:.1f} C: near its thermal limit, clocks may be capped")
    flags = _pi_flags(after.get("pi_throttled"))
    if flags:
        warnings.append(f"the Raspberry Pi firmware reports: {', '.join(flags)}")
    return warnings


def stopping_warnings(stopping: dict[str, Any] | None) -> list[str]:
    """A stopping rule that ran out of time or samples says so: the interval is wider than asked."""
    if not stopping or stopping.get("rule") != "ci" or stopping.get("reason") == "ci_reached":
        return []
    ratio = stopping.get("ci_half_width_ratio")
    width = f"±{ratio:.1%}" if ratio is not None else "undefined"
    limit = (f"the time cap of {stopping['time_cap_s']:g} s" if stopping.get("reason") == "time_cap"
             else f"{stopping.get('max_repeats')} samples")
    return [f"the median's interval is wide: {width} after {limit}, target ±{stopping['ci_target_ratio']:.1%} "
            "(the device is noisy: close other programs, pin cores with --cpus, or raise --time-cap)"]


def _pi_flags(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = int(raw.split("=")[-1], 16)  # "throttled=0x50005" from vcgencmd, "50005" from sysfs
    except ValueError:
        return []
    return [name for bit, name in PI_NOW_BITS.items() if value & (1 << bit)]
