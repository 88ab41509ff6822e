"""``edgekit device check`` / ``edgekit device setup``: what a device lacks, and installing its runtime."""

from __future__ import annotations

from edgekit.cli.options import add_json_option, add_ssh_options, add_targets_dir_option, connect_kwargs
from edgekit.cli.output import emit_json, info


def register(subparsers) -> None:
    parser = subparsers.add_parser("device", help="check a device, or install the TVM runtime on it")
    sub = parser.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="arch, glibc, python, numpy/TVM runtime, disk, governor, load")
    setup = sub.add_parser("setup", help="install the TVM runtime on the device")
    for p in (check, setup):
        p.add_argument("--target", required=True, help="target profile the device is for")
        add_ssh_options(p, several=False)
        add_targets_dir_option(p)
        add_json_option(p)
    check.add_argument("--import", dest="do_import", action="store_true",
                       help="also import the runtime on the device (seconds on a board)")
    setup.add_argument("--method", choices=("bundle", "pip"), default="bundle",
                       help="bundle: the host uploads the runtime (no registry needed on the device); "
                            "pip: pip install --user on the device")
    setup.add_argument("--wheels", metavar="DIR", help="wheels for the device's platform to bundle (offline)")
    setup.add_argument("--install", default="runtime", metavar="runtime,onnxruntime",
                       help="what to install: the TVM runtime (the default) and/or peer runtimes for `edgekit "
                            "compare --peers` (onnxruntime: the wheel for the device's platform, from the host)")
    check.set_defaults(func=run_check)
    setup.set_defaults(func=run_setup)


def _remote(args):
    from edgekit.deploy.remote import RemoteHost

    return RemoteHost(args.host, **connect_kwargs(args))


def run_check(args) -> int:
    from edgekit.deploy.checks import check_device, import_check
    from edgekit.targets import load_target

    profile = load_target(args.target, args.targets_dir)
    with _remote(args) as remote:
        report = check_device(remote, profile, root=args.root)
        imported = import_check(remote, args.root) if args.do_import and report.ok else None
    if args.json:
        emit_json({**report.to_dict(), "import": imported})
    else:
        print(report.text())
        if imported:
            print(f"  ok import    tvm {imported} imports on the device")
    return 0 if report.ok else 31  # DeviceRuntimeError.exit_code: something the device needs is missing


def run_setup(args) -> int:
    from edgekit.deploy.checks import check_device, setup_device
    from edgekit.deploy.deploy import probe_device
    from edgekit.deploy.peer_setup import INSTALLABLE_PEERS, install_peer
    from edgekit.errors import UsageError
    from edgekit.targets import load_target

    wanted = [w.strip() for w in args.install.split(",") if w.strip()]
    unknown = [w for w in wanted if w != "runtime" and w not in INSTALLABLE_PEERS]
    if unknown or not wanted:
        raise UsageError(f"--install: unknown {unknown[0]!r}" if unknown else "--install: nothing named",
                         hint=f"choose from runtime, {', '.join(INSTALLABLE_PEERS)} (comma-separated)")
    profile = load_target(args.target, args.targets_dir)
    with _remote(args) as remote:
        if "runtime" in wanted:
            report = setup_device(remote, profile, root=args.root, method=args.method, wheels_dir=args.wheels,
                                  log=info)
        peers = [w for w in wanted if w != "runtime"]
        facts = probe_device(remote, args.root) if peers else None
        installed = [install_peer(remote, p, facts, root=args.root, wheels_dir=args.wheels, log=info) for p in peers]
        if "runtime" not in wanted:
            report = check_device(remote, profile, root=args.root)
    if args.json:
        emit_json({**report.to_dict(), "peers_installed": installed})
    else:
        print(report.text())
        for peer in installed:
            print(f"  ok peer      {peer['peer']} {peer['version']} imports on the device ({peer['path']})")
    return 0 if report.ok else 31
