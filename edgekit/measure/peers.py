"""edgekit against the runtime the user would pick instead, on the same device, honestly.

The same model runs in ONNX Runtime (exported to ONNX here), in ExecuTorch (lowered here to a .pte with the
XNNPACK partitioner, the runtime Arm boards are usually served by) and in torch eager (the exported program), on
the device itself, on the artifact's own reference inputs, at the same thread count and protocol, in rounds
interleaved with edgekit's artifact (edgekit, peer; peer, edgekit; ...).  Each peer's outputs are checked
against the same host reference edgekit's are.  The verdict per peer is ``compare_rounds``'s: faster or slower
beyond the noise, with the ratio's interval.  A peer the device cannot run, or that cannot be made for the model
here (no executorch installed on the host, an .onnx model for a torch-only peer), is reported with the reason.

On a board the peer runtime comes from the device's python, or from ``ROOT/peer-runtimes/PEER`` where
``edgekit device setup --install onnxruntime`` unpacks the wheel for the device's platform.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError
from edgekit.measure.compare import DEFAULT_ROUNDS, compare_rounds
from edgekit.onboard import PROGRAMS_DIR, RUNNER_HELPERS

PEERS = ("onnxruntime", "executorch", "torch")
PEER_MODEL_FILES = {"onnxruntime": "model.onnx", "executorch": "model.pte", "torch": "model.pt2"}
PEER_PROGRAMS = ("peer_runner", "runner", *RUNNER_HELPERS)


def compare_with_peers(model, target="host", host=None, *, peers=("onnxruntime",), rounds: int = DEFAULT_ROUNDS,
                       input_shapes=None, connect: dict | None = None, root: str = "~/.edgekit",
                       out_dir=None, emulated: bool = False, artifact=None, **protocol) -> dict[str, Any]:
    """Compile ``model`` for ``target`` (or take ``artifact``, already compiled from it), then time it and each of
    ``peers`` in interleaved rounds on ``host`` (this machine when None).  ``protocol``: measure_latency's
    overrides (warmup, repeats, threads...)."""
    from edgekit.compile import compile_model
    from edgekit.measure.protocol import measure_latency
    from edgekit.models import load_model

    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise UsageError(f"unknown peer runtime {unknown[0]!r}; available: {', '.join(PEERS)}")
    loaded = load_model(model)
    if artifact is None:
        artifact = compile_model(loaded, target, input_shapes=input_shapes, out_dir=out_dir)
    measured = artifact.measure_protocol.with_overrides(**{k: v for k, v in protocol.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="edgekit-peers-") as tmp:
        bundles, unavailable = {}, {}
        for p in peers:
            try:
                bundles[p] = _bundle(p, loaded, artifact, Path(tmp) / p)
            except PeerUnavailable as exc:
                unavailable[p] = str(exc)
        device = _Device(host, connect, root, emulated)
        try:
            edgekit_rounds, peer_rounds, peer_reports = [], {p: [] for p in peers}, {}
            for i in range(rounds):
                order = ["edgekit", *peers] if i % 2 == 0 else [*peers, "edgekit"]
                for who in order:
                    if who == "edgekit":
                        edgekit_rounds.append(measure_latency(artifact, device.remote, emulated=emulated,
                                                              protocol=measured, connect=connect))
                    elif who not in unavailable:
                        data = device.run_peer(who, bundles[who], measured)
                        if not data.get("ok"):
                            unavailable[who] = data.get("message") or data.get("error") or "failed"
                            continue
                        peer_rounds[who].append(data["samples_ms"])
                        peer_reports[who] = data
        finally:
            device.close()
    result = {"artifact_id": artifact.artifact_id, "target": artifact.target_name, "rounds": rounds,
              "threads": measured.threads, "emulated": any(r.emulated for r in edgekit_rounds),
              "edgekit": edgekit_rounds[-1].to_dict(), "peers": {}}
    for peer in peers:
        if peer in unavailable:
            result["peers"][peer] = {"available": False, "reason": unavailable[peer]}
            continue
        verdict = compare_rounds(peer_rounds[peer], [r.samples_ms for r in edgekit_rounds],
                                 names=(peer, "edgekit"))
        last = peer_reports[peer]
        result["peers"][peer] = {"available": True, "version": last["version"], "threads": last["threads"],
                                 "output_check": last["output_check"],
                                 "outputs_agree": bool(last["output_check"]["passed"]
                                                       and edgekit_rounds[-1].output_check["passed"]),
                                 "stats": verdict["a"], **_verdict_fields(verdict, result)}
    return result


def _verdict_fields(verdict, result) -> dict[str, Any]:
    text = verdict["verdict"]
    if result["emulated"]:
        text = "EMULATED, not a measurement of the board: " + text
    return {"ratio_edgekit_over_peer": verdict["ratio"], "ratio_ci_low": verdict["ratio_ci_low"],
            "ratio_ci_high": verdict["ratio_ci_high"], "beyond_noise": verdict["beyond_noise"], "verdict": text,
            "edgekit_stats": verdict["b"]}


class PeerUnavailable(Exception):
    """The peer's model file cannot be made here; the message says why (reported, not raised to the user)."""


