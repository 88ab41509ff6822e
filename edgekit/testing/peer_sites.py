"""Peer runtimes for local test devices: this machine's installed package, unpacked where the device user reads it.

A local device's python3 is the system one (same CPython minor as this interpreter, checked), which has no
ONNX Runtime; a copy of this interpreter's ``onnxruntime`` package on the device's PYTHONPATH gives it one, as
`pip install onnxruntime` would on a board.  (``numpy`` comes from the TVM runtime site already there.)
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path


def local_peer_site(cache: Path | str, package: str = "onnxruntime") -> Path:
    """A directory holding ``package`` copied from this interpreter, readable by any user; made once."""
    module = importlib.import_module(package)
    site = Path(cache) / f"peer-site-{package}-{module.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}"
    if not (site / ".complete").is_file():
        tmp = site.with_name(site.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(module.__file__).parent, tmp / package)
        for root, _, _ in os.walk(tmp):
            os.chmod(root, 0o755)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
    return site
