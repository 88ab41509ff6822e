"""Schedule rules for the reduction kernel family (to be written: issue 10)."""

from __future__ import annotations


def rules(cpu) -> list:
    """The reduction rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    return []
