"""Artifacts checked against their reference outputs on a test device, all in one python process there.

The emulated Pi's python takes 5-8 s just to import the TVM runtime under qemu, so the architecture and
op-family tests upload every build first and check them together.
"""

from __future__ import annotations

import json

# The device side of the emulated check: standard library, numpy and the TVM runtime only.
DEVICE_CHECK = r"""
import json, os, sys
sys.modules.setdefault("torch", None)  # tvm_ffi imports torch when present; the device has none
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine
report = {}
for directory in sys.argv[1:]:
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    reference = np.load(os.path.join(directory, manifest["reference"]))
    vm = VirtualMachine(tvm.runtime.load_module(os.path.join(directory, manifest["library"])), tvm.cpu())
    inputs = [tvm.runtime.tensor(reference["in%d" % i]) for i in range(len(manifest["inputs"]))]
    result = vm["main"](*inputs)
    outputs = [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]
    errors = []
    for i, actual in enumerate(outputs):
        expected = reference["out%d" % i].astype(np.float64)
        scale = max(float(np.abs(expected).max()), 1e-12)
        errors.append(float(np.abs(actual.astype(np.float64) - expected).max()) / scale)
    report[directory] = {"relative_errors": errors, "outputs": len(outputs), "machine": os.uname().machine}
print(json.dumps(report))
"""


def check_on_device(device, artifacts) -> list[dict]:
    """Upload ``artifacts`` to ``device`` (an SshDevice) and check them all in one python process there."""
    from edgekit.deploy.remote import RemoteHost

    directories = []
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        for compiled in artifacts:
            directory = f"{device.remote_home}/architectures/{compiled.artifact_id}"
            remote.run(["mkdir", "-p", directory])
            for file in ("manifest.json", compiled.manifest["library"], compiled.manifest["reference"]):
                remote.put(compiled.path / file, f"{directory}/{file}")
            directories.append(directory)
        result = remote.run(["python3", "-c", DEVICE_CHECK, *directories], timeout_s=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return [report[directory] for directory in directories]
