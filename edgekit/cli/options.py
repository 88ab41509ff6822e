"""Option groups every subcommand shares, declared once: model, SSH, measurement, --json, --targets-dir, search.

Defaults are never copied here.  An SSH or measurement flag the user leaves out is left out of the call too
(``connect_kwargs``, ``measure_overrides``), so the API's own default applies (RemoteHost's timeouts, the
target profile's measurement protocol); the optimize flags are generated from ``SearchConfig``'s fields.
"""

from __future__ import annotations

import dataclasses

MODEL_HELP = ("zoo:NAME, a .pt2 (torch.export) or .onnx file, a .pt file of a whole nn.Module, "
              "package.module:factory, package.module:factory@weights.pt (a state_dict), or an "
              "`edgekit compress` output directory")
# deploy.deploy.DEFAULT_ROOT, written out: importing the deploy stage here would slow every `edgekit` call;
# tests/test_models.py checks that the two agree.
DEFAULT_DEVICE_ROOT = "~/.edgekit"


def add_json_option(parser) -> None:
    parser.add_argument("--json", action="store_true", help="write the report as JSON to stdout (logs go to stderr)")


def add_targets_dir_option(parser) -> None:
    parser.add_argument("--targets-dir", action="append", default=[], metavar="DIR",
                        help="extra directory of target profiles (*.toml); may repeat; also $EDGEKIT_TARGETS_DIR")


# ---------------------------------------------------------------- the model


def add_model_options(parser, *, model: bool = True) -> None:
    """--model, --input-shape, --frontend: what `compile`, `tune`, `run` and `deploy` take.

    ``model=False``: the caller declares --model itself (in a mutually exclusive group with --artifact).
    """
    if model:
        parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--input-shape", action="append", default=None, metavar="1,3,224,224",
                        help="input shape, once per input (needed for factories, .pt files and dynamic ONNX inputs)")
    parser.add_argument("--frontend", choices=("auto", "onnx"), default="auto",
                        help="auto: torch.export for torch models, ONNX for .onnx files")


def input_shapes(args):
    from edgekit.compile.frontend import parse_input_shape

    return [parse_input_shape(s) for s in args.input_shape] if args.input_shape else None


def artifact_from_arg(text: str):
    """--artifact: an artifact directory, or the -o directory of `edgekit compile` holding exactly one."""
    from pathlib import Path

    from edgekit.artifacts import MANIFEST_NAME, CompiledArtifact
    from edgekit.errors import ArtifactError, UsageError

    path = Path(text)
    if (path / MANIFEST_NAME).is_file() or not path.is_dir():
        return CompiledArtifact.open(path)  # its own errors: not found, damaged manifest
    found = sorted(p for p in path.iterdir() if (p / MANIFEST_NAME).is_file())
    if len(found) == 1:
        return CompiledArtifact.open(found[0])
    if not found:
        raise ArtifactError(f"{path} is not an artifact directory and holds none (no {MANIFEST_NAME})",
                            hint="pass the directory `edgekit compile` printed, or its -o directory")
    raise UsageError(f"{path} holds {len(found)} artifacts; name one: " + ", ".join(str(p) for p in found))


# ---------------------------------------------------------------- SSH


def add_ssh_options(parser, *, several: bool = True, host_required: bool = True, root: bool = True) -> None:
    """How to reach a device: --host (repeatable with ``several``), keys, known_hosts, timeouts, retries."""
    if several:
        parser.add_argument("--host", action="append", default=[], metavar="USER@HOST[:PORT]",
                            help="device to use (or an ~/.ssh/config alias); repeat for several")
        parser.add_argument("--inventory", metavar="FILE",
                            help="devices, one per line, or TOML [[device]] tables (host, name, identity_file...)")
    else:
        parser.add_argument("--host", required=host_required, metavar="USER@HOST[:PORT]",
                            help="the device over SSH (or an ~/.ssh/config alias)"
                                 + ("" if host_required else "; default: this machine"))
    parser.add_argument("-i", "--identity-file", action="append", default=[], metavar="KEY",
                        help="private key to log in with (default: ~/.ssh/config, the agent, ~/.ssh/id_*)")
    parser.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default: ~/.ssh/known_hosts)")
    parser.add_argument("--trust-new-host", action="store_true",
                        help="accept and record the key of a host not yet in known_hosts (a changed key is "
                             "always refused)")
    parser.add_argument("--ssh-config", metavar="FILE", help="ssh_config to read (default: ~/.ssh/config)")
    parser.add_argument("--no-agent", action="store_true", help="do not use the ssh-agent")
    parser.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                        help="seconds to connect and log in (default: the SSH layer's)")
    parser.add_argument("--transfer-timeout", type=float, default=None, metavar="S",
                        help="seconds an upload may stall (default: the SSH layer's)")
    parser.add_argument("--retries", type=int, default=None,
                        help="retries of transient connection failures (default: the SSH layer's)")
    if root:
        parser.add_argument("--root", default=DEFAULT_DEVICE_ROOT, metavar="DIR",
                            help="deploy directory on the device (default: %(default)s)")


def connect_kwargs(args) -> dict:
    """RemoteHost keyword arguments from the SSH flags; a flag left out is left out (RemoteHost's default)."""
    kwargs = {"identity_files": tuple(args.identity_file), "allow_agent": not args.no_agent,
              "trust_new_host": args.trust_new_host}
    for flag, key in (("connect_timeout", "connect_timeout_s"), ("transfer_timeout", "transfer_timeout_s"),
                      ("retries", "retries"), ("known_hosts", "known_hosts"), ("ssh_config", "ssh_config")):
        value = getattr(args, flag)
        if value is not None:
            kwargs[key] = value
    return kwargs


