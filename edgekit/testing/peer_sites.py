"""Peer runtimes for local test devices: this machine's installed packages, where the device user reads them.

A local device's python3 is the system one (same CPython minor as this interpreter, checked), which has no
ONNX Runtime or ExecuTorch; a copy of this interpreter's package on the device's PYTHONPATH gives it one, as
`pip install onnxruntime` would on a board.  (``numpy`` comes from the TVM runtime site already there.)
ONNX Runtime is one self-contained package; ExecuTorch's runtime imports torch and whatever torch imports, so
its site holds every installed distribution it needs (its requirements, recursively), hard-linked, not copied:
this interpreter's site-packages sits under /root, which the device user cannot enter.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

# the packages whose whole dependency closure the device needs (their runtimes import it at load time); the
# executorch wheel does not declare torch, yet its pybindings import it first
WITH_DEPENDENCIES = {"executorch": ("executorch", "torch"), "torch": ("torch",)}


def local_peer_site(cache: Path | str, package: str = "onnxruntime") -> Path:
    """A directory holding ``package`` (and, for WITH_DEPENDENCIES, what it requires) from this interpreter,
    readable by any user; made once."""
    version = metadata.version(package) if package in WITH_DEPENDENCIES else importlib.import_module(package).__version__
    site = Path(cache) / f"peer-site-{package}-{version}-cp{sys.version_info[0]}{sys.version_info[1]}"
    if not (site / ".complete").is_file():
        tmp = site.with_name(site.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if package in WITH_DEPENDENCIES:
            _link_distributions(_closure(*WITH_DEPENDENCIES[package]), tmp)
        else:
            shutil.copytree(Path(importlib.import_module(package).__file__).parent, tmp / package)
        for root, _, _ in os.walk(tmp):
            os.chmod(root, 0o755)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
    return site


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(*packages: str) -> list[metadata.Distribution]:
    """The installed distributions of ``packages`` and those they require (no extras), recursively."""
    from packaging.requirements import Requirement

    found, todo = {}, list(packages)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-only requirement that is not installed here
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def _link_distributions(dists: list[metadata.Distribution], dest: Path) -> None:
    for dist in dists:
        base = Path(dist.locate_file(""))
        for entry in dist.files or []:
            source = base / entry
            if entry.parts[0] == ".." or not source.is_file():
                continue  # scripts outside site-packages (bytecode is kept: the device user cannot write it)
            target = dest / entry
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copy2(source, target)
