"""The benchmark's standard architectures compile for every CPU profile and match torch (issue 10).

Small variants of each (edgekit.testing.architectures.SMALL_VARIANTS: 64x64 inputs, fewer blocks,
the same block types) are exported once and compiled once per target in a module-scoped
fixture; the tests read those builds.  Outputs must match torch within 1e-4 of the output's
scale (max |torch output|): on this host, and on the emulated Raspberry Pi for the rpi4 and
rpi5 builds, all checked in one emulated python process (its import alone takes 5-8 s).
armv7 builds are linked and checked for their ELF machine only (no armv7 TVM runtime wheel).
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from edgekit.testing.architectures import ARCHITECTURES, SMALL_VARIANTS, build_architecture
from edgekit.testing.device_check import check_on_device

pytestmark = pytest.mark.slow

TARGETS = ("host", "rpi4", "rpi5", "rpi3-armv7")
EMULATED_TARGETS = ("rpi4", "rpi5")
RELATIVE_TOLERANCE = 1e-4
BUILD_WORKERS = 2
BUILD_COST = {"efficientnet-lite0": 4, "mobilenetv3-small": 3, "mobilenetv2": 2, "vit-tiny": 2, "resnet18": 1}
READELF_MACHINE = {"host": "X86-64", "rpi4": "AArch64", "rpi5": "AArch64", "rpi3-armv7": "ARM"}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{(architecture, target): CompiledArtifact, or the error its build raised, as an AssertionError}.

    Each model is exported once; the twenty builds run in two spawned worker processes (a build is
    mostly single-threaded), the largest first.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from edgekit.artifacts import CompiledArtifact
    from edgekit.testing.architectures import compile_saved_program

    work = tmp_path_factory.mktemp("architectures")
    programs = {}
    for name in ARCHITECTURES:
        model, shape = build_architecture(name, **SMALL_VARIANTS[name])
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        programs[name] = work / f"{name}.pt2"
        torch.export.save(torch.export.export(model, (example,)), programs[name])
    jobs = sorted(((n, t) for n in ARCHITECTURES for t in TARGETS), key=lambda job: -BUILD_COST[job[0]])
    with ProcessPoolExecutor(BUILD_WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job: pool.submit(compile_saved_program, str(programs[job[0]]), job[1], str(work / "artifacts"))
                   for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    return {job: CompiledArtifact.open(r["path"]) if "path" in r else AssertionError(r["error"])
            for job, r in results.items()}


def artifact(builds, name, target):
    result = builds[name, target]
    if isinstance(result, Exception):
        raise AssertionError(f"{name} did not compile for {target}: {type(result).__name__}: {result}") from result
    return result


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| over the output's scale (max |expected|)."""
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(actual.astype(np.float64) - expected).max()) / scale


def run_here(compiled) -> list[np.ndarray]:
    """The artifact's library run in this process on its reference inputs."""
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    from tvm.runtime.vm import VirtualMachine

    reference = np.load(compiled.path / compiled.manifest["reference"])
    vm = VirtualMachine(tvm.runtime.load_module(str(compiled.library_path)), tvm.cpu())
    inputs = [tvm.runtime.tensor(reference[f"in{i}"]) for i in range(len(compiled.manifest["inputs"]))]
    result = vm["main"](*inputs)
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]


def expected_outputs(compiled) -> list[np.ndarray]:
    reference = np.load(compiled.path / compiled.manifest["reference"])
    return [reference[f"out{i}"] for i in range(len(compiled.manifest["outputs"]))]


@pytest.fixture(scope="module")
def emulated_results(builds, emulated_pi):
    """{(architecture, target): the device's report} for the rpi4 and rpi5 builds, from one emulated run."""
    pairs = [(n, t) for n in ARCHITECTURES for t in EMULATED_TARGETS if not isinstance(builds[n, t], Exception)]
    reports = check_on_device(emulated_pi, [builds[pair] for pair in pairs])
    return dict(zip(pairs, reports))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_matches_torch_on_host(builds, name):
    compiled = artifact(builds, name, "host")
    assert compiled.manifest["model"]["frontend"] == "torch.export"
    actual, expected = run_here(compiled), expected_outputs(compiled)
    assert [a.shape for a in actual] == [e.shape for e in expected]
    errors = [relative_error(a, e) for a, e in zip(actual, expected)]
    assert max(errors) <= RELATIVE_TOLERANCE, f"{name}: relative errors {errors}"


@pytest.mark.parametrize("target", EMULATED_TARGETS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_matches_torch_on_emulated_pi(builds, emulated_results, name, target):
    artifact(builds, name, target)
    result = emulated_results[name, target]
    assert result["machine"] == "aarch64"
    assert result["outputs"] == len(builds[name, target].manifest["outputs"])
    assert max(result["relative_errors"]) <= RELATIVE_TOLERANCE, f"{name} on {target}: {result}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_library_is_built_for_its_machine(builds, name, target):
    compiled = artifact(builds, name, target)
    readelf = subprocess.run(["readelf", "-h", str(compiled.library_path)], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(rf"Machine:\s+.*{READELF_MACHINE[target]}", readelf), readelf
    if target == "rpi3-armv7":  # 32-bit, hard-float ABI (the only one the armv7 toolchain links)
        assert "ELF32" in readelf and "hard-float ABI" in readelf, readelf


def test_vit_encoder_needed_the_frontend_fix():
    """The ViT's nn.MultiheadAttention squeezes a negative axis, which the fix makes non-negative (issue 11)."""
    import torch

    from edgekit.compile.frontend_fixes import apply_frontend_fixes

    model, shape = build_architecture("vit-tiny", **SMALL_VARIANTS["vit-tiny"])
    example = torch.randn(*shape)
    program = torch.export.export(model, (example,))

    def negative_squeezes(p):
        return [n for n in p.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.squeeze.dim
                and n.args[1] < 0]

    assert negative_squeezes(program)
    fixed = apply_frontend_fixes(program)
    assert not negative_squeezes(fixed) and negative_squeezes(program)  # the user's program is untouched
    with torch.no_grad():
        torch.testing.assert_close(fixed.module()(example), program.module()(example), rtol=0, atol=0)


def test_architectures_have_no_unscheduled_kernels(builds):
    """No kernel of any architecture is left to TVM's naive loops on any CPU profile: conv, matmul,
    pooling, softmax (torch's attention "safe softmax" with its row mask too), norms, epilogues."""
    left = {}
    for (name, target), compiled in builds.items():
        if isinstance(compiled, Exception):
            continue  # the build's own tests report it
        unscheduled = compiled.manifest["schedules"]["unscheduled"]
        if unscheduled:
            left[f"{name}/{target}"] = unscheduled
    assert not left, f"unscheduled kernels: {json.dumps(left, indent=1)}"
