"""Deploy an artifact to devices over SSH, run it there, check its outputs and measure it.

One device, step by step (``deploy_to_host``):
  1. connect (known_hosts strict) and start the device agent: facts + the device lock;
  2. refuse early what cannot work: wrong architecture, no TVM runtime, incompatible versions, no room;
  3. upload only the blobs the device lacks, to tmp/ names (content-addressed: unchanged = 0 bytes);
  4. the agent verifies every sha256 ON the device and assembles versions/<artifact_id> all at once;
  5. the runner loads the library there, checks outputs against the host reference and times it;
  6. only then ``current`` is switched (a rename, atomic); old versions are pruned (keep N).
A failure at any step discards what this deploy created and leaves ``current`` as it was.

Several devices (``deploy_model``): a bounded thread pool, one result per device; a dead board is
reported and does not stop the others.

Deploy takes a compiled artifact: compiling first is the caller's composition (the CLI, or
``compile_model`` then ``deploy_model``), so this stage imports neither compile nor measure.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekit.artifacts import MANIFEST_NAME, CompiledArtifact, LatencyReport, sha256_file
from edgekit.deploy.remote import RemoteHost
from edgekit.errors import (
    ArchitectureMismatchError,
    ArtifactError,
    DeviceBusyError,
    DeviceDiskFullError,
    DeviceRuntimeError,
    EdgekitError,
    NothingToRollBackError,
    OutputMismatchError,
    PartialFleetError,
    RemoteCommandError,
    UploadCorruptError,
    UsageError,
)
from edgekit.onboard import RUNNER_PATH, UPLOADED_WITH_RUNNER, inline_source, runner_options
from edgekit.targets import ELF_MACHINE_BY_ARCH, MeasureProtocol

DEFAULT_ROOT = "~/.edgekit"
DEFAULT_KEEP = 3
RUNNER_NAME = RUNNER_PATH.name
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# Device-side Python runs with the runtime-only TVM library: faster import, no compiler needed.
DEVICE_ENV = {"TVM_USE_RUNTIME_LIB": "1"}


# deploy_to_host's default: measure as the artifact's manifest says.
AS_THE_ARTIFACT_SAYS = "as the artifact says"


@dataclass(kw_only=True)
class DeviceResult:
    """What happened on one device: a deployment, a report, or the error that stopped it."""

    host: str
    artifact_id: str | None = None
    ok: bool = False
    remote_dir: str | None = None
    bytes_uploaded: int = 0
    files_uploaded: int = 0
    previous: str | None = None
    pruned: list[str] = field(default_factory=list)
    rolled_back_to: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    report: LatencyReport | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    exit_code: int = 0
    exception: BaseException | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "ok": self.ok, "artifact_id": self.artifact_id, "remote_dir": self.remote_dir,
            "bytes_uploaded": self.bytes_uploaded, "files_uploaded": self.files_uploaded,
            "previous": self.previous, "pruned": self.pruned, "rolled_back_to": self.rolled_back_to,
            "device": self.device, "report": self.report.to_dict() if self.report else None,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "error": self.error, "error_type": self.error_type, "exit_code": self.exit_code,
        }


@dataclass(kw_only=True)
class FleetResult:
    results: list[DeviceResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        codes = {r.exit_code for r in self.results if not r.ok}
        if not codes:
            return 0
        if len(self.results) == 1 or len(codes) == 1 and all(not r.ok for r in self.results):
            return codes.pop()
        return PartialFleetError.exit_code

    def raise_for_errors(self) -> "FleetResult":
        failed = [r for r in self.results if not r.ok]
        if not failed:
            return self
        if len(self.results) == 1 and failed[0].exception is not None:
            raise failed[0].exception
        names = ", ".join(f"{r.host} ({r.error_type})" for r in failed)
        raise PartialFleetError(f"{len(failed)} of {len(self.results)} devices failed: {names}", results=self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "devices": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, kw_only=True)
class DeviceEntry:
    """One device of an inventory: where it is and how to log in."""

    host: str
    name: str | None = None
    target: str | None = None
    identity_files: tuple[str, ...] = ()
    known_hosts: str | None = None
    root: str | None = None
    emulated: bool = False


def read_inventory(path: str | Path) -> list[DeviceEntry]:
    """An inventory: TOML (``[[device]] host = ...``) or plain text, one host per line (# comments)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read inventory {path}: {exc.strerror}") from None
    if path.suffix != ".toml":
        hosts = [line.split("#")[0].strip() for line in text.splitlines()]
        return [DeviceEntry(host=h) for h in hosts if h]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"inventory {path} is not valid TOML: {exc}") from None
    defaults = data.get("defaults", {})
    entries = []
    for i, d in enumerate(data.get("device", [])):
        merged = {**defaults, **d}
        if "host" not in merged:
            raise UsageError(f"inventory {path}: device #{i + 1} has no 'host'")
        identity = merged.get("identity_file") or merged.get("identity_files") or ()
        entries.append(DeviceEntry(
            host=merged["host"], name=merged.get("name"), target=merged.get("target"),
            identity_files=(identity,) if isinstance(identity, str) else tuple(identity),
            known_hosts=merged.get("known_hosts"), root=merged.get("root"), emulated=bool(merged.get("emulated"))))
    if not entries:
        raise UsageError(f"inventory {path} names no devices", hint="add [[device]] tables with host = \"user@board\"")
    return entries


