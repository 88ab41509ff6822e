"""Unit-to-unit spread of one measurement made on several identical boards, and the units that disagree.

Boards of one key are meant to be identical; one that is not (a throttling Pi, a wrong governor, a background
job) must not drag the number the search decides on.  Each unit's report carries its median and that median's
95% interval (order statistics, edgekit.measure.stats).  A unit is flagged when

- at least three units measured (with two, nothing says which one is off), and
- its median lies outside the band its siblings span, widened by the noise: their lowest interval bound
  minus, and their highest plus, ``tolerance_ratio`` of their median (default 5%), and
- its own interval does not reach that band either (it disagrees beyond its own noise too).

Flagged units are reported and left out of the kept value; they are never averaged in.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOLERANCE_RATIO = 0.05


@dataclass
class UnitMeasurement:
    unit: str
    median_ms: float
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None

    @property
    def low(self) -> float:
        return self.ci_low_ms if self.ci_low_ms is not None else self.median_ms

    @property
    def high(self) -> float:
        return self.ci_high_ms if self.ci_high_ms is not None else self.median_ms


@dataclass
class Spread:
    units: list[str]
    medians_ms: dict[str, float]
    spread_ratio: float  # (highest - lowest unit median) / median of the unit medians
    flagged: dict[str, str] = field(default_factory=dict)  # unit -> why

    @property
    def kept(self) -> list[str]:
        return [u for u in self.units if u not in self.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {"units": self.units, "medians_ms": self.medians_ms, "spread_ratio": round(self.spread_ratio, 4),
                "flagged": self.flagged, "kept": self.kept}


def unit_spread(measurements: list[UnitMeasurement], *,
                tolerance_ratio: float = DEFAULT_TOLERANCE_RATIO) -> Spread:
    """The spread over units (one measurement per unit: the best of its rounds) and the flagged ones."""
    by_unit: dict[str, UnitMeasurement] = {}
    for m in measurements:  # a unit that measured several rounds: its least-disturbed one speaks for it
        if m.unit not in by_unit or m.median_ms < by_unit[m.unit].median_ms:
            by_unit[m.unit] = m
    units = sorted(by_unit)
    medians = {u: by_unit[u].median_ms for u in units}
    centre = statistics.median(medians.values()) if medians else 0.0
    spread = (max(medians.values()) - min(medians.values())) / centre if len(units) > 1 and centre > 0 else 0.0
    flagged = {}
    if len(units) >= 3:
        for u in units:
            siblings = [by_unit[s] for s in units if s != u]
            middle = statistics.median(s.median_ms for s in siblings)
            band_low = min(s.low for s in siblings) - tolerance_ratio * middle
            band_high = max(s.high for s in siblings) + tolerance_ratio * middle
            me = by_unit[u]
            if me.median_ms > band_high and me.low > band_high:
                flagged[u] = (f"median {me.median_ms:.4g} ms is {me.median_ms / middle:.2f}x its siblings' "
                              f"{middle:.4g} ms, beyond their noise")
            elif me.median_ms < band_low and me.high < band_low:
                flagged[u] = (f"median {me.median_ms:.4g} ms is {me.median_ms / middle:.2f}x its siblings' "
                              f"{middle:.4g} ms, beyond their noise")
    return Spread(units, medians, spread, flagged)
