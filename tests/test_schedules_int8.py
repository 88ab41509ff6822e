"""The int8 schedule rule: exact integer kernels on the target's dot-product instruction.

Real parts: edgekit.compress.quantize on a small seeded CNN, the real TVM build for each
profile, the host runtime, objdump on the cross-built libraries, and (slow) the emulated Pi.
The model has signed activations (the network input, a conv without ReLU after it) and unsigned
ones (after ReLU), 3x3, strided and 1x1 convs, and a Linear layer.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

SHAPE = (1, 16, 12, 12)
INT8_RULE = "Int8Conv2D"


class _Calibration:
    def __init__(self):
        import torch

        self.x = torch.randn(16, *SHAPE[1:], generator=torch.Generator().manual_seed(0))

    def batches(self, batch_size):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size], None


def _float_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),              # s8 input (the network's)
        nn.Conv2d(16, 32, 3, stride=2, padding=1),               # u8 input, no ReLU after it
        nn.Conv2d(32, 32, 1), nn.ReLU(),                         # s8 input, 1x1 without padding
        nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),              # u8 input
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def quantized():
    from edgekit.compress.quantize import QuantizeConfig, quantize_model

    return quantize_model(_float_model(), _Calibration(), QuantizeConfig(calibration_size=16))


@pytest.fixture(scope="module")
def build(quantized, tmp_path_factory):
    """compile_model for a profile name or TOML path, once per profile."""
    from edgekit.compile import compile_model

    out = tmp_path_factory.mktemp("int8-builds")
    cache = {}

    def make(profile):
        key = str(profile)
        if key not in cache:
            cache[key] = compile_model(quantized, profile, input_shapes=[SHAPE], out_dir=out, tuning=False,
                                       tolerance={"atol": 1e-4, "rtol": 1e-4})
        return cache[key]

    return make


def _manifest(artifact) -> dict:
    return json.loads((artifact.path / "manifest.json").read_text())


def _disassembly(artifact, objdump: str) -> str:
    library = next(p for p in artifact.path.iterdir() if p.suffix == ".so")
    return subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], check=True, capture_output=True,
                          text=True).stdout


def test_host_int8_kernels_are_exact_and_scheduled_by_the_int8_rule(build):
    from edgekit.run import run_artifact

    artifact = build("host")
    schedules = _manifest(artifact)["schedules"]
    assert len(schedules["by_rule"].get(INT8_RULE, [])) == 4, schedules  # all four convs
    assert not schedules["unscheduled"], schedules  # the int8 Linear too (by the matmul rule)
    assert any("matmul" in name for name in schedules["by_rule"].get("Matmul", [])), schedules
    # The artifact's reference outputs are the fake-quantized torch model's on seeded inputs.
    # Integer sums are exact; what is left is float rounding of the requantize epilogue (the
    # float model multiplies by s_x then s_w, the kernel by s_x * s_w), far below one int8 step.
    check = run_artifact(artifact, warmup=0, repeats=1).output_check
    assert check["passed"] and check["max_abs_error"] < 1e-5, check


def test_requantize_multiplies_by_the_stored_inverse_scale_and_older_models_still_build(build, quantized, tmp_path):
    """quantize.py scales activations by a stored 1/s (a vector divide in every epilogue cost 10x a
    multiply); a model pickled before that buffer existed divides, and still gets the int8 kernels."""
    import copy

    from edgekit.compile import compile_model
    from edgekit.run import run_artifact

    int8_kernels = _manifest(build("host"))["schedules"]["by_rule"][INT8_RULE]
    assert not [name for name in int8_kernels if "divide" in name], int8_kernels
    older = copy.deepcopy(quantized)
    for layer in older.modules():
        if hasattr(layer, "act_inv_scale"):
            del layer.act_inv_scale  # as unpickled from before the buffer
    artifact = compile_model(older, "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=False,
                             tolerance={"atol": 1e-4, "rtol": 1e-4})
    assert len(_manifest(artifact)["schedules"]["by_rule"].get(INT8_RULE, [])) == 4
    check = run_artifact(artifact, warmup=0, repeats=1).output_check
    assert check["passed"] and check["max_abs_error"] < 1e-5, check


def test_schedule_picks_the_dot_product_instruction_from_the_target():
    from edgekit.compile.schedules.int8 import choose_intrinsic
    from edgekit.compile.schedules.target_info import CpuInfo

    avx2 = CpuInfo(arch="x86_64", mcpu="haswell", vector_bits=256, num_cores=1, avx2=True)
    vnni = CpuInfo(arch="x86_64", mcpu="znver5", vector_bits=512, num_cores=1, avx2=True, avx512=True,
                   avx512_vnni=True)
    rpi5 = CpuInfo(arch="aarch64", mcpu="cortex-a76", vector_bits=128, num_cores=4, neon=True, dotprod=True)
    assert choose_intrinsic(avx2, "uint8", 16, 16).instructions == ("vpmaddwd",)
    # VNNI targets: vpdpbusd on 256-bit registers (the 512-bit build is slow, see choose_intrinsic).
    assert choose_intrinsic(vnni, "uint8", 16, 32).instructions == ("vpdpbusd",)
    assert choose_intrinsic(vnni, "int8", 16, 32).lanes == 8
    assert choose_intrinsic(vnni, "uint8", 6, 32).instructions == ("vpmaddwd",)  # 6 channels: no group of 4
    avx_vnni = CpuInfo(arch="x86_64", mcpu="alderlake", vector_bits=256, num_cores=1, avx2=True, avx_vnni=True)
    assert choose_intrinsic(avx_vnni, "int8", 16, 16).instructions == ("vpdpbusd",)
    assert choose_intrinsic(rpi5, "uint8", 16, 16).instructions == ("sdot",)
    rpi4 = CpuInfo(arch="aarch64", mcpu="cortex-a72", vector_bits=128, num_cores=4, neon=True)
    assert choose_intrinsic(rpi4, "uint8", 16, 16).instructions == ("smlal",)
    assert choose_intrinsic(avx2, "uint8", 3, 16) is None  # an RGB stem: no reduction group of 2


VNNI_PROFILE = """description = "x86-64 with AVX-512 and VNNI (Zen 4)"
kind = "cpu"
arch = "x86_64"
triple = "x86_64-linux-gnu"
tvm_target = { kind = "llvm", mtriple = "x86_64-linux-gnu", mcpu = "znver4", num-cores = 2 }
"""


@pytest.fixture(scope="module")
def vnni_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("profiles") / "x86-vnni.toml"
    path.write_text(VNNI_PROFILE)
    return str(path)


def test_vnni_build_uses_vpdpbusd_and_is_exact_where_it_can_run(build, vnni_profile):
    """Cross-checked from the disassembly on any host; run (and checked against the fake-quantized torch
    model) where this machine has AVX512-VNNI."""
    from edgekit.run import run_artifact

    artifact = build(vnni_profile)
    assert len(_manifest(artifact)["schedules"]["by_rule"].get(INT8_RULE, [])) == 4
    assert "vpdpbusd" in _disassembly(artifact, "objdump")
    if "avx512_vnni" in open("/proc/cpuinfo").read():
        check = run_artifact(artifact, warmup=0, repeats=1).output_check
        assert check["passed"] and check["max_abs_error"] < 1e-5, check


@pytest.mark.parametrize("profile, objdump, instructions", [
    ("x86-avx2", "objdump", ("vpmaddwd",)),
    ("rpi5", "aarch64-linux-gnu-objdump", ("sdot",)),
    ("rpi4", "aarch64-linux-gnu-objdump", ("smlal", "smlal2")),        # Cortex-A72: no dotprod
    ("rpi3-armv7", "arm-linux-gnueabihf-objdump", ("vmlal.s16",)),
])
def test_cross_built_int8_kernels_use_the_dot_product_instruction(build, profile, objdump, instructions):
    if shutil.which(objdump) is None:
        pytest.skip(f"{objdump} is not installed")
    artifact = build(profile)
    assert len(_manifest(artifact)["schedules"]["by_rule"].get(INT8_RULE, [])) == 4
    text = _disassembly(artifact, objdump)
    for instruction in instructions:
        assert f"\t{instruction} " in text or f"\t{instruction}\t" in text, f"no {instruction} in the {profile} build"


@pytest.mark.slow
def test_rpi5_int8_build_matches_the_reference_on_the_emulated_pi(build, emulated_pi, capsys):
    from edgekit.cli.main import main

    artifact = build("rpi5")
    argv = ["deploy", "--artifact", str(artifact.path), "--host", emulated_pi.host_spec, "-i",
            str(emulated_pi.client_key), "--known-hosts", str(emulated_pi.known_hosts), "--no-agent",
            "--warmup", "1", "--repeats", "2", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)["devices"][0]["report"]
    assert report["device"]["machine"] == "aarch64"
    assert report["output_check"]["passed"], report["output_check"]
    assert report["output_check"]["max_abs_error"] < 1e-4


def test_int8_squeeze_excitation_leaves_no_kernel_unscheduled(tmp_path):
    """MobileNetV3's int8 block: the SE pool quantizes its mean in the same kernel (u8 output), a signed
    1x1 conv reads shifted-unsigned activations on VNNI hosts; every kernel is scheduled and exact."""
    import torch
    from torch import nn

    from edgekit.compile import compile_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.run import run_artifact
    from edgekit.testing.architectures import SqueezeExcitation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.Hardswish(), SqueezeExcitation(32, 8), nn.Conv2d(32, 16, 1),
                          nn.Conv2d(16, 32, 1)).eval()
    quantized = quantize_model(model, _Calibration(), QuantizeConfig(calibration_size=16))
    artifact = compile_model(quantized, "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    schedules = _manifest(artifact)["schedules"]
    assert not schedules["unscheduled"], schedules
    assert any("mean" in name for name in schedules["by_rule"].get("SpatialReduction", [])), schedules
    check = run_artifact(artifact, warmup=0, repeats=1).output_check
    assert check["passed"] and check["max_abs_error"] < 1e-5, check


def test_requantize_rounding_is_vectorized():
    """Every int8 requantize rounds with nearbyint, which TVM 0.27 does not mark vectorizable: without
    edgekit's registration a vectorized loop holding it was scalarized, and LLVM re-vectorized another
    loop with gathers and byte-wise scatters."""
    import tvm
    from tvm import s_tir, te

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import fast_math
    from edgekit.targets import load_target

    fast_math.enable()
    target = resolve_tvm_target(load_target("host"))
    data = te.placeholder((28, 24), "float32", name="data")
    quantized = te.compute((28, 24), lambda i, j: tvm.tirx.nearbyint(data[i, j] / 0.5).astype("int8"), name="q")
    sch = s_tir.Schedule(te.create_prim_func([data, quantized]))
    _, lane = sch.split(sch.get_loops(sch.get_sblock("q"))[1], [None, 8])
    sch.vectorize(lane)
    llvm_ir = tvm.tirx.build(sch.mod, target=target).inspect_source("ll")
    assert "llvm.nearbyint.v8f32" in llvm_ir
    assert "masked.gather" not in llvm_ir and "masked.scatter" not in llvm_ir


def test_int8_depthwise_convs_sum_in_float_on_x86_and_stay_exact(tmp_path):
    """x86: a depthwise conv reads int8 but multiplies and sums in float32 (exact below 2^24); others sum in int32."""
    import torch
    from torch import nn

    from edgekit.compile import compile_model
    from edgekit.compile.frontend import import_model
    from edgekit.compile.graph_passes import integer_quantized_ops
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.run import run_artifact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU6(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6(),  # padded, u8 input
                          nn.Conv2d(32, 32, 5, stride=2, groups=32),               # unpadded, s8 input
                          nn.Conv2d(32, 16, 1)).eval()
    quantized = quantize_model(model, _Calibration(), QuantizeConfig(calibration_size=16))
    imported = import_model(quantized, input_shapes=[SHAPE], frontend="torch.export").mod
    for float_depthwise, expected in ((True, "float32"), (False, "int32")):
        script = integer_quantized_ops(unsigned_activations=True, float_depthwise=float_depthwise)(imported).script()
        convs = [line for line in script.splitlines() if "R.nn.conv2d(" in line]
        depthwise = [line for line in convs if "groups=32" in line]
        assert len(convs) == 4 and len(depthwise) == 2, convs
        assert all(f'out_dtype="{expected}"' in line for line in depthwise), depthwise
        assert all('out_dtype="int32"' in line for line in convs if line not in depthwise), convs

    artifact = compile_model(quantized, "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=False,
                             tolerance={"atol": 1e-4, "rtol": 1e-4})
    schedules = artifact.manifest["schedules"]
    assert not schedules["unscheduled"] and len(schedules["by_rule"].get("DepthwiseNHWC", [])) == 2, schedules
    check = run_artifact(artifact, warmup=0, repeats=1).output_check
    assert check["passed"] and check["max_abs_error"] < 1e-5, check