# -- host-side preparation --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Payload:
    """The files one version holds on the device, by name -> sha256, and where they are here."""

    artifact: CompiledArtifact
    files: dict[str, str]
    local: dict[str, Path]

    @property
    def sizes(self) -> dict[str, int]:
        return {d: self.local[d].stat().st_size for d in self.local}


def _payload(artifact: CompiledArtifact) -> _Payload:
    if not _SAFE_NAME.match(artifact.artifact_id):
        raise ArtifactError(f"artifact id {artifact.artifact_id!r} is not a safe directory name")
    files: dict[str, str] = {}
    local: dict[str, Path] = {}
    entries = dict(artifact.manifest["files"])
    entries[MANIFEST_NAME] = sha256_file(artifact.path / MANIFEST_NAME)
    for name, digest in entries.items():
        if not _SAFE_NAME.match(name) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArtifactError(f"artifact {artifact.path}: file entry {name!r} is not a plain file name with a sha256")
        files[name] = digest
        local[digest] = artifact.path / name
    for program in UPLOADED_WITH_RUNNER:  # the runner and the helper it imports, beside the artifact
        digest = sha256_file(program)
        files[program.name] = digest
        local[digest] = program
    return _Payload(artifact, files, local)


def _agent_argv(mode: str, root: str, *extra: str) -> list[str]:
    return ["python3", "-c", inline_source("agent"), mode, root, *extra]


