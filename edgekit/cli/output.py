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
