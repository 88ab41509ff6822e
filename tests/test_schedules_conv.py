"""edgekit's default CPU schedules for convolutions, depthwise/grouped convs, conv1d and injective kernels.

Correctness against torch on the host, rule coverage on every CPU profile (schedule pass only,
no codegen, so it stays fast), NEON multiply-accumulate in the cross-built ARM conv kernels, an
emulated-Pi run of rpi4 and rpi5 builds, and the guarantee that a rule that cannot schedule a
kernel declines (the kernel is named unscheduled) instead of breaking the build.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from torch import nn

from edgekit.compile import compile_model
from edgekit.testing.host_check import build_matches_torch

CPU_PROFILES = ("host", "rpi4", "rpi5", "rpi3-armv7")


def _act(kind):
    return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hardswish": nn.Hardswish(), "none": nn.Identity()}[kind]


class Residual(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


def _conv(cin, cout, k, stride=1, padding=0, dilation=1, groups=1, act="relu"):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups), _act(act))


class ConvVariants(nn.Module):
    """Every conv2d variant of an edge CNN, chained (one build covers them all; each conv is its own kernel):
    first conv with 3 inputs, depthwise 3x3/5x5/7x7 at stride 1 and 2, 1x1, dilated, grouped (ResNeXt and
    ShuffleNet style), output channels the vector width does not divide (40, 10), and the epilogues ReLU,
    ReLU6, hard-swish, residual add and none."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, 16, 3, 1, 1),                              # first conv, 3 input channels, padded
            _conv(16, 16, 3, 1, 1, groups=16, act="relu6"),     # depthwise 3x3 s1
            _conv(16, 24, 1, act="none"),                       # 1x1, no epilogue
            Residual(nn.Conv2d(24, 24, 3, 1, 2, 2)),            # dilated 3x3 + residual add
            _conv(24, 24, 3, 1, 1, groups=8),                   # grouped (ResNeXt: 3 channels per group)
            _conv(24, 48, 1, groups=3, act="relu6"),            # grouped 1x1 (ShuffleNet)
            _conv(48, 48, 5, 2, 2, groups=48),                  # depthwise 5x5 s2: 20 -> 10
            _conv(48, 40, 1, act="relu6"),                      # 40 output channels (5 AVX2 vectors)
            _conv(40, 40, 7, 2, 3, groups=40),                  # depthwise 7x7 s2: 10 -> 5
            _conv(40, 40, 3, 1, 1, groups=40, act="none"),      # depthwise 3x3 s1 at 5x5
            _conv(40, 10, 3, 2, 1, act="hardswish"),            # strided 3x3, 10 output channels: 5 -> 3
        )

    def forward(self, x):
        return self.body(x)


class GrayAndConv1d(nn.Module):
    """One input channel (Fashion-MNIST's first conv), then keyword-spotting style conv1d over time."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(_conv(1, 8, 3, 1, 1), _conv(8, 16, 3, 2, 1))
        self.a = nn.Conv1d(16, 12, 5, padding=2)
        self.b = nn.Conv1d(12, 12, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x).flatten(2)           # (1, 16, 36)
        return self.b(torch.relu(self.a(y)))


def _conv_kernels(schedules: dict) -> dict[str, str]:
    """conv kernel name -> the rule that scheduled it ("" when unscheduled)."""
    kernels = {name: rule for rule, names in schedules["by_rule"].items() for name in names}
    kernels.update({name: "" for name in schedules["unscheduled"]})
    return {name: rule for name, rule in kernels.items() if "conv" in name}


def _check_against_torch(model, shape, tmp_path):
    """Build for the host and run: the artifact's reference output is torch's (compile_model computes it)."""
    return build_matches_torch(model, shape, tmp_path)


def test_conv2d_variants_match_torch_and_are_scheduled_by_the_conv_rules(tmp_path):
    torch.manual_seed(0)
    artifact = _check_against_torch(ConvVariants().eval(), (1, 3, 20, 20), tmp_path)
    schedules = artifact.manifest["schedules"]
    convs = _conv_kernels(schedules)
    rules = list(convs.values())
    assert rules.count("DepthwiseNHWC") == 4 and rules.count("ConvNHWC") == 7, schedules
    assert schedules["unscheduled"] == []  # the layout transposes at the ends are scheduled too


def test_one_channel_conv_and_conv1d_match_torch_and_are_scheduled(tmp_path):
    torch.manual_seed(0)
    artifact = _check_against_torch(GrayAndConv1d().eval(), (1, 1, 12, 12), tmp_path)
    schedules = artifact.manifest["schedules"]
    convs = _conv_kernels(schedules)
    assert len(convs) == 4 and set(convs.values()) == {"ConvNHWC"}, schedules
    assert schedules["unscheduled"] == []


# ------------------------------------------------------------------------------ coverage per profile

@pytest.fixture(scope="module")
def optimized_graphs():
    """Each zoo and test model after edgekit's graph passes (the same for every llvm target: built once)."""
    from tvm.relax.frontend.torch import from_exported_program

    from edgekit.compile import build
    from edgekit.data import load_zoo_model, zoo_names
    from edgekit.targets import load_target
    from edgekit.testing.models import ARCHITECTURES
    from edgekit.testing.models import build as build_test_model

    models = [(f"zoo:{n}", load_zoo_model(n, pretrained=False).eval(), (1, 1, 28, 28)) for n in zoo_names()]
    models += [(n, *build_test_model(n)) for n in ARCHITECTURES]
    host = build.resolve_tvm_target(load_target("host"))
    graphs = {}
    for name, model, shape in models:
        mod = from_exported_program(torch.export.export(model, (torch.randn(*shape),)),
                                    keep_params_as_input=False, unwrap_unit_return_tuple=True)
        graphs[name] = build.optimize_graph(mod, host)
    return graphs


