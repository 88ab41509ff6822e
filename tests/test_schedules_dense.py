"""edgekit's default CPU schedules for dense, batch_matmul, pooling, reductions, softmax and layer norm.

Each op is built for the host with the rules, run, and compared with torch (1e-4 of the
output's scale); the schedule log must name one of this family's rules for it and leave
none of its kernels unscheduled.  Cross builds check the NEON code of the dense kernels
and that no kernel of the family is unscheduled in the test transformer on every CPU
profile.
"""

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.testing.models import build

FAMILY_RULES = {"Matmul", "SpatialReduction", "RowReduction", "VariableWindowPool"}
# Kernel names (from the fused op names) that belong to this family.
FAMILY_KERNEL = re.compile(r"matmul|dense|pool|mean|sum|max|min|softmax|layer_norm|variance|adaptive")


def _build(module, shapes, target="host", library=None, frontend="auto"):
    """(relax VM or None, ScheduleLog) for module built for target with the default schedules."""
    import tvm
    from tvm import relax

    from edgekit.compile.build import build_library, cpu_pipeline, optimize_graph, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.schedules import ScheduleLog
    from edgekit.targets import load_target

    imported = import_model(module.eval(), input_shapes=shapes, frontend=frontend)
    log = ScheduleLog()
    profile = load_target(target)
    if library is not None:
        build_library(imported.mod, profile, library, schedule_log=log)
        return None, log
    tvm_target = resolve_tvm_target(profile)
    mod = optimize_graph(imported.mod, tvm_target)
    with tvm_target:
        exe = tvm.compile(mod, tvm_target, relax_pipeline=cpu_pipeline(tvm_target, schedule_log=log))
    return relax.VirtualMachine(exe, tvm.cpu()), log


def _check(module, *shapes, rules=None, frontend="auto"):
    import tvm

    vm, log = _build(module, list(shapes), frontend=frontend)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(s).astype("float32") for s in shapes]
    with torch.no_grad():
        expected = module(*[torch.from_numpy(x) for x in inputs]).numpy()
    got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    scale = max(float(np.abs(expected).max()), 1e-6)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4 * scale
    used = set(log.by_rule) & FAMILY_RULES
    assert used >= set(rules or []), log.to_dict()
    assert used, log.to_dict()
    assert not [k for k in log.unscheduled if FAMILY_KERNEL.search(k)], log.to_dict()
    return log


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class _LinearGelu(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.fc = nn.Linear(k, n)

    def forward(self, x):
        return nn.functional.gelu(self.fc(x))


class _LinearResidual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


class _ConvPool(nn.Module):
    """A conv first, so the layout pass makes the pools NHWC as in a real CNN."""

    def __init__(self, pool):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = pool

    def forward(self, x):
        return self.pool(self.conv(x))


torch.manual_seed(0)


# 37: off the vector grid, padded to tiles; 1000 (a classifier): streamed by rows, 8-lane vectors on AVX-512
@pytest.mark.parametrize("k,n", [(64, 40), (96, 37), (1024, 1000)])
def test_gemv(k, n):
    _check(nn.Linear(k, n), (1, k), rules=["Matmul"])


def test_gemm_bias_gelu_and_residual():
    _check(_LinearGelu(48, 96), (13, 48), rules=["Matmul"])
    _check(_LinearResidual(32), (1, 9, 32), rules=["Matmul"])


def test_batch_matmul_scores_and_values():
    _check(_Fn(lambda q, k: q @ k.transpose(-2, -1)), (2, 13, 16), (2, 13, 16), rules=["Matmul"])
    _check(_Fn(lambda p, v: p @ v), (2, 13, 13), (2, 13, 16), rules=["Matmul"])


@pytest.mark.parametrize("shape", [(1, 2, 13, 13), (4, 32)])  # 32: rfactored into vectors
def test_softmax(shape):
    _check(_Fn(lambda x: torch.softmax(x, dim=-1)), shape, rules=["RowReduction"])


@pytest.mark.parametrize("shape", [(1, 10, 64), (1, 5, 20)])
def test_layer_norm(shape):
    _check(nn.LayerNorm(shape[-1]), shape, rules=["RowReduction"])


def test_pools_nchw_and_nhwc():
    _check(nn.MaxPool2d(3, 2, padding=1), (1, 8, 15, 15), rules=["SpatialReduction"])
    _check(nn.AvgPool2d(2), (1, 8, 8, 8), rules=["SpatialReduction"])
    _check(_ConvPool(nn.MaxPool2d(3, 2, padding=1)), (1, 3, 12, 12), rules=["SpatialReduction"])
    _check(_ConvPool(nn.AvgPool2d(2)), (1, 3, 12, 12), rules=["SpatialReduction"])


def test_global_and_adaptive_average_pool():
    _check(_Fn(lambda x: x.mean(dim=(2, 3))), (1, 16, 7, 7), rules=["SpatialReduction"])
    _check(_ConvPool(nn.AdaptiveAvgPool2d(1)), (1, 3, 7, 7), rules=["SpatialReduction"])
    _check(nn.AdaptiveAvgPool2d((2, 3)), (1, 8, 7, 9), rules=["VariableWindowPool"])


@pytest.mark.parametrize("reduce,frontend", [
    (lambda x: x.amax(dim=1), "onnx"), (lambda x: x.sum(dim=(0, 2)), "auto"), (lambda x: x.mean(dim=-1), "auto"),
    (lambda x: x.amin(dim=(1, 2)), "onnx"), (lambda x: x.sum(dim=0), "auto"),
], ids=["amax1", "sum02", "mean-1", "amin12", "sum0"])  # torch.export's frontend lacks amax/amin: via ONNX
def test_reductions_over_dims(reduce, frontend):
    _check(_Fn(reduce), (2, 6, 16), frontend=frontend)


def test_a_failing_primitive_leaves_the_kernel_unscheduled_not_the_build_broken(monkeypatch):
    from tvm import s_tir

    def fail(*_args, **_kwargs):
        raise RuntimeError("primitive refused this shape")

    monkeypatch.setattr(s_tir.Schedule, "decompose_reduction", fail)
    monkeypatch.setattr(s_tir.Schedule, "rfactor", fail)
    vm, log = _build(nn.Linear(16, 8), [(1, 16)])
    assert "Matmul" not in log.by_rule and any("matmul" in k for k in log.unscheduled)


def test_a_rule_that_raises_is_logged_and_the_next_rule_tried(monkeypatch):
    """A rule's own bug (not a refused primitive it catches) costs the kernel its schedule, not the build."""
    from edgekit.compile.schedules import matmul

    def broken(self, *_args):
        raise ValueError("rule bug")

    monkeypatch.setattr(matmul.Matmul, "apply", broken)
    monkeypatch.delenv("EDGEKIT_SCHEDULE_DEBUG", raising=False)
    vm, log = _build(nn.Linear(16, 8), [(1, 16)])
    kernel = next(k for k in log.unscheduled if "matmul" in k)
    assert log.rule_errors[kernel] == "Matmul: rule bug"
    assert vm is not None


def _transformer_library(target, tmp_path):
    model, shape = build("transformer")
    library = tmp_path / f"{target}.so"
    _, log = _build(model, [shape], target=target, library=library)
    return library, log


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_arm64_dense_kernels_use_neon_fma(target, tmp_path):
    if shutil.which("aarch64-linux-gnu-objdump") is None:
        pytest.skip("aarch64 binutils not installed")
    library, log = _transformer_library(target, tmp_path)
    assert not [k for k in log.unscheduled if FAMILY_KERNEL.search(k)], log.to_dict()
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(library)], capture_output=True,
                                 text=True, check=True).stdout
    dense = re.search(r"<fused_matmul\d*_add\d*(_compute_)?>:\n(.*?)\n\n", disassembly, re.S)
    assert dense is not None
    assert re.search(r"fmla\s+v\d+\.4s", dense.group(2))


