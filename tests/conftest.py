"""Shared pytest fixtures.  Each area keeps its fixtures in its own section; append, do not reorder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------------
# Deploy (issue 4): real OpenSSH devices on 127.0.0.1, compiled artifacts, the emulated Raspberry Pi.
# ---------------------------------------------------------------------------------------------------------------

DEFAULT_TEST_CACHE = "/var/cache/edgekit-test"


@pytest.fixture(scope="session")
def edgekit_cache() -> Path:
    """Where built userlands, wheels and runtime bundles are kept between test runs."""
    path = Path(os.environ.setdefault("EDGEKIT_CACHE", DEFAULT_TEST_CACHE))
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="session")
def device_runtime_site(edgekit_cache) -> Path:
    """The TVM runtime for local devices (x86_64 here), as `edgekit device setup` would install it.

    Unpacked once into the cache; a device "with the runtime" gets it on its PYTHONPATH, like a board
    whose python already has apache-tvm installed.
    """
    from edgekit.testing.sshd import local_runtime_site

    return local_runtime_site(edgekit_cache)


@pytest.fixture
def make_device(device_runtime_site, tmp_path):
    """Factory: a fresh sshd device; ``runtime=False`` gives a board whose python has no TVM."""
    from edgekit.testing.sshd import create_device

    made = []

    def make(*, runtime: bool = True, env: dict | None = None):
        device_env = {"PYTHONPATH": str(device_runtime_site)} if runtime else {}
        device = create_device(env={**device_env, **(env or {})})
        made.append(device)
        return device

    yield make
    for device in made:
        import subprocess

        subprocess.run(["umount", "-l", str(device.home / ".edgekit")], capture_output=True)
        device.remove()


@pytest.fixture
def device(make_device):
    return make_device()


class _Models:
    @staticmethod
    def tiny(seed: int = 0):
        import torch

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 4, 3)
                self.fc = torch.nn.Linear(4 * 6 * 6, 10)

            def forward(self, x):
                return self.fc(torch.relu(self.conv(x)).flatten(1))

        torch.manual_seed(seed)
        return Tiny().eval()


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy-artifacts")


@pytest.fixture(scope="session")
def host_artifact(artifacts_dir):
    """A small CNN compiled for this machine by edgekit's own compile_model."""
    from edgekit.compile import compile_model

    return compile_model(_Models.tiny(), "host", input_shapes=[(1, 1, 8, 8)], out_dir=artifacts_dir)


@pytest.fixture(scope="session")
def two_conv_artifact(artifacts_dir):
    """Two 32-channel 3x3 convolutions at 32x32 without BatchNorm, for this machine: hundreds of times the
    tiny CNN's work (a heavy model to tell apart), and constants that are exactly its weights and biases
    (the second conv's Winograd-transformed on x86, edgekit.compile.winograd)."""
    import torch

    from edgekit.compile import compile_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    return compile_model(model, "host", input_shapes=[(1, 1, 32, 32)], out_dir=artifacts_dir)


@pytest.fixture(scope="session")
def rpi4_artifact(artifacts_dir):
    """The same CNN cross-compiled for the rpi4 profile (aarch64)."""
    from edgekit.compile import compile_model

    return compile_model(_Models.tiny(), "rpi4", input_shapes=[(1, 1, 8, 8)], out_dir=artifacts_dir)


@pytest.fixture(scope="session")
def emulated_pi(edgekit_cache):
    """An emulated Raspberry Pi 4 (arm64 userland under qemu-user behind a chrooted sshd), session-wide."""
    from edgekit.testing.emulated_pi import EmulatedPi

    pi = EmulatedPi(edgekit_cache)
    device = pi.start()
    yield device
    pi.stop()
