"""Schedule rules for the elementwise kernel family (to be written: issue 10)."""

from __future__ import annotations


def rules(cpu) -> list:
    """The elementwise rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    return []
