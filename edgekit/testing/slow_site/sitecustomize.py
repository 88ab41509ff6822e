"""Slow kernels on an SSH test device: this directory on the device's PYTHONPATH makes edgekit's own runner,
uploaded by a normal deploy, sleep in the kernels ``EDGEKIT_SLOW_KERNELS_FILE`` names (a JSON file in the
format of ``EDGEKIT_SLOW_KERNELS``, see ../slow_runner.py).

A local device can be told to start slow_runner.py instead of the runner (``slow_local_device``); a board
reached over SSH always runs the runner that deploy uploaded, so the same wrapping is installed from here,
right after the runner imports ``tvm.runtime.vm`` (it sets its thread count before importing tvm, and that
must stay so).  Without the variable this file does nothing.  Python runs it at start-up (``site``).
"""

import os
import sys

SLOW_FILE_ENV = "EDGEKIT_SLOW_KERNELS_FILE"


class _WrapAfterImport:
    """A meta-path finder that lets ``tvm.runtime.vm`` load normally, then installs the slow time evaluators."""

    target = "tvm.runtime.vm"

    def find_spec(self, name, path=None, target=None):
        if name != self.target:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # find the real module, once
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for slow_runner
            import slow_runner

            slow_runner.install(slow_runner.slow_specs())

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get(SLOW_FILE_ENV):
    with open(os.environ[SLOW_FILE_ENV]) as _file:
        os.environ["EDGEKIT_SLOW_KERNELS"] = _file.read()
    sys.meta_path.insert(0, _WrapAfterImport())