def _schedule_log(mod, profile_name):
    """The ScheduleLog of a module's kernels for a profile: fusion + the rules, no codegen."""
    from edgekit.compile import build
    from edgekit.compile.schedules import ApplySchedules, ScheduleLog
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.targets import load_target

    tvm = import_tvm()
    target = build.resolve_tvm_target(load_target(profile_name))
    log = ScheduleLog()
    with target:
        tvm.transform.Sequential([*build.lowering_passes(target), ApplySchedules(target, log)])(mod)
    return log


@pytest.mark.slow  # the graph passes of six models (FoldConstant builds every folded weight transpose)
@pytest.mark.parametrize("profile", CPU_PROFILES)
def test_no_conv_family_kernel_of_the_zoo_or_test_models_is_unscheduled(profile, optimized_graphs):
    for name, mod in optimized_graphs.items():
        log = _schedule_log(mod, profile)
        left = [k for k in log.unscheduled if "conv" in k or k.startswith(("transpose", "reshape", "add"))]
        assert left == [], (profile, name, left)
        if name != "transformer":
            assert log.by_rule.get("ConvNHWC"), (profile, name)


# ----------------------------------------------------------------------------------- ARM cross builds

class SmallCNN(nn.Module):
    """A dense 3x3 conv, a depthwise conv and a 1x1 conv: the kernels an edge CNN is made of."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                                  nn.ReLU6(), nn.Conv2d(16, 32, 1), nn.ReLU())

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def arm_artifacts(tmp_path_factory):
    torch.manual_seed(3)
    model = SmallCNN().eval()
    out = tmp_path_factory.mktemp("arm")
    return {p: compile_model(model, p, input_shapes=[(1, 3, 16, 16)], out_dir=out / p)
            for p in ("rpi4", "rpi5", "rpi3-armv7")}


def _functions(disassembly: str) -> dict[str, str]:
    """objdump -d text split per symbol."""
    parts = re.split(r"\n(?=[0-9a-f]+ <[^>]+>:\n)", disassembly)
    out = {}
    for part in parts:
        head = re.match(r"[0-9a-f]+ <([^>]+)>:", part)
        if head:
            out[head.group(1)] = part
    return out


@pytest.mark.parametrize("profile", ["rpi4", "rpi5"])
def test_arm64_conv_kernels_use_neon_vector_fma(profile, arm_artifacts):
    artifact = arm_artifacts[profile]
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(artifact.library_path)], capture_output=True,
                          text=True, check=True).stdout
    conv_functions = {name: body for name, body in _functions(text).items() if "conv" in name}
    assert conv_functions
    kernels = _conv_kernels(artifact.manifest["schedules"])
    assert set(kernels.values()) == {"ConvNHWC", "DepthwiseNHWC"}
    for kernel in kernels:
        bodies = [body for name, body in conv_functions.items() if name.startswith(kernel)]
        assert bodies, kernel
        assert any(re.search(r"\bfmla\s+v\d+\.4s", body) for body in bodies), kernel


def test_armv7_build_links_an_arm_elf_with_every_conv_scheduled(arm_artifacts):
    artifact = arm_artifacts["rpi3-armv7"]
    header = subprocess.run(["readelf", "-h", str(artifact.library_path)], capture_output=True, text=True).stdout
    assert "ELF32" in header and "ARM" in header
    kernels = _conv_kernels(artifact.manifest["schedules"])
    assert kernels and all(kernels.values())


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["rpi4", "rpi5"])
def test_scheduled_arm_build_matches_torch_on_the_emulated_pi(profile, emulated_pi, arm_artifacts, tmp_path,
                                                              capsys):
    from edgekit.cli.main import main

    artifact = arm_artifacts[profile]
    argv = ["deploy", "--artifact", str(artifact.path), "--host", emulated_pi.host_spec, "-i",
            str(emulated_pi.client_key), "--known-hosts", str(emulated_pi.known_hosts), "--no-agent",
            "--warmup", "0", "--repeats", "1", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)["devices"][0]["report"]
    assert report["device"]["machine"] == "aarch64"
    assert report["output_check"]["passed"] and report["output_check"]["max_abs_error"] < 1e-4


# ------------------------------------------------------------------------------------ never a crash

def test_a_rule_that_fails_declines_and_the_kernel_is_named_unscheduled(monkeypatch, tmp_path):
    from edgekit.compile.schedules import _conv_tiling

    def refuse(*_args, **_kwargs):
        raise RuntimeError("a schedule primitive refused this shape")

    monkeypatch.delenv("EDGEKIT_SCHEDULE_DEBUG", raising=False)
    monkeypatch.setattr(_conv_tiling, "choose_tile", refuse)
    torch.manual_seed(0)
    artifact = _check_against_torch(_conv(8, 16, 3, 1, 1).eval(), (1, 8, 6, 6), tmp_path)
    convs = _conv_kernels(artifact.manifest["schedules"])
    assert convs and set(convs.values()) == {""}  # listed as unscheduled, still built and correct


def test_batched_conv_outside_the_rule_shape_is_unscheduled_not_broken(tmp_path):
    torch.manual_seed(0)
    artifact = _check_against_torch(_conv(4, 8, 3, 1, 1).eval(), (2, 4, 6, 6), tmp_path)
    convs = _conv_kernels(artifact.manifest["schedules"])
    assert convs and set(convs.values()) == {""}


def test_tile_choice_never_needs_a_channel_tail():
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.compile.schedules._conv_tiling import ConvKernel, choose_tile
    from edgekit.targets import load_target

    for profile, lanes in (("x86-avx2", 8), ("rpi4", 4)):
        cpu = cpu_info(resolve_tvm_target(load_target(profile)))
        assert cpu.f32_lanes == lanes
        for oc, ow in ((24, 56), (40, 14), (96, 7), (1000, 1), (10, 7), (3, 5), (960, 7), (45, 14), (22, 7)):
            kernel = ConvKernel(None, None, None, [], [1, ow, ow, oc], [3, 3, 16], 16, 0, 0)
            tile = choose_tile(kernel, cpu, depthwise=False)
            assert oc % (tile.lanes * tile.ct) == 0 and ow % tile.tw == 0
            power_of_two = min(lanes, oc & -oc)  # the largest power-of-two vector dividing oc
            # ... unless that is under 4 lanes (a pruned width such as 45 or 22): then the widest vector
            # that divides the channels, 45 = 3 x 15 lanes rather than 45 scalars.
            expected = power_of_two if power_of_two >= 4 else max(d for d in range(1, lanes + 1) if oc % d == 0)
            assert tile.lanes == expected, (profile, oc, tile)


def test_a_pruned_width_off_the_power_of_two_grid_is_vectorized_and_exact(tmp_path):
    """45 output channels (a uniform 6% prune of 48): odd-width vectors, not a scalar kernel 6x slower.
    (Stride 2 keeps the dense conv direct on x86 too; the Winograd path's odd widths: test_winograd.py.)"""
    torch.manual_seed(0)
    model = nn.Sequential(_conv(24, 45, 3, 2, 1), _conv(45, 45, 3, 1, 1, groups=45)).eval()
    artifact = _check_against_torch(model, (1, 24, 14, 14), tmp_path)
    rules = sorted(_conv_kernels(artifact.manifest["schedules"]).values())
    assert rules == ["ConvNHWC", "DepthwiseNHWC"], artifact.manifest["schedules"]


def test_x86_targets_get_their_vector_width():
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.targets import load_target

    assert int(resolve_tvm_target(load_target("x86-avx2")).attrs["vector-width"]) == 256
    assert "vector-width" not in resolve_tvm_target(load_target("rpi4")).attrs
