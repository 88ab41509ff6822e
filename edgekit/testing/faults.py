"""Real faults for test devices, without touching the kernel's network stack.

- ``FaultProxy``: a TCP proxy on 127.0.0.1 in front of a device's sshd that forwards, blackholes
  (accepts and never answers) or cuts the connection after N bytes from the client;
- ``tmpfs_root``: a size-limited tmpfs mounted as a device's deploy root (a full disk);
- ``build_faulty_artifact``: a real TVM library whose kernel segfaults or never returns;
- ``variant_artifact``: a copy of an artifact under a new id, optionally padded with N bytes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from edgekit.artifacts import MANIFEST_NAME, CompiledArtifact, sha256_file


class FaultProxy:
    """``mode``: "forward", "blackhole", "cut" (close both sides after ``cut_after`` client bytes) or
    "stall" (after ``cut_after`` client bytes forward nothing more, silently, with both sockets left open:
    a link that died without a FIN or RST).

    ``cut_once``: only the first connection is cut or stalled; later ones (a reconnect) are forwarded.
    """

    def __init__(self, target_port: int, *, mode: str = "forward", cut_after: int = 0, cut_once: bool = True):
        self.target_port = target_port
        self.mode = mode
        self.cut_after = cut_after
        self.cut_once = cut_once
        self.cuts = 0
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._sockets.append(client)
            if self.mode == "blackhole":
                continue  # accepted, never answered: the client must time out by itself
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            cut = self.mode in ("cut", "stall") and not (self.cut_once and self.cuts)
            if cut:
                self.cuts += 1
            threading.Thread(target=self._pump, args=(client, upstream, self.cut_after if cut else None),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    if self.mode == "stall":
                        self._stopped.wait()  # read nothing more, close nothing: silence
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self):
        self._closed = True
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            # shutdown first: close() alone does not send FIN while a pump thread is still blocked in
            # recv() on the socket, and the device's sshd then never learns the link is gone (its
            # session kept the device lock until the agent's idle timeout).
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def tmpfs_root(path: Path, size_bytes: int, *, uid: int, gid: int):
    """Mount a tmpfs of ``size_bytes`` at ``path`` (owned by uid:gid) for the duration (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},uid={uid},gid={gid},mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def variant_artifact(base: CompiledArtifact, out_dir: Path, tag: str, *, extra_bytes: int = 0,
                     seed: int = 0) -> CompiledArtifact:
    """A copy of ``base`` with a new artifact id (same library: blobs are shared on the device)."""
    manifest = json.loads((base.path / MANIFEST_NAME).read_text())
    new_id = f"{base.artifact_id[:12]}-{tag}"
    path = Path(out_dir) / new_id
    if path.exists():
        return CompiledArtifact.open(path)
    tmp = Path(out_dir) / f".{new_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base.path, tmp)
    manifest["artifact_id"] = new_id
    manifest["model"] = {**manifest.get("model", {}), "source": f"variant {tag} of {base.artifact_id}"}
    if extra_bytes:
        import random

        rng = random.Random(seed or hash(tag))
        (tmp / "padding.bin").write_bytes(rng.randbytes(extra_bytes))
        manifest["files"]["padding.bin"] = sha256_file(tmp / "padding.bin")
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    tmp.rename(path)
    return CompiledArtifact.open(path)


def build_faulty_artifact(base: CompiledArtifact, out_dir: Path, kind: str) -> CompiledArtifact:
    """An artifact whose one kernel segfaults (``kind="segfault"``) or loops ~forever (``"hang"``).

    Built with TVM for the same target as ``base`` (host only), with a 1x4 float32 input and output.
    """
    import numpy as np
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    # Distinct class names: TVMScript finds a class's source by its name.
    if kind == "segfault":
        @I.ir_module
        class SegfaultModule:
            @T.prim_func
            def kernel(a: T.Buffer((1, 4), "float32"), b: T.Buffer((1, 4), "float32")):
                T.func_attr({"global_symbol": "kernel", "tir.noalias": True})
                far = T.decl_buffer((1,), "float32", data=a.data)
                for i in range(4):
                    # 2**40 floats past the input: an unmapped address, a real SIGSEGV
                    b[0, i] = far[T.int64(1) << T.int64(40)] + a[0, i]

            @R.function
            def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
                cls = SegfaultModule
                y = R.call_tir(cls.kernel, (x,), out_ty=R.Tensor((1, 4), "float32"))
                return y

        Module = SegfaultModule
    elif kind == "hang":
        @I.ir_module
        class HangModule:
            @T.prim_func
            def kernel(a: T.Buffer((1, 4), "float32"), b: T.Buffer((1, 4), "float32")):
                T.func_attr({"global_symbol": "kernel", "tir.noalias": True})
                for i in range(4):
                    b[0, i] = a[0, i]
                for j in range(T.int64(1) << T.int64(60)):  # float adds: no closed form, so it really runs
                    b[0, 0] = b[0, 0] * T.float32(0.5) + T.float32(1.0)

            @R.function
            def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
                cls = HangModule
                y = R.call_tir(cls.kernel, (x,), out_ty=R.Tensor((1, 4), "float32"))
                return y

        Module = HangModule
    else:
        raise ValueError(kind)
    artifact_id = f"faulty-{kind}-{base.artifact_id[:8]}"
    path = Path(out_dir) / artifact_id
    if path.exists():
        return CompiledArtifact.open(path)
    tmp = Path(out_dir) / f".{artifact_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    executable = tvm.compile(Module, target=tvm.target.Target({"kind": "llvm"}))
    executable.export_library(str(tmp / "model.so"))
    x = np.arange(4, dtype="float32").reshape(1, 4)
    np.savez(tmp / "reference.npz", in0=x, out0=x)
    manifest = json.loads((base.path / MANIFEST_NAME).read_text())
    manifest.update({
        "artifact_id": artifact_id,
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        "files": {"model.so": sha256_file(tmp / "model.so"), "reference.npz": sha256_file(tmp / "reference.npz")},
        "model": {"source": f"edgekit.testing.faults {kind}", "sha256": None},
    })
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    tmp.rename(path)
    return CompiledArtifact.open(path)


def flip_byte_after_put(remote, offset: int = 100):
    """Make ``remote.put`` corrupt what it just wrote (one byte flipped on the device's disk)."""
    original = remote.put

    def put(local, remote_path, **kw):
        sent = original(local, remote_path, **kw)
        with remote.sftp().open(remote_path, "r+b") as f:
            f.seek(min(offset, max(0, sent - 1)))
            byte = f.read(1)
            f.seek(min(offset, max(0, sent - 1)))
            f.write(bytes([byte[0] ^ 0xFF]) if byte else b"\x00")
        return sent

    remote.put = put
    return remote
