#!/usr/bin/env python3
"""Start or stop a local fleet of edgekit test devices by hand, for demos (run as root).

    python tools/fleet.py start [--devices 3] [--no-runtime N] [--pi] [--dir /tmp/edgekit-fleet]
    python tools/fleet.py status
    python tools/fleet.py stop

`start` launches real sshd devices on 127.0.0.1 (with the TVM runtime on their python path, except
`--no-runtime` of them) and, with --pi, an emulated Raspberry Pi 4.  It writes into --dir:
  inventory.toml   for `edgekit deploy --inventory`
  ssh_config       aliases dev1, dev2, ..., pi  (`edgekit deploy --ssh-config FILE --host dev1`)
  state.json       what `stop` needs (pids, directories, binfmt registration)
and prints example commands.  The devices keep running after this script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DIR = Path(os.environ.get("EDGEKIT_FLEET_DIR", "/tmp/edgekit-fleet"))


def start(args) -> int:
    from edgekit.testing import emulated_pi
    from edgekit.testing.sshd import create_device

    out = Path(args.dir)
    if (out / "state.json").exists():
        print(f"a fleet is already running ({out / 'state.json'}); run `tools/fleet.py stop` first", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    site = runtime_site()
    devices, state = [], {"devices": [], "binfmt_registered": False}
    for i in range(args.devices):
        with_runtime = i < args.devices - args.no_runtime
        env = {"PYTHONPATH": str(site)} if with_runtime else {}
        d = create_device(env=env)
        devices.append((f"dev{i + 1}", d, with_runtime))
    if args.pi:
        rootfs = emulated_pi.build_userland()
        state["binfmt_registered"] = emulated_pi.register_binfmt()
        d = create_device(chroot=rootfs, env={"TVM_USE_RUNTIME_LIB": "1"})
        devices.append(("pi", d, True))
    known_hosts = out / "known_hosts"
    known_hosts.write_text("".join(d.known_hosts.read_text() for _, d, _ in devices))
    config, inventory = [], []
    for name, d, with_runtime in devices:
        config.append(f"Host {name}\n  HostName 127.0.0.1\n  Port {d.port}\n  User {d.user}\n"
                      f"  IdentityFile {d.client_key}\n  UserKnownHostsFile {known_hosts}\n")
        target = "rpi4" if name == "pi" else "host"
        inventory.append(f'[[device]]\nname = "{name}"\nhost = "{d.host_spec}"\ntarget = "{target}"\n'
                         f'identity_file = "{d.client_key}"\nknown_hosts = "{known_hosts}"\n')
        state["devices"].append({"name": name, "pid": d.process.pid, "workdir": str(d.workdir), "home": str(d.home),
                                 "host": d.host_spec, "runtime": with_runtime, "chroot": str(d.chroot or "")})
    (out / "ssh_config").write_text("\n".join(config))
    (out / "inventory.toml").write_text("\n".join(i for i, (n, _, _) in zip(inventory, devices) if n != "pi"))
    (out / "state.json").write_text(json.dumps(state, indent=2))
    for name, d, with_runtime in devices:
        note = "emulated rpi4 (aarch64 under qemu)" if name == "pi" else \
            ("TVM runtime installed" if with_runtime else "no TVM runtime (try `edgekit device setup`)")
        print(f"{name:6} {d.host_spec:32} {note}")
    print(f"\nexamples:\n  edgekit deploy --artifact ARTIFACT_DIR --inventory {out / 'inventory.toml'} --no-agent\n"
          f"  edgekit deploy --target host --model model.pt2 --ssh-config {out / 'ssh_config'} --host dev1\n"
          f"  edgekit device check --target host --ssh-config {out / 'ssh_config'} --host dev1\n"
          + (f"  edgekit deploy --target rpi4 --model model.pt2 --ssh-config {out / 'ssh_config'} --host pi\n"
             if args.pi else "")
          + "  python tools/fleet.py stop")
    return 0


def runtime_site() -> Path:
    from edgekit.testing.sshd import local_runtime_site

    os.environ.setdefault("EDGEKIT_CACHE", "/var/cache/edgekit-test")
    return local_runtime_site()


def stop(args) -> int:
    import psutil

    from edgekit.testing import emulated_pi

    state_path = Path(args.dir) / "state.json"
    if not state_path.exists():
        print("no fleet is running", file=sys.stderr)
        return 0
    state = json.loads(state_path.read_text())
    for d in state["devices"]:
        try:
            listener = psutil.Process(d["pid"])
            procs = listener.children(recursive=True) + [listener]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)
        shutil.rmtree(d["workdir"], ignore_errors=True)
        if d.get("chroot"):
            shutil.rmtree(d["home"], ignore_errors=True)
        print(f"stopped {d['name']} ({d['host']})")
    if state.get("binfmt_registered"):
        emulated_pi.unregister_binfmt()
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


def status(args) -> int:
    import psutil

    state_path = Path(args.dir) / "state.json"
    if not state_path.exists():
        print("no fleet is running")
        return 0
    for d in json.loads(state_path.read_text())["devices"]:
        alive = psutil.pid_exists(d["pid"])
        print(f"{d['name']:6} {d['host']:32} {'up' if alive else 'DOWN'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="where the fleet's files go")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("start")
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--no-runtime", type=int, default=0, help="how many of the devices lack the TVM runtime")
    p.add_argument("--pi", action="store_true", help="also start an emulated Raspberry Pi 4")
    p.set_defaults(func=start)
    sub.add_parser("stop").set_defaults(func=stop)
    sub.add_parser("status").set_defaults(func=status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
