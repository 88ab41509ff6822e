"""Import TVM once, prepared for every target edgekit builds.

Why a wrapper: TVM decides at import time whether its CUDA runtime library is
loaded, and only with that library does a CUDA build produce device code
(a fatbin from nvcc) instead of embedding CUDA C for the device to compile at
load time.  That library links against libcuda.so.1, which only exists on a
machine with an NVIDIA driver.  On a build machine without one, edgekit loads
a stub libcuda.so.1 first (every entry point answers "no device"); the stub is
used only to compile, never to run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The symbols libtvm_runtime_cuda.so (apache-tvm 0.27) imports from the driver.
_DRIVER_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                   "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                   "cuTensorMapEncodeTiled")
CUDA_ERROR_NO_DEVICE = 100


def cache_dir() -> Path:
    root = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def import_tvm():
    """Return the ``tvm`` module, with a stub CUDA driver preloaded where no real one exists."""
    if "tvm" not in sys.modules:
        _preload_cuda_driver_stub()
    import tvm

    return tvm


def cuda_codegen_available() -> bool:
    tvm = import_tvm()
    return tvm.get_global_func("device_api.cuda", allow_missing=True) is not None


def _preload_cuda_driver_stub() -> None:
    if ctypes.util.find_library("cuda") or not shutil.which("nvcc"):
        return  # a real driver is here, or no CUDA toolkit to compile with anyway
    stub = cache_dir() / "cuda-driver-stub" / "libcuda.so.1"
    if not stub.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            return
        stub.parent.mkdir(parents=True, exist_ok=True)
        source = stub.with_suffix(".c")
        source.write_text("".join(f"int {name}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}\n"
                                  for name in _DRIVER_SYMBOLS))
        tmp = stub.with_name(f".libcuda.{os.getpid()}.so")
        subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(source)],
                       check=True, capture_output=True)
        os.replace(tmp, stub)
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
