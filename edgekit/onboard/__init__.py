"""The programs edgekit runs ON a device, and how the host ships them there.

Each program needs only the Python standard library (the runner and the RPC server also numpy and
the TVM runtime) and never imports edgekit, which the device does not have:

    agent.py         device facts, the deploy lock and the content-addressed store; sent with python3 -c
    runner.py        loads an artifact, checks its outputs, times it; uploaded into each version
    rpc_server.py    TVM's RPC listen loop for remote tuning; sent with python3 -c
    device_facts.py  what they share: file sha256, CPU/board/governor facts, clocks and temperatures
    order_stats.py   the median's confidence interval: the runner's stopping rule, and the host's reports

A program carries device_facts.py with it: uploaded beside it (``UPLOADED_WITH_RUNNER``), or inlined
ahead of its source for ``python3 -c`` (``inline_source``).  This module is host-side.
"""

from __future__ import annotations

from pathlib import Path

PROGRAMS_DIR = Path(__file__).resolve().parent
HELPER_MODULES = ("device_facts",)
RUNNER_PATH = PROGRAMS_DIR / "runner.py"
RUNNER_HELPERS = (*HELPER_MODULES, "order_stats")  # only the runner needs the interval
# The files a deployed version holds beside the artifact's own, so that runner.py runs there as it does here.
UPLOADED_WITH_RUNNER = tuple(PROGRAMS_DIR / f"{name}.py" for name in ("runner", *RUNNER_HELPERS))


def program_path(name: str) -> Path:
    return PROGRAMS_DIR / f"{name}.py"


def inline_source(name: str) -> str:
    """``name``'s source preceded by its helpers, each installed as a module first: one text for ``python3 -c``."""
    lines = ["import sys as _sys, types as _types", ""]
    for helper in HELPER_MODULES:
        source = program_path(helper).read_text()
        lines += [f"_module = _types.ModuleType({helper!r})",
                  f"exec(compile({source!r}, {helper + '.py'!r}, 'exec'), _module.__dict__)",
                  f"_sys.modules[{helper!r}] = _module", ""]
    lines += ["del _sys, _types, _module", ""]
    return "\n".join(lines) + program_path(name).read_text()


def runner_options(protocol) -> list[str]:
    """runner.py's options for a ``MeasureProtocol``: the same on this machine and on a board."""
    argv = ["--warmup", str(protocol.warmup), "--repeats", str(protocol.repeats), "--threads", str(protocol.threads),
            "--min-repeat-ms", str(protocol.min_repeat_ms), "--time-limit", str(protocol.time_limit_s)]
    argv += ["--warmup-settle", str(protocol.warmup_settle_ratio), "--warmup-cap", str(protocol.warmup_cap_s)]
    if protocol.ci_target_ratio > 0:
        argv += ["--ci-target", str(protocol.ci_target_ratio), "--time-cap", str(protocol.time_cap_s),
                 "--max-repeats", str(protocol.max_repeats), "--confidence", str(protocol.confidence)]
    if protocol.cpus:
        argv += ["--cpus", ",".join(str(c) for c in protocol.cpus)]
    if protocol.check_only:
        argv.append("--check-only")
    if protocol.kernels:
        argv += ["--kernels", "--kernel-repeats", str(protocol.kernel_repeats)]
    return argv
