"""Winograd 3x3 convs on x86 (edgekit.compile.winograd, edgekit.compile.schedules.winograd).

The transform matrices against the direct correlation, which convs the rewrite takes and which
the cost model keeps direct, a real host build of ResNet-style blocks (odd channel width, a map
the tile does not divide, fused epilogues and residual adds) against torch, and ARM builds that
keep direct convs.  Speed: tools/bench_winograd.py and tools/bench_speed.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.compile.winograd import MATRICES, match_winograd_conv, tile_size, transformed_weight
from edgekit.testing.host_check import build_matches_torch


@pytest.mark.parametrize("m", sorted(MATRICES))
def test_the_transforms_compute_the_3x3_correlation_of_a_tile(m):
    bt, _g, at = MATRICES[m]
    rng = np.random.default_rng(m)
    alpha = m + 2
    tile = rng.standard_normal((alpha, alpha, 5))
    weight = rng.standard_normal((3, 3, 5, 7))
    direct = np.array([[np.einsum("uvc,uvck->k", tile[y:y + 3, x:x + 3], weight) for x in range(m)]
                       for y in range(m)])
    u = np.einsum("iu,uvck,jv->ijck", MATRICES[m][1], weight, MATRICES[m][1])
    v = np.einsum("iu,uvc,jv->ijc", bt, tile, bt)
    y = np.einsum("ri,ijk,sj->rsk", at, np.einsum("ijc,ijck->ijk", v, u), at)
    np.testing.assert_allclose(y, direct, rtol=0, atol=1e-10 * np.abs(direct).max())
    # The weight the kernels read is the same U, flattened to [(i, j), C, K] and rounded to float32.
    np.testing.assert_allclose(transformed_weight(weight.astype(np.float32), m).reshape(u.shape), u,
                               rtol=2e-6, atol=2e-6 * np.abs(u).max())


def test_the_cost_model_takes_compute_bound_layers_and_keeps_weight_bound_ones_direct():
    assert tile_size(56, 56, 64, 64) == 4      # ResNet-18 layer1: 4x fewer multiplies
    assert tile_size(15, 15, 32, 45) == 4      # a map F(4x4) does not divide is padded to whole tiles
    assert tile_size(14, 14, 256, 256) == 2    # F(4x4)'s 36/9 larger weights would cost more than it saves
    assert tile_size(7, 7, 512, 512) is None   # 4 tiles reuse a 9.4 MB weight too little: direct
    assert tile_size(2, 2, 64, 64) is None
    assert tile_size(7, 7, 512, 512, n=8) == 4  # a batch of 8 reuses each weight 8 times more


def test_kernel_sources_name_the_conv_of_each_winograd_kernel():
    """The cost card and the optimize loop's latency table link kernels to modules: a Winograd conv's three
    kernels (input transform, GEMM, output transform with its epilogue) all name that conv."""
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.measure.kernel_sources import trace_kernel_sources
    from edgekit.optimize.latency_table import kernels_by_module
    from edgekit.targets import load_target

    program = torch.export.export(_resnet_blocks(), (torch.zeros(1, 3, 16, 16),))
    sources = trace_kernel_sources(program, import_model(program).mod, resolve_tvm_target(load_target("host")))
    winograd = {name: s for name, s in sources.items() if "winograd" in name and not name.endswith("_prepacked")}
    assert {"winograd_input_transform", "winograd_gemm", "winograd_output_transform"} <= {
        op for s in winograd.values() for op in s.ops}
    assert all(s.modules and s.modules[0].endswith(("2", "body.0", "body.3")) for s in winograd.values()), winograd
    gemms = [s for s in winograd.values() if "winograd_gemm" in s.ops]
    assert {s.modules[0] for s in gemms} >= {"2"}  # the 32 -> 45 conv
    # The latency table adds a layer's kernels up: per-call medians and samples.
    kernels = [{"name": "a", "median_ms": 1.0, "samples_ms": [1.0, 2.0]},
               {"name": "b", "median_ms": 0.5, "samples_ms": [0.5, 0.25]},
               {"name": "c", "median_ms": 3.0, "samples_ms": [3.0, 3.0]}]

    class Source:
        def __init__(self, *modules):
            self.modules = list(modules)

    layer = kernels_by_module(kernels, {"a": Source("convs.0"), "b": Source("convs.0", "convs.1"),
                                        "c": Source("convs.1", "bn")})
    assert layer["convs.0"]["median_ms"] == 1.5 and layer["convs.0"]["samples_ms"] == [1.25, 2.5]
    assert layer["convs.1"]["median_ms"] == 3.5 and layer["convs.1"]["name"] == "b+c"


def _conv_call(*, c=32, k=32, hw=16, kernel=3, stride=1, dilation=1, groups=1, layout="NHWC", constant=True):
    from tvm import relax

    shape = (1, hw, hw, c) if layout == "NHWC" else (1, c, hw, hw)
    weight_shape = (kernel, kernel, c // groups, k) if layout == "NHWC" else (k, c // groups, kernel, kernel)
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    weight = (relax.const(np.zeros(weight_shape, "float32")) if constant
              else relax.Var("w", relax.TensorType(weight_shape, "float32")))
    return relax.op.nn.conv2d(x, weight, strides=stride, padding=kernel // 2, dilation=dilation, groups=groups,
                              data_layout=layout, kernel_layout="HWIO" if layout == "NHWC" else "OIHW",
                              out_layout=layout)


def test_only_dense_3x3_stride_1_fp32_nhwc_convs_with_constant_weights_are_taken():
    conv = match_winograd_conv(_conv_call())
    assert conv is not None and (conv.m, conv.tiles, conv.alpha) == (4, 16, 6)
    for refused in (dict(stride=2), dict(dilation=2), dict(groups=2), dict(kernel=1), dict(kernel=5),
                    dict(layout="NCHW"), dict(constant=False), dict(c=8, k=32)):
        assert match_winograd_conv(_conv_call(**refused)) is None, refused


class Block(nn.Module):
    """ResNet's basic block: conv-BN-ReLU, conv-BN, residual add, ReLU."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def _resnet_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 45, 3, padding=1), nn.ReLU(),
                          Block(45), Block(45), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(45, 10))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()




