"""``edgekit`` entry point: parse, dispatch to a subcommand module, map failures to exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from edgekit.__about__ import __version__
from edgekit.errors import EdgekitError

# Each name is a module edgekit.cli.<name> with register(subparsers); its parser sets func(args) -> int.
SUBCOMMANDS = ("targets", "compile", "run", "compress", "deploy", "device", "optimize", "tune", "compare", "profile",
               "pool")

log = logging.getLogger("edgekit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Compile, deploy and measure PyTorch models on "
                                     "edge devices, and compress them until they meet a latency budget.")
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"edgekit.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `package.module:factory` models, data and metrics are importable from the current directory, as under
    # `python -m`; the console script's sys.path starts at its bin directory instead.  Appended: never shadows.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    try:
        return args.func(args) or 0
    except EdgekitError as exc:
        if args.verbose:
            _print_trace(exc)
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `edgekit targets list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  a bug, not the user's fault: one line, the trace with -v
        if args.verbose:
            _print_trace(exc)
        first_line = (str(exc).strip().splitlines() or [""])[0][:500]
        print(f"edgekit: internal error: {type(exc).__name__}: {first_line}"
              + ("" if args.verbose else " (run with -v for the trace)"), file=sys.stderr)
        return 1


def _print_trace(exc: BaseException) -> None:
    """The trace of ``exc`` and of the failure it was raised for, even where it was raised ``from None``
    (edgekit hides TVM's own trace from the message, not from -v)."""
    import traceback

    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in reversed(chain):
        print("".join(traceback.format_exception(type(link), link, link.__traceback__, chain=False)), end="",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