def test_armv7_transformer_links(tmp_path):
    if shutil.which("arm-linux-gnueabihf-g++") is None:
        pytest.skip("armv7 cross compiler not installed")
    library, log = _transformer_library("rpi3-armv7", tmp_path)
    assert not [k for k in log.unscheduled if FAMILY_KERNEL.search(k)], log.to_dict()
    header = subprocess.run(["readelf", "-h", str(library)], capture_output=True, text=True, check=True).stdout
    assert "ARM" in header and "ELF32" in header


def test_host_transformer_manifest_has_no_unscheduled_kernel_of_the_family(tmp_path):
    from edgekit.compile import compile_model

    model, shape = build("transformer")
    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=tmp_path, tuning=False)
    schedules = artifact.manifest["schedules"]
    assert {"Matmul", "RowReduction", "SpatialReduction"} <= set(schedules["by_rule"])
    assert not [k for k in schedules["unscheduled"] if FAMILY_KERNEL.search(k)], schedules


_FAST_MATH_CHECK = """
import numpy as np, torch, tvm
from torch import nn
from tvm import relax
from edgekit.compile.schedules import fast_math
from edgekit.compile.build import cpu_pipeline, optimize_graph, resolve_tvm_target
from edgekit.compile.frontend import import_model
from edgekit.targets import load_target
fast_math.enable()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Softmax(dim=-1)).eval()
x = (np.random.default_rng(0).standard_normal((5, 16)) * 4).astype("float32")
target = resolve_tvm_target(load_target("host"))
mod = optimize_graph(import_model(model, input_shapes=[(5, 16)]).mod, target)
with target:
    exe = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))
got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
expected = model(torch.from_numpy(x)).detach().numpy()
print("ERR", float(np.abs(got - expected).max() / np.abs(expected).max()))
"""


def test_fast_exp_erf_lowering_matches_torch():
    # A subprocess: the lowering is registered process-wide and must not leak into other tests.
    import os
    import sys

    result = subprocess.run([sys.executable, "-c", _FAST_MATH_CHECK], capture_output=True, text=True,
                            env={**os.environ, "TVM_NUM_THREADS": "1"}, timeout=300)
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERR ")]
    assert errors, result.stderr[-2000:]
    assert float(errors[0].split()[1]) < 1e-5
