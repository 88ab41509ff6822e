"""Schedule rules for int8 x int8 -> int32 kernels (to be written: issue 10)."""

from __future__ import annotations


def rules(cpu) -> list:
    """The int8 rules for ``cpu`` (edgekit.compile.schedules.CpuInfo), most specific first."""
    return []