def test_a_batch_of_two_builds_as_winograd_and_matches_torch(tmp_path):
    artifact = build_matches_torch(_resnet_blocks(), (2, 3, 15, 15), tmp_path)
    schedules = artifact.manifest["schedules"]
    assert len(schedules["by_rule"]["WinogradTransform"]) == 4, schedules
    # (the 3-channel stem conv at batch 2 is outside the direct conv rule: named unscheduled, as before)
    assert not any("winograd" in k for k in schedules["unscheduled"]), schedules


def test_resnet_blocks_build_as_winograd_on_the_host_and_match_torch(tmp_path):
    # 15x15: F(4x4) tiles cover 16x16, the last row and column padded
    artifact = build_matches_torch(_resnet_blocks(), (1, 3, 15, 15), tmp_path)
    schedules = artifact.manifest["schedules"]
    assert not schedules["unscheduled"], schedules
    transforms = schedules["by_rule"]["WinogradTransform"]
    inputs = [k for k in transforms if "winograd_input" in k]
    outputs = [k for k in transforms if "winograd_output" in k]
    # One input transform per input width (32, 45); identical kernels are shared, so the five convs'
    # output transforms are two: with the folded BatchNorm bias and ReLU, and with the residual add too.
    assert len(inputs) == 2 and len(outputs) == 2, schedules
    assert any(re.search(r"winograd_output_transform_add\d*_relu", k) for k in outputs), outputs
    assert any(re.search(r"winograd_output_transform_add\d*_add\d*_relu", k) for k in outputs), outputs
    assert len([k for k in schedules["by_rule"]["Matmul"] if k.startswith("winograd_gemm")]) == 2, schedules
    # Only the 3-channel stem stays a direct conv (too few channels to pay for the transforms).
    direct = [k for rule, names in schedules["by_rule"].items() for k in names if "conv2d" in k]
    assert len(direct) == 1, schedules


def test_arm_builds_and_winograd_off_keep_direct_convs():
    from edgekit.compile import build
    from edgekit.compile.frontend import import_model
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.targets import load_target

    tvm = import_tvm()
    imported = import_model(_resnet_blocks(), input_shapes=[(1, 3, 16, 16)])

    def kernels(profile, **options):
        target = build.resolve_tvm_target(load_target(profile))
        mod = build.optimize_graph(imported.mod, target, **options)
        with target:
            mod = tvm.transform.Sequential(build.lowering_passes(target))(mod)
        return [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]

    assert any("winograd" in k for k in kernels("host"))
    for profile, options in (("rpi4", {}), ("rpi5", {}), ("host", {"winograd": False})):
        names = kernels(profile, **options)
        assert not any("winograd" in k for k in names), (profile, names)
        assert sum("conv2d" in k for k in names) == 4, (profile, names)  # 6 convs, identical kernels shared
