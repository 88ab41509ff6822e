"""Facts about the machine a device program runs on, and file digests: shared by every device program.

Python standard library only, Python 3.10+: the agent, the runner and the RPC server carry this
module with them (uploaded beside the runner, inlined ahead of the programs sent with ``python3 -c``;
see ``edgekit.onboard``), because they cannot import edgekit on the device.
"""

import hashlib
import os
import platform
import socket


def read_text(path):
    """The stripped text of a small /proc or /sys file, or None when it is absent or unreadable."""
    try:
        with open(path) as f:
            return f.read().strip().strip("\x00")  # device-tree strings end in NUL
    except (OSError, UnicodeDecodeError):
        return None


def file_sha256(path):
    """Hex sha256 of a file, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def cpu_model(cpuinfo=None):
    text = read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    for line in (text or "").splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return None


def governor():
    return read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


def temperature_c():
    raw = read_text("/sys/class/thermal/thermal_zone0/temp")
    try:
        return int(raw) / 1000.0
    except (TypeError, ValueError):
        return None


def is_emulated(cpuinfo=None):
    """Under qemu-user the kernel's /proc/cpuinfo describes the host CPU, not the one we run as."""
    text = ((read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo) or "").lower()
    machine = platform.machine().lower()
    if machine.startswith(("aarch64", "arm")):
        return "vendor_id" in text and ("genuineintel" in text or "authenticamd" in text)
    if machine in ("x86_64", "amd64", "i686"):
        return "cpu implementer" in text
    return False


def machine_facts(cpuinfo=None):
    """What every program reports about the machine: board, CPU, kernel, clocks, python."""
    cpuinfo = read_text("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    return {
        "board": read_text("/proc/device-tree/model"),
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(cpuinfo),
        "cpu_count": os.cpu_count(),
        "governor": governor(),
        "temperature_c": temperature_c(),
        "python": platform.python_version(),
        "emulated": is_emulated(cpuinfo),
    }
