"""Schedule rules for the depthwise kernel family (to be written: issue 10)."""

from __future__ import annotations


def rules(cpu) -> list:
    """The depthwise rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    return []
