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
SUBCOMMANDS = ("targets", "compile", "run", "compress", "deploy", "device", "optimize", "tune")

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
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `edgekit targets list | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