def _bundle(peer: str, loaded, artifact, where: Path) -> Path:
    """The peer's directory: its model file, the artifact's reference inputs/outputs and tolerance, the programs."""
    if peer != "onnxruntime" and loaded.module is None and loaded.exported is None:
        raise PeerUnavailable(f"the {peer} peer needs a torch model (an .onnx file has none)")
    where.mkdir(parents=True)
    shutil.copy(artifact.path / artifact.manifest["reference"], where / "reference.npz")
    (where / "tolerance.json").write_text(json.dumps(artifact.manifest["tolerance"]))
    for name in PEER_PROGRAMS:
        shutil.copy(PROGRAMS_DIR / f"{name}.py", where / f"{name}.py")
    export = {"onnxruntime": _export_onnx, "executorch": _export_executorch, "torch": _export_program}[peer]
    export(loaded, artifact, where / PEER_MODEL_FILES[peer])
    return where


def _example(artifact):
    import numpy as np
    import torch

    reference = np.load(artifact.path / artifact.manifest["reference"])
    return tuple(torch.from_numpy(reference[f"in{i}"]) for i in range(len(artifact.inputs)))


def _export_onnx(loaded, artifact, path: Path) -> None:
    if loaded.onnx_path is not None:
        shutil.copy(loaded.onnx_path, path)
        return
    import contextlib
    import io
    import warnings

    import torch

    module = loaded.module if loaded.module is not None else loaded.exported
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if isinstance(module, torch.export.ExportedProgram):
            torch.onnx.export(module, (), dynamo=True, opset_version=18).save(str(path))
        else:
            torch.onnx.export(module.eval(), _example(artifact), str(path), dynamo=False, opset_version=17)


def _exported(loaded, artifact):
    import torch

    if loaded.exported is not None:
        return loaded.exported
    return torch.export.export(loaded.module.eval(), _example(artifact))


def _export_program(loaded, artifact, path: Path) -> None:
    import torch

    torch.export.save(_exported(loaded, artifact), path)


def _export_executorch(loaded, artifact, path: Path) -> None:
    """Lower to a .pte with XNNPACK taking every op it can, as ExecuTorch's own export recipe for CPUs does."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise PeerUnavailable(f"executorch is not installed on this machine to lower the model ({exc}); "
                              "pip install 'edgekit[peers]'") from exc
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = to_edge_transform_and_lower(_exported(loaded, artifact),
                                                  partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as exc:  # an op ExecuTorch cannot lower: the peer is unavailable for this model
            raise PeerUnavailable(f"executorch could not lower this model: {type(exc).__name__}: "
                                  f"{str(exc).strip()[:300]}") from exc
    path.write_bytes(program.buffer)


class _Device:
    """Where peers run: this machine (a subprocess of this python) or a board over one SSH connection."""

    def __init__(self, host, connect, root, emulated):
        self.remote = None
        self.root = root
        self.emulated = emulated
        if host is not None:
            from edgekit.deploy.remote import RemoteHost

            self.remote = host if not isinstance(host, str) else RemoteHost(host, **(connect or {}))
        self.uploaded: dict[str, str] = {}

    def run_peer(self, peer: str, bundle: Path, protocol) -> dict[str, Any]:
        from edgekit.artifacts import _last_json_line
        from edgekit.onboard import runner_options

        options = [*runner_options(protocol.with_overrides(kernels=False, check_only=False)), "--runtime", peer]
        if self.remote is None:
            done = subprocess.run([sys.executable, str(bundle / "peer_runner.py"), str(bundle), *options],
                                  capture_output=True, text=True, timeout=protocol.time_limit_s + 30)
            stdout, stderr, status = done.stdout, done.stderr, done.returncode
        else:
            from edgekit.deploy.peer_setup import PEER_RUNTIMES_DIR

            remote_dir = self._upload(bundle)
            sites = ["--site", f"{self.root_abs}/runtime/site-packages", "--site",
                     f"{self.root_abs}/{PEER_RUNTIMES_DIR}/{peer}"]
            done = self.remote.run(["python3", f"{remote_dir}/peer_runner.py", remote_dir, *options, *sites],
                                   timeout_s=protocol.time_limit_s + 30, check=False)
            stdout, stderr, status = done.stdout, done.stderr, done.exit_status
        data = _last_json_line(stdout)
        if not data:
            data = {"ok": False, "error": "failed",
                    "message": f"{peer} peer runner exited {status}: {(stderr or '').strip()[-300:]}"}
        return data

    def _upload(self, bundle: Path) -> str:
        key = str(bundle)
        if key not in self.uploaded:
            digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(bundle.iterdir()))).hexdigest()[:16]
            remote_dir = f"{self.root_abs}/peers/{bundle.name}-{digest}"
            self.remote.run(["mkdir", "-p", remote_dir], timeout_s=30)
            for path in sorted(bundle.iterdir()):
                self.remote.put(path, f"{remote_dir}/{path.name}")
            self.uploaded[key] = remote_dir
        return self.uploaded[key]

    @property
    def root_abs(self) -> str:
        if not hasattr(self, "_root_abs"):
            done = self.remote.run(["python3", "-c", "import os, sys; print(os.path.expanduser(sys.argv[1]))",
                                    self.root], timeout_s=30)
            self._root_abs = done.stdout.strip()
        return self._root_abs

    def close(self):
        if self.remote is not None:
            self.remote.close()
