"""Every failure edgekit reports, one class per family, each with its own exit code.

The CLI turns an ``EdgekitError`` into its message on stderr and ``exit_code``;
API users catch the class they care about.  Codes are part of the public
contract (build scripts branch on them), so never renumber one.

    0 ok                      8  model file unreadable
    1 internal error          9  input shape wrong
    2 usage                   10 unsupported operator
    3 unknown target          11 compile failed
    4 device or transport     12 outputs differ from the reference
    5 budget not met          13 artifact corrupt (sha256, manifest)
    6 target profile invalid  14 data missing, empty, unreadable or unfit for the model
    7 toolchain missing       15 recipe invalid
                              16 tuning produced no usable record

  device and deploy failures (DeviceError subclasses, edgekit.deploy):
    20 device unreachable (connection refused, no route, unknown name)
    21 device timeout (connect, banner, command or transfer deadline; a silent link)
    22 SSH authentication failed        28 runner exceeded its time limit (hang)
    23 unknown host key (not trusted)   29 upload corrupt (sha256 mismatch on the device)
    24 host key changed (refused)       30 artifact built for another architecture
    25 connection lost mid-operation    31 device runtime missing or incompatible (python, numpy, tvm)
    26 device disk full                 32 remote command failed
    27 runner crashed (signal)          33 device busy (another edgekit holds its lock)
    34 some devices of several failed   35 nothing to roll back to
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a failure with a message written for the person at the terminal."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class UsageError(EdgekitError):
    exit_code = 2


class UnknownTargetError(EdgekitError):
    exit_code = 3


class DeviceError(EdgekitError):
    """The device or the link to it failed (SSH, remote command, transfer)."""

    exit_code = 4


class BudgetNotMetError(EdgekitError):
    exit_code = 5


class TargetProfileError(EdgekitError):
    """A target profile file is broken: carries the file path and the field."""

    exit_code = 6

    def __init__(self, path, field: str | None, problem: str, *, hint: str | None = None):
        self.path = path
        self.field = field
        where = f"{path}" if field is None else f"{path}: field '{field}'"
        super().__init__(f"invalid target profile {where}: {problem}", hint=hint)


class ToolchainError(EdgekitError):
    """A compiler, linker or TVM feature needed for this target is missing here."""

    exit_code = 7


class ModelLoadError(EdgekitError):
    exit_code = 8


class InputShapeError(EdgekitError):
    exit_code = 9


class UnsupportedOperatorError(EdgekitError):
    exit_code = 10


class CompileError(EdgekitError):
    exit_code = 11


class OutputMismatchError(EdgekitError):
    exit_code = 12


class ArtifactError(EdgekitError):
    exit_code = 13


class DataError(EdgekitError):
    exit_code = 14


class RecipeError(EdgekitError):
    exit_code = 15


class _RemoteFailure(DeviceError):
    """A device failure with its context: host, remote command, exit status and the tail of stderr."""

    def __init__(self, message: str, *, host: str | None = None, command: str | None = None,
                 exit_status: int | None = None, stderr: str | None = None, hint: str | None = None):
        self.host = host
        self.command = command
        self.exit_status = exit_status
        self.stderr_tail = _tail(stderr)
        parts = [f"{host}: {message}" if host else message]
        if command is not None:
            parts.append(f"  command: {command if len(command) < 300 else command[:300] + '...'}")
        if exit_status is not None:
            parts.append(f"  exit status: {exit_status}")
        if self.stderr_tail:
            parts.append("  stderr (tail):\n    " + self.stderr_tail.replace("\n", "\n    "))
        super().__init__("\n".join(parts), hint=hint)


def _tail(text: str | None, lines: int = 15) -> str:
    if not text:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class DeviceUnreachableError(_RemoteFailure):
    exit_code = 20


class DeviceTimeoutError(_RemoteFailure):
    exit_code = 21


class AuthenticationError(_RemoteFailure):
    exit_code = 22


class UnknownHostKeyError(_RemoteFailure):
    exit_code = 23


class HostKeyChangedError(_RemoteFailure):
    exit_code = 24


class ConnectionLostError(_RemoteFailure):
    exit_code = 25


class DeviceDiskFullError(_RemoteFailure):
    exit_code = 26


class RunnerCrashError(_RemoteFailure):
    exit_code = 27


class RunnerTimeoutError(_RemoteFailure):
    exit_code = 28


class UploadCorruptError(_RemoteFailure):
    exit_code = 29


class ArchitectureMismatchError(_RemoteFailure):
    exit_code = 30


class DeviceRuntimeError(_RemoteFailure):
    exit_code = 31


class RemoteCommandError(_RemoteFailure):
    exit_code = 32


class DeviceBusyError(_RemoteFailure):
    exit_code = 33


class PartialFleetError(DeviceError):
    """Several devices, some failed: ``results`` holds every device's outcome."""

    exit_code = 34

    def __init__(self, message: str, *, results=None, hint: str | None = None):
        self.results = results or []
        super().__init__(message, hint=hint)


class NothingToRollBackError(_RemoteFailure):
    exit_code = 35
