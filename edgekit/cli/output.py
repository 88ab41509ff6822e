"""Shared CLI output: JSON on stdout, logs on stderr, progress display.  (Option groups: cli/options.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from edgekit.cli.options import add_json_option, add_targets_dir_option  # noqa: F401 - cli/tune.py


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def info(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def progress(label: str):
    """A spinner with elapsed time on a terminal; one plain line per step in a pipe."""
    started = time.perf_counter()
    if sys.stderr.isatty() and not os.environ.get("EDGEKIT_NO_PROGRESS"):
        from rich.console import Console

        with Console(stderr=True).status(f"{label}..."):
            yield
        info(f"{label}: done in {time.perf_counter() - started:.1f} s")
    else:
        yield
        info(f"{label}: done in {time.perf_counter() - started:.1f} s")


def measurement_lines(report) -> list[str]:
    """The lines under a latency: the median's interval and how timing stopped, memory, clocks, warnings."""
    from edgekit.measure.stats import format_interval

    lines = []
    if report.samples_ms:
        stop = report.stopping or {}
        how = {"ci_reached": "interval reached its target", "time_cap": "stopped at the time cap",
               "max_repeats": "stopped at the sample cap"}.get(stop.get("reason"), "fixed repeats")
        settled = {True: "settled", False: "not settled at the cap", None: "fixed"}[report.warmup_settled]
        lines.append(f"interval   median in {format_interval(report.stats)}; {how}; "
                     f"{report.warmup_runs if report.warmup_runs is not None else report.warmup} warm-up runs "
                     f"({settled})")
    memory = report.memory or {}
    if memory.get("peak_rss_bytes"):
        runtime = memory.get("runtime_rss_bytes")
        own = memory.get("artifact") or {}
        lines.append(f"memory     peak resident {memory['peak_rss_bytes'] / 2**20:.1f} MiB"
                     + (f" (runtime alone {runtime / 2**20:.1f} MiB)" if runtime else "")
                     + (f"; model: constants {own['constant_bytes'] / 2**10:.1f} KiB + workspace "
                        f"{own['workspace_bytes'] / 2**10:.1f} KiB" if "constant_bytes" in own
                        else "; model memory not recorded"))
    after = (report.clocks or {}).get("after")
    if after is not None:
        lines.append("clocks     " + describe_clocks(report.clocks))
    lines += [f"WARNING    {w}" for w in report.warnings]
    return lines


def describe_clocks(clocks: dict) -> str:
    """'governor performance, 1500->1500 MHz, 51.2->53.0 C', or what the board does not expose."""
    before, after = clocks.get("before") or {}, clocks.get("after") or {}
    parts = []
    governors = sorted(set((after.get("governors") or {}).values()))
    parts.append(f"governor {', '.join(governors)}" if governors else "governor unavailable")
    f0, f1 = (max((s.get("freqs_khz") or {}).values(), default=None) for s in (before, after))
    parts.append(f"{f0 / 1000:.0f}->{f1 / 1000:.0f} MHz" if f0 and f1 else "frequency unavailable")
    t0, t1 = (max((s.get("temps_c") or {}).values(), default=None) for s in (before, after))
    parts.append(f"{t0:.1f}->{t1:.1f} C" if t0 is not None and t1 is not None else "temperature unavailable")
    return ", ".join(parts)


def print_kernels(kernels: list[dict], *, prefix: str, limit: int = 10) -> None:
    """The slowest kernels, with the modules they were fused from where the report has them."""
    from edgekit.measure.cost_card import kernel_where

    for k in sorted(kernels, key=lambda k: -k["total_ms"])[:limit]:
        where = kernel_where(k)
        print(f"{prefix}{k['name']:<40} {k['median_ms']:.4f} ms x {k['calls']}" + (f"  {where}" if where else ""))
