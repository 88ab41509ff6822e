"""Cross-compilation: right ELF machine per ARM profile; CUDA profiles carry real device code."""

import subprocess

import pytest

from edgekit.artifacts import elf_machine
from edgekit.compile import compile_model
from edgekit.errors import ToolchainError
from edgekit.testing.models import build


@pytest.fixture(scope="module")
def mobilenet():
    return build("mobilenetv2")


@pytest.mark.parametrize("target, machine", [("rpi4", "aarch64"), ("rpi5", "aarch64"), ("rpi3-armv7", "arm"),
                                             ("x86-avx2", "x86-64")])
def test_cpu_profile_builds_a_library_for_its_machine(target, machine, mobilenet, tmp_path):
    model, shape = mobilenet
    artifact = compile_model(model, target, input_shapes=[shape], out_dir=tmp_path)
    assert artifact.manifest["elf_machine"] == machine
    assert elf_machine(artifact.library_path) == machine
    readelf = subprocess.run(["readelf", "-h", str(artifact.library_path)], capture_output=True, text=True).stdout
    assert {"aarch64": "AArch64", "arm": "ARM", "x86-64": "X86-64"}[machine] in readelf


def test_rpi5_build_uses_the_a76_features(mobilenet, tmp_path):
    model, shape = mobilenet
    artifact = compile_model(model, "rpi5", input_shapes=[shape], out_dir=tmp_path)
    tvm_target = artifact.manifest["target"]["tvm_target"]
    assert tvm_target["mcpu"] == "cortex-a76" and tvm_target["feature.has_dotprod"] is True


@pytest.mark.parametrize("target, arch, host_machine", [("jetson-orin-nano", "sm_87", "aarch64"),
                                                       ("cuda-sm90", "sm_90", "x86-64")])
def test_cuda_profile_embeds_a_fatbin_for_its_arch(target, arch, host_machine, mobilenet, tmp_path):
    model, shape = mobilenet
    artifact = compile_model(model, target, input_shapes=[shape], out_dir=tmp_path)
    assert artifact.manifest["target"]["cuda_arch"] == arch
    assert artifact.manifest["target"]["tvm_target"]["arch"] == arch
    assert artifact.manifest["elf_machine"] == host_machine  # host code, e.g. for the Orin's Cortex-A78AE
    strings = subprocess.run(["strings", str(artifact.library_path)], capture_output=True, text=True).stdout
    assert f"-arch {arch}" in strings  # nvcc's command line inside the fatbin
    assert "__global__" not in strings  # compiled device code, not CUDA C for the board to compile


def test_cuda_arch_this_nvcc_cannot_build_fails_with_the_reason(mobilenet, tmp_path):
    model, shape = mobilenet
    with pytest.raises(ToolchainError) as info:
        compile_model(model, "jetson-nano", input_shapes=[shape], out_dir=tmp_path)
    assert "sm_53" in str(info.value) and "nvcc" in str(info.value)
    assert info.value.exit_code == 7
    assert list(tmp_path.iterdir()) == []  # no half-built artifact or temporary directory left behind


def test_opencl_profile_builds_kernels_for_a_runtime_the_board_must_provide(mobilenet, tmp_path):
    model, shape = mobilenet
    artifact = compile_model(model, "mali-g", input_shapes=[shape], out_dir=tmp_path)
    strings = subprocess.run(["strings", str(artifact.library_path)], capture_output=True, text=True).stdout
    assert "__kernel void" in strings
    assert "USE_OPENCL" in artifact.manifest["target"]["runtime"]["notes"]
