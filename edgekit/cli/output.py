"""Shared CLI plumbing: --json and --targets-dir options, report printing, progress display."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time


def add_json_option(parser) -> None:
    parser.add_argument("--json", action="store_true", help="write the report as JSON to stdout (logs go to stderr)")


def add_targets_dir_option(parser) -> None:
    parser.add_argument("--targets-dir", action="append", default=[], metavar="DIR",
                        help="extra directory of target profiles (*.toml); may repeat; also $EDGEKIT_TARGETS_DIR")


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
