"""The layout shows the pipeline: deploy does not reach back into compile or measure, and the programs that run
on a device need nothing a device lacks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).resolve().parent
ONBOARD = PACKAGE / "onboard"
DEVICE_PROGRAMS = ("agent", "runner", "rpc_server", "device_facts", "order_stats", "peer_runner")
# What a device has: the standard library, numpy and the TVM runtime, plus the helpers each program carries.
DEVICE_MODULES = set(sys.stdlib_module_names) | {"numpy", "tvm", "device_facts", "order_stats"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_deploy_imports_neither_compile_nor_measure():
    for path in (PACKAGE / "deploy").glob("*.py"):
        stages = {m for m in imported_modules(path) if m.startswith(("edgekit.compile", "edgekit.measure"))}
        assert not stages, f"{path.name} imports {stages}"
    loaded = subprocess.run([sys.executable, "-c", "import sys, edgekit.deploy.deploy, edgekit.deploy.checks; "
                             "print(' '.join(sorted(sys.modules)))"], capture_output=True, text=True, check=True)
    modules = loaded.stdout.split()
    assert not [m for m in modules if m.startswith(("edgekit.compile", "edgekit.measure.protocol", "torch", "tvm"))]


def test_device_programs_need_only_what_a_device_has():
    for name in DEVICE_PROGRAMS:
        path = ONBOARD / f"{name}.py"
        foreign = {m for m in imported_modules(path) if m.split(".")[0] not in DEVICE_MODULES}
        if name == "peer_runner":  # the runner beside it, and the peer runtime it was asked to run
            foreign -= {"runner", "onnxruntime", "torch", "edgekit.onboard"}
            foreign = {m for m in foreign if m.split(".")[0] != "executorch"}
        if name in ("runner", "peer_runner"):
            # only when edgekit imports it, for its exit codes
            foreign -= {"edgekit.onboard.device_facts", "edgekit.onboard.order_stats"}
        assert not foreign, f"{name}.py imports {foreign}"


def test_programs_sent_with_python_c_carry_their_helper(tmp_path):
    from edgekit.onboard import inline_source

    # -S: no site-packages, so neither edgekit nor its editable install can be imported, as on a board
    done = subprocess.run([sys.executable, "-S", "-c", inline_source("agent"), "probe", str(tmp_path / "root")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert '"machine"' in done.stdout and '"cpu_model"' in done.stdout