# ---------------------------------------------------------------- measuring


def add_one_device_options(parser) -> None:
    """What a command that measures on one device (this machine, or ``--host``) takes after its own options."""
    parser.add_argument("--emulated", action="store_true", help="the device is emulated (qemu)")
    add_ssh_options(parser, several=False, host_required=False)
    add_measure_options(parser)
    add_targets_dir_option(parser)
    add_json_option(parser)


def add_measure_options(parser, *, kernels: bool = False) -> None:
    """--warmup/--repeats/--threads (default: the target profile's), and --kernels where it applies."""
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: the profile's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, all kept (default: the profile's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads the model runs with (default: the profile's)")
    parser.add_argument("--ci-target", type=_fraction("--ci-target"), default=None, metavar="R",
                        help="stopping rule: keep timing past --repeats until the median's 95%% interval is within "
                             "R of it either side, or --time-cap passes (default: 0.02, or the profile's; with --repeats "
                             "and no --ci-target: off, exactly that many samples; 0: off)")
    parser.add_argument("--time-cap", type=_seconds("--time-cap"), default=None, metavar="S",
                        help="seconds of timing the stopping rule may spend (default: 10)")
    parser.add_argument("--cpus", type=_cpu_list, default=None, metavar="0,1",
                        help="pin the model to these CPU ids on the device (default: not pinned)")
    if kernels:
        parser.add_argument("--kernels", action="store_true", help="also time each fused kernel on the device")


# flag -> MeasureProtocol field, for the flags add_measure_options declares
MEASURE_FLAGS = {"warmup": "warmup", "repeats": "repeats", "threads": "threads", "ci_target": "ci_target_ratio",
                 "time_cap": "time_cap_s", "cpus": "cpus"}


def measure_overrides(args) -> dict:
    """The measurement flags the user gave, as keyword arguments (the others: the profile's)."""
    return {field: getattr(args, flag) for flag, field in MEASURE_FLAGS.items() if getattr(args, flag, None) is not None}


def _fraction(flag):
    def parse(text):
        import argparse

        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a fraction such as 0.02, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{flag} is a fraction in [0, 1) (0: off), got {text}")
        return value
    return parse


def _seconds(flag):
    def parse(text):
        import argparse

        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} takes seconds > 0, got {text!r}")
        return value
    return parse


def _cpu_list(text):
    import argparse

    try:
        cpus = tuple(int(c) for c in text.split(","))
    except ValueError:
        cpus = ()
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"--cpus takes CPU ids such as 0,1, got {text!r}")
    return cpus


# ---------------------------------------------------------------- the optimize search

# SearchConfig fields that are flags of `edgekit optimize`, with their help; type and default come from the field.
SEARCH_FLAGS = {
    "seed": "seed of every fine-tuning and data split",
    "step_ratio": "latency cut per iteration, as a fraction of the baseline's",
    "width_step_ratio": "candidate widths are multiples of this fraction of a group's width",
    "finetune_epochs": "epochs of distillation for each proposal",
    "finetune_examples": "training examples each proposal is fine-tuned on",
    "final_epochs": "epochs of distillation for the chosen model",
    "val_examples": "training examples held out to score proposals",
    "test_examples": "test examples the chosen model is scored on (default: all)",
    "max_iterations": "stop after this many steps",
    "measure_rounds": "separate runs per measurement; the least-disturbed one counts",
}


def add_search_options(group) -> None:
    """One flag per SEARCH_FLAGS field, plus --exclude and --quantize, typed and defaulted by SearchConfig."""
    from edgekit.optimize.config import SearchConfig

    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    for name, text in SEARCH_FLAGS.items():
        default = fields[name].default
        kind = float if "float" in str(fields[name].type) else int
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                           metavar="R" if kind is float else "N",
                           help=text if default is None else f"{text} (default: %(default)s)")
    group.add_argument("--exclude", action="append", default=[], metavar="GROUP",
                       help="layer group (producing module name or glob) never pruned; may repeat")
    group.add_argument("--quantize", action="store_true", default=fields["quantize"].default,
                       help="after the search, choose int8 or float per layer from measured latency and accuracy")


def search_options(args) -> dict:
    """SearchConfig keyword arguments from the flags add_search_options declared."""
    options = {name: getattr(args, name) for name in SEARCH_FLAGS}
    return {**options, "exclude": tuple(args.exclude), "quantize": args.quantize}


# ---------------------------------------------------------------- the board pool (issue 13)


def add_pool_options(parser) -> None:
    """--pool/--key: borrow boards from a pool's tracker (`edgekit pool start`) instead of one --host."""
    parser.add_argument("--pool", metavar="HOST:PORT", help="measure on boards borrowed from this pool's tracker")
    parser.add_argument("--key", metavar="KEY", help="device key of the boards to borrow (default: the target's name)")


def pool_device(args, target_name: str, **kwargs):
    """The ``PoolDevice`` that --pool/--key name, or None without --pool."""
    if not getattr(args, "pool", None):
        if getattr(args, "key", None):
            from edgekit.errors import UsageError

            raise UsageError("--key names boards of a pool: give --pool HOST:PORT too")
        return None
    if getattr(args, "host", None):
        from edgekit.errors import UsageError

        raise UsageError("give --pool or --host, not both", hint="--pool borrows a board; --host names one")
    from edgekit.pool.client import PoolDevice

    return PoolDevice(args.pool, args.key or target_name, **kwargs)
