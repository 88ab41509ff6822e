"""Measuring tuning candidates on a device that has nothing open but SSH.

The device runs TVM's RPC server bound to its own loopback; the host reaches it through
a port forward (``direct-tcpip`` channels) over the same paramiko connection edgekit
already uses for the device, so no other port has to be open on the board:

    MetaSchedule runner worker --TCP--> 127.0.0.1:<local port> (this process, PortForward)
        --SSH channel--> device 127.0.0.1:<server port> --> RPC server (DEVICE_SERVER)

What the stock ``python -m tvm.exec.rpc_server`` got wrong here (DESIGN.md section 8), and
what this module does instead:
- it starts its listener in a popen worker, which needs cloudpickle on the device: the
  device script below runs TVM's listen loop in its own process (numpy + TVM runtime only);
- killing it left orphan session workers: the script watches its stdin and, when the SSH
  channel closes (tuning ended, host crashed, link dropped), kills its session workers and
  exits; ``timeout`` around it (RemoteHost.spawn) kills its process group as the last resort;
- about half the trials failed on a missing ``tvm.contrib.random.random_fill_for_measure``
  (the device runtime lacks it): arguments are filled with numpy on the host and copied
  over instead (``alloc_with_numpy``);
- the stock ``.tar`` export needs a compiler on the device: candidates are linked into a
  ``.so`` on the host, with the profile's cross compiler.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

from edgekit.errors import DeviceRuntimeError, RemoteCommandError
from edgekit.onboard import inline_source

SESSION_TIMEOUT_S = 120
SERVER_TIME_LIMIT_S = 6 * 3600  # the device kills the server by itself after this, whatever happens
DEVICE_ROOT = "~/.edgekit"

# Runs ON the device: python3 -c DEVICE_SERVER <runtime site-packages> <work dir>.  No edgekit imports.
DEVICE_SERVER = inline_source("rpc_server")  # edgekit/onboard/rpc_server.py, with its helper inlined



class PortForward:
    """``ssh -L``: a listener on 127.0.0.1 whose connections become direct-tcpip channels."""

    def __init__(self, transport, remote_host: str, remote_port: int):
        self.transport = transport
        self.remote = (remote_host, remote_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._closed = threading.Event()
        self._pairs: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name="edgekit-forward", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self.listener.accept()
            except OSError:
                return
            try:
                channel = self.transport.open_channel("direct-tcpip", self.remote, peer, timeout=15)
            except Exception:
                client.close()  # the worker sees a closed connection and reports a failed trial
                continue
            self.connections += 1
            with self._lock:
                self._pairs.append((client, channel))
            threading.Thread(target=self._pump, args=(client, channel), daemon=True).start()

    def _pump(self, client, channel) -> None:
        try:
            pump(client, channel, self._closed)
        finally:
            with self._lock:
                if (client, channel) in self._pairs:
                    self._pairs.remove((client, channel))

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, channel in pairs:
            for end in (channel, client):
                try:
                    end.close()
                except Exception:
                    pass


class RemoteTuningSession:
    """An RPC server on the device, a tunnel to it, and a MetaSchedule runner that uses both."""

    def __init__(self, remote, owned: bool, process, info: dict, forward: PortForward, profile):
        self.remote = remote
        self.owned = owned
        self.process = process
        self.info = info
        self.forward = forward
        self.profile = profile

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def facts(self) -> dict:
        return self.info.get("facts", {})

    @classmethod
    def open(cls, host, profile, *, log=lambda message: None, root: str = DEVICE_ROOT,
             start_timeout_s: float = 120.0, **connect_kwargs) -> "RemoteTuningSession":
        from edgekit.deploy.remote import RemoteHost

        owned = not hasattr(host, "spawn")
        remote = RemoteHost(host, **connect_kwargs) if owned else host
        try:
            remote.connect()
            site, work = f"{root}/runtime/site-packages", f"{root}/tuning-server"
            process = remote.spawn(["python3", "-c", DEVICE_SERVER, site, work], time_limit_s=SERVER_TIME_LIMIT_S,
                                   env={"TVM_USE_RUNTIME_LIB": "1"})
            try:
                info = process.read_json(start_timeout_s)
            except Exception:
                process.close(wait_s=1)
                raise
            if not info.get("ok"):
                process.close(wait_s=1)
                raise DeviceRuntimeError(f"the TVM runtime does not import on the device: {info.get('error')}",
                                         host=remote.name, command="python3 -c <tuning server>",
                                         hint=f"run `edgekit device setup --host {remote.name} --target "
                                              f"{profile.name}` first")
            _check_machine(remote, profile, info.get("facts", {}))
            forward = PortForward(remote.forwarding_transport(), "127.0.0.1", int(info["port"]))
            log(f"RPC server on {remote.name} (pid {info.get('pid')}, TVM {info.get('tvm')}) listens on its "
                f"127.0.0.1:{info['port']}; tunnel from 127.0.0.1:{forward.port} over SSH")
            return cls(remote, owned, process, info, forward, profile)
        except Exception:
            if owned:
                remote.close()
            raise

    def runner(self):
        from edgekit.compile.tune_workers import EVALUATOR
        from edgekit.compile.tvm_env import import_tvm

        import_tvm()
        from tvm.s_tir import meta_schedule as ms

        config = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=self.forward.port,
                                     tracker_key="edgekit-direct", session_timeout_sec=SESSION_TIMEOUT_S)
        return ms.runner.RPCRunner(
            rpc_config=config,
            evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
            f_create_session=connect_direct, f_alloc_argument=alloc_with_numpy,
            max_workers=1)  # one at a time: trials must not share the board

    def close(self) -> None:
        self.forward.close()
        try:
            self.process.close(wait_s=5)  # stdin EOF: the server kills its process group
        finally:
            if self.owned:
                self.remote.close()


def _check_machine(remote, profile, facts) -> None:
    machine = facts.get("machine")
    if machine and profile.arch not in ("native", machine):
        raise RemoteCommandError(f"device {remote.name} is {machine}, target '{profile.name}' is {profile.arch}",
                                 host=remote.name, hint="pick the target profile that matches the board")


# ------------------------------------------------------------------ run in MetaSchedule's runner workers


def connect_direct(rpc_config):
    """Connect to the server through the tunnel; the 'tracker' fields carry the tunnel's address."""
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, int(rpc_config.tracker_port),
                       session_timeout=rpc_config.session_timeout_sec)


def alloc_with_numpy(session, device, args_info, alloc_repeat):
    """Random arguments made on the host and copied over (the device runtime has no random_fill)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise NotImplementedError(f"argument kind {kind}")
            if "float" in str(dtype):
                host = rng.standard_normal(shape).astype(dtype)
            elif str(dtype) == "bool":
                host = rng.integers(0, 2, size=shape).astype(dtype)
            else:
                host = rng.integers(-8, 8, size=shape).astype(dtype) if "uint" not in str(dtype) \
                    else rng.integers(0, 8, size=shape).astype(dtype)
            tensor = tvm.runtime.empty(shape, dtype, device)
            tensor.copyfrom(host)
            args.append(tensor)
        repeated.append(args)
    return repeated



def pump(sock, channel, closed: threading.Event) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until either end closes (or ``closed``)."""
    try:
        while not closed.is_set():
            ready, _, _ = select.select([sock, channel], [], [], 1.0)
            if sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(1 << 16)
                if not data:
                    break
                sock.sendall(data)
    except (OSError, EOFError):
        pass
    finally:
        for end in (channel, sock):
            try:
                end.close()
            except Exception:  # noqa: BLE001  (already closed by the other side)
                pass
