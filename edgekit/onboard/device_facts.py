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


# Where the kernel exposes clocks and temperatures; EDGEKIT_SYSFS_ROOT re-roots them (test devices fake a board).
SYSFS_ROOT_ENV = "EDGEKIT_SYSFS_ROOT"
# A Raspberry Pi's firmware reports under-voltage and throttling here (bit 2: throttled now, bit 18: since boot).
PI_THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"


def _sys_path(path):
    return os.environ.get(SYSFS_ROOT_ENV, "") + path


def _numbered(directory, prefix):
    """Entries ``prefix0``, ``prefix1``... of a sysfs directory, in numeric order (absent directory: none)."""
    try:
        names = os.listdir(_sys_path(directory))
    except OSError:
        return []
    found = [n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return sorted(found, key=lambda n: int(n[len(prefix):]))


def clock_state():
    """Governor and current frequency of every CPU, every thermal zone's temperature, the Pi's throttle flags.

    Read before and after a measurement so the host can say whether the board ran at one speed.  A value the
    board does not expose is None, and its name is listed under ``unavailable`` (a container or VM has no
    cpufreq; most boards have it).
    """
    governors, freqs_khz, temps_c = {}, {}, {}
    for cpu in _numbered("/sys/devices/system/cpu", "cpu"):
        base = "/sys/devices/system/cpu/%s/cpufreq/" % cpu
        gov = read_text(_sys_path(base + "scaling_governor"))
        if gov is not None:
            governors[cpu] = gov
        freq = read_text(_sys_path(base + "scaling_cur_freq"))
        if freq is not None and freq.isdigit():
            freqs_khz[cpu] = int(freq)
    for zone in _numbered("/sys/class/thermal", "thermal_zone"):
        raw = read_text(_sys_path("/sys/class/thermal/%s/temp" % zone))
        try:
            temps_c[zone] = int(raw) / 1000.0
        except (TypeError, ValueError):
            continue
    throttled = read_text(_sys_path(PI_THROTTLED))
    state = {"governors": governors or None, "freqs_khz": freqs_khz or None, "temps_c": temps_c or None,
             "pi_throttled": throttled}
    state["unavailable"] = [k for k in ("governors", "freqs_khz", "temps_c") if state[k] is None]
    return state


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