def probe_device(remote: RemoteHost, root: str = DEFAULT_ROOT) -> dict[str, Any]:
    """The device facts (arch, python, glibc, runtime versions, disk, governor, load)."""
    result = remote.run(_agent_argv("probe", root), timeout_s=120, check=False, env=DEVICE_ENV)
    if result.exit_status == 127 or ("not found" in result.stderr and not result.stdout):
        raise DeviceRuntimeError("python3 is missing on the device", host=remote.name,
                                 command="python3 -c <agent> probe", exit_status=result.exit_status,
                                 stderr=result.stderr, hint="install python3 (3.10 or newer) on the device")
    if not result.ok:
        raise RemoteCommandError("device probe failed", host=remote.name, command="python3 -c <agent> probe",
                                 exit_status=result.exit_status, stderr=result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_compatibility(facts: dict[str, Any], artifact: CompiledArtifact, host: str) -> None:
    """Refuse before uploading anything what cannot run: arch, runtime presence and version."""
    want = artifact.manifest.get("elf_machine")
    have = ELF_MACHINE_BY_ARCH.get(facts.get("machine"), facts.get("machine"))
    if want and have != want:
        raise ArchitectureMismatchError(
            f"artifact {artifact.artifact_id} is built for {want} (target '{artifact.target_name}') but the device "
            f"is {facts.get('machine')}", host=host,
            hint=f"compile for this device's target (uname -m = {facts.get('machine')}) and deploy that")
    problems = runtime_problems(facts, artifact.manifest.get("tvm_version"))
    if problems:
        raise DeviceRuntimeError("device runtime is not usable: " + "; ".join(problems), host=host,
                                 hint=f"run `edgekit device setup --target {artifact.target_name} --host {host}`")


def runtime_problems(facts: dict[str, Any], tvm_version: str | None) -> list[str]:
    problems = []
    packages = facts.get("packages") or {}
    if not packages.get("numpy"):
        problems.append("numpy is not installed")
    tvm = packages.get("apache-tvm")
    if not tvm and not facts.get("tvm_runtime_lib"):
        problems.append("the TVM runtime (apache-tvm) is not installed")
    elif not facts.get("tvm_runtime_lib"):
        problems.append("apache-tvm is installed but libtvm_runtime.so is missing")
    elif tvm and tvm_version and _major_minor(tvm) != _major_minor(tvm_version):
        problems.append(f"TVM runtime {tvm} cannot load artifacts of TVM {tvm_version}")
    if not packages.get("apache-tvm-ffi") and tvm:
        problems.append("apache-tvm-ffi is not installed")
    return problems


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


# -- one device -------------------------------------------------------------------------------------------------

class DeviceSession:
    """The device agent holding the device's lock; requests go over its stdin (deploy, rollback, setup)."""

    IDLE_S = 120.0  # the agent gives the lock up after this long without a word from us
    HEARTBEAT_S = 15.0

    def __init__(self, remote: RemoteHost, root: str, lock_wait_s: float, request_timeout_s: float):
        self.remote = remote
        self.request_timeout_s = request_timeout_s
        self.process = remote.spawn(_agent_argv("session", root, str(lock_wait_s), str(self.IDLE_S)),
                                    time_limit_s=6 * 3600, env=DEVICE_ENV)
        self._stop = threading.Event()
        try:
            first = self.process.read_json(timeout_s=request_timeout_s + 60)
        except RemoteCommandError as exc:
            self.process.close()
            if exc.exit_status == 127 or "not found" in exc.stderr_tail:
                raise DeviceRuntimeError("python3 is missing on the device", host=remote.name,
                                         stderr=exc.stderr_tail, hint="install python3 (3.10 or newer)") from None
            raise
        self.facts = first
        locked = self.process.read_json(timeout_s=lock_wait_s + request_timeout_s)
        if not locked.get("ok"):
            self.process.close()
            if locked.get("error") == "busy":
                raise DeviceBusyError(f"device is busy: another edgekit holds its lock ({locked.get('holder')})",
                                      host=remote.name, hint="wait for it to finish, or pass a longer --lock-wait")
            if locked.get("error") == "disk_full":
                raise DeviceDiskFullError(f"no room to create {root}: {locked.get('message')}", host=remote.name)
            raise RemoteCommandError(f"device agent failed: {locked}", host=remote.name)
        self.state = locked["state"]
        self.root = first["root"]
        # Long uploads and runs send no requests: pings tell the agent we are still here.
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def _heartbeat(self):
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                self.process.send_line('{"op": "ping"}')
            except Exception:
                return

    def request(self, op: str, **kw) -> dict:
        return self.process.request({"op": op, **kw}, timeout_s=self.request_timeout_s)

    def close(self):
        self._stop.set()
        self.process.close()


def _connect(entry: DeviceEntry | str, connect: dict) -> RemoteHost:
    if isinstance(entry, str):
        entry = DeviceEntry(host=entry)
    kwargs = dict(connect)
    if entry.identity_files:
        kwargs["identity_files"] = tuple(entry.identity_files) + tuple(kwargs.get("identity_files", ()))
    if entry.known_hosts:
        kwargs["known_hosts"] = entry.known_hosts
    return RemoteHost(entry.host, **kwargs)


def deploy_to_host(artifact: CompiledArtifact, remote: RemoteHost, *, root: str = DEFAULT_ROOT,
                   keep: int = DEFAULT_KEEP, measure: MeasureProtocol | None | str = AS_THE_ARTIFACT_SAYS,
                   lock_wait_s: float = 30.0, emulated: bool = False,
                   log: Callable[[str], None] | None = None) -> DeviceResult:
    """Deploy (and run/measure) one artifact on one device; raise a ``DeviceError`` subclass on failure.

    ``measure``: the protocol to run it with (default: the artifact's); None uploads and switches only.
    """
    say = log or (lambda msg: None)
    if measure is AS_THE_ARTIFACT_SAYS:
        measure = artifact.measure_protocol
    result = DeviceResult(host=remote.name, artifact_id=artifact.artifact_id)
    payload = _payload(artifact)
    clock = time.monotonic()

    def lap(name):
        nonlocal clock
        now = time.monotonic()
        result.timings_s[name] = now - clock
        clock = now

    remote.connect()
    lap("connect")
    session = DeviceSession(remote, root, lock_wait_s, request_timeout_s=max(60.0, remote.command_timeout_s))
    created = False
    uploaded_parts: dict[str, str] = {}
    try:
        facts = session.facts
        facts["emulated"] = bool(facts.get("emulated") or emulated)
        result.device = facts
        check_compatibility(facts, artifact, remote.name)
        lap("check")
        version = artifact.artifact_id
        version_dir = f"{session.root}/versions/{version}"
        result.remote_dir = version_dir
        have = set(session.state["blobs"])
        missing = {d for d in set(payload.files.values()) if d not in have}
        if version in session.state["versions"]:
            missing = set()  # complete versions are only ever renamed into place
        need = sum(payload.sizes[d] for d in missing)
        free = session.state.get("free_bytes")
        if missing and free is not None and free < need + (1 << 20):
            raise DeviceDiskFullError(f"device has {free} bytes free under {session.root}, this deploy needs {need}",
                                      host=remote.name, hint="free space on the device or lower --keep")
        say(f"{remote.name}: uploading {len(missing)} file(s), {need} bytes")
        token = hashlib.sha256(f"{time.time()}{id(result)}".encode()).hexdigest()[:8]
        for digest in sorted(missing):
            part = f"{digest}.{token}.part"
            uploaded_parts[digest] = part
            remote.put(payload.local[digest], f"{session.state['tmp']}/{part}")
            result.bytes_uploaded += payload.sizes[digest]
            result.files_uploaded += 1
        lap("upload")
        reply = session.request("commit", version=version, files=payload.files, parts=uploaded_parts)
        uploaded_parts = {}  # the agent has verified and filed them, or deleted them
        if not reply.get("ok"):
            if reply.get("error") == "sha256":
                bad = ", ".join(f"{p.split('.')[0][:12]}... arrived as {(a or 'unreadable')[:12]}..."
                                for p, a in reply["bad"].items())
                raise UploadCorruptError(f"upload arrived corrupted (sha256 mismatch on the device): {bad}",
                                         host=remote.name, hint="the link corrupts data; nothing was switched, retry")
            if reply.get("error") == "disk_full":
                raise DeviceDiskFullError(f"device disk full while assembling {version}: {reply.get('message')}",
                                          host=remote.name)
            raise RemoteCommandError(f"device could not assemble {version}: {reply}", host=remote.name)
        created = reply.get("created", False)
        lap("verify")
        if measure is not None:
            result.report = _run_runner(remote, session.root, version_dir, artifact, measure, facts)
            lap("run")
        reply = session.request("activate", version=version, keep=keep)
        if not reply.get("ok"):
            raise RemoteCommandError(f"could not switch current to {version}: {reply}", host=remote.name)
        result.previous = reply.get("previous")
        result.pruned = reply.get("pruned", [])
        lap("activate")
        result.ok = True
        return result
    except BaseException:
        _cleanup(session, remote, root, lock_wait_s, version=artifact.artifact_id if created else None)
        raise
    finally:
        session.close()


def _cleanup(session: DeviceSession, remote: RemoteHost, root: str, lock_wait_s: float, *,
             version: str | None) -> None:
    """Leave the device as it was: discard what this deploy created, empty tmp/ (reconnecting if need be)."""
    try:
        if version:
            session.request("discard", version=version)
        session.request("clean")
        return
    except Exception:
        pass
    session.close()
    try:  # the link died: one short try over a fresh connection
        remote.close()
        remote.retries = 0
        fresh = DeviceSession(remote, root, min(lock_wait_s, 10.0), request_timeout_s=30.0)
        try:
            if version:
                fresh.request("discard", version=version)
        finally:
            fresh.close()  # taking the lock already emptied tmp/
    except Exception:
        pass


def _runner_argv(root: str, version_dir: str, measure: MeasureProtocol, emulated: bool) -> list[str]:
    argv = ["python3", f"{version_dir}/{RUNNER_NAME}", version_dir, *runner_options(measure), "--watch-stdin",
            "--site", f"{root}/runtime/site-packages"]
    if emulated:
        argv.append("--emulated")
    return argv


def _run_runner(remote: RemoteHost, root: str, version_dir: str, artifact: CompiledArtifact,
                measure: MeasureProtocol, facts: dict) -> LatencyReport:
    argv = _runner_argv(root, version_dir, measure, bool(facts.get("emulated")))
    result = remote.run(argv, timeout_s=measure.time_limit_s + 10, check=False, keep_stdin_open=True,
                        env=DEVICE_ENV)
    try:
        return LatencyReport.from_runner(exit_status=result.exit_status, stdout=result.stdout, stderr=result.stderr,
                                         protocol=measure, where=remote.name, command=result.command,
                                         artifact_id=artifact.artifact_id, device_extra={"host": remote.name})
    except OutputMismatchError as exc:
        raise OutputMismatchError(f"{exc.message}; the previous deployment stays current") from None


def rollback_host(remote: RemoteHost, *, root: str = DEFAULT_ROOT, lock_wait_s: float = 30.0) -> DeviceResult:
    """Point ``current`` back at the previous deployment."""
    result = DeviceResult(host=remote.name)
    remote.connect()
    session = DeviceSession(remote, root, lock_wait_s, request_timeout_s=60.0)
    try:
        reply = session.request("rollback")
        if not reply.get("ok"):
            raise NothingToRollBackError(f"nothing to roll back to (current: {reply.get('current')})",
                                         host=remote.name, hint="a rollback needs an earlier successful deploy")
        result.ok = True
        result.artifact_id = reply["current"]
        result.rolled_back_to = reply["current"]
        result.previous = reply.get("previous")
        result.remote_dir = f"{session.root}/versions/{reply['current']}"
        result.device = session.facts
        return result
    finally:
        session.close()


# -- the public verb --------------------------------------------------------------------------------------------

def deploy_model(artifact: CompiledArtifact | str | Path | None, hosts: Sequence[str | DeviceEntry] = (), *,
                 inventory: str | Path | None = None, measure: MeasureProtocol | None = None,
                 root: str = DEFAULT_ROOT, keep: int = DEFAULT_KEEP, max_workers: int = 4, lock_wait_s: float = 30.0,
                 trust_new_host: bool = False, rollback: bool = False, connect: dict | None = None,
                 log: Callable[[str], None] | None = None, run: bool = True) -> FleetResult:
    """Deploy ``artifact`` to every host (``hosts`` and/or an ``inventory``), concurrently; one result per device.

    ``artifact`` is a ``CompiledArtifact`` or an artifact directory (None with ``rollback``); compile a
    model with ``compile_model`` first.  ``measure`` defaults to the protocol in the artifact's manifest
    (with ``run=False``: check outputs only).  Never raises for a device's failure: call
    ``.raise_for_errors()`` on the result for that.
    """
    entries = [h if isinstance(h, DeviceEntry) else DeviceEntry(host=h) for h in hosts]
    if inventory:
        entries += read_inventory(inventory)
    if not entries:
        raise UsageError("no device given", hint="pass --host user@board (repeatable) or --inventory FILE")
    connect = {"trust_new_host": trust_new_host, **(connect or {})}
    if rollback:
        artifact = None
    else:
        artifact = open_artifact(artifact)
        if measure is None:
            measure = artifact.measure_protocol.with_overrides(check_only=not run)
    if max_workers < 1:
        raise UsageError("max_workers must be at least 1")

    def one(entry: DeviceEntry) -> DeviceResult:
        remote = None
        try:
            remote = _connect(entry, connect)
            with remote:
                if rollback:
                    return rollback_host(remote, root=entry.root or root, lock_wait_s=lock_wait_s)
                return deploy_to_host(artifact, remote, root=entry.root or root, keep=keep, measure=measure,
                                      lock_wait_s=lock_wait_s, emulated=entry.emulated, log=log)
        except EdgekitError as exc:
            return DeviceResult(host=remote.name if remote else entry.host,
                                artifact_id=artifact.artifact_id if artifact else None, error=str(exc),
                                error_type=type(exc).__name__, exit_code=exc.exit_code, exception=exc)
        except Exception as exc:  # a bug or an unexpected library error: still one device's result
            return DeviceResult(host=entry.host, error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                                exit_code=1, exception=exc)

    if len(entries) == 1:
        return FleetResult(results=[one(entries[0])])
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max_workers, len(entries))) as pool:
        results = list(pool.map(one, entries))
    return FleetResult(results=results)


def open_artifact(artifact: CompiledArtifact | str | Path) -> CompiledArtifact:
    """``artifact`` as a ``CompiledArtifact``; a path must be an artifact directory (deploy compiles nothing)."""
    if isinstance(artifact, CompiledArtifact):
        return artifact
    if isinstance(artifact, (str, Path)) and (Path(artifact) / MANIFEST_NAME).is_file():
        return CompiledArtifact.open(artifact)
    raise UsageError(f"{artifact!r} is not a compiled artifact",
                     hint="compile it first (`edgekit compile`, or compile_model) and deploy the artifact directory")
