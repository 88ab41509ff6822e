"""Compile-time weight packing: the numpy evaluation of a prepack function equals TVM running it,
and an int8 build carries the packed weights as constants (no packing kernel runs per call)."""

from __future__ import annotations

import numpy as np


def _packing_func(dtype_out: str):
    """[KH, KW, I, O] -> [O/8, KH, KW, I/4, 8, 4] (the 256-bit VNNI layout), written as TE would."""
    from tvm import te

    weight = te.placeholder((3, 3, 16, 16), "int8", name="w")
    packed = te.compute((2, 3, 3, 4, 8, 4),
                        lambda o, kh, kw, i, ol, ig: weight[kh, kw, i * 4 + ig, o * 8 + ol].astype(dtype_out),
                        name="packed")
    return te.create_prim_func([weight, packed])


def _run_with_tvm(func, source, dtype: str):
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.empty((2, 3, 3, 4, 8, 4), dtype, tvm.cpu())
    lib["main"](tvm.runtime.tensor(source), out)
    return out.numpy()


def test_numpy_evaluation_matches_tvm_running_the_prepack_function():
    from edgekit.compile.weight_prepack import evaluate_prepack

    source = np.random.default_rng(0).integers(-128, 128, size=(3, 3, 16, 16), dtype=np.int8)
    for dtype in ("int8", "int16"):  # int16: the widened weights of the AVX2 and NEON int16-pair paths
        func = _packing_func(dtype)
        got = evaluate_prepack(func, source)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, _run_with_tvm(func, source, dtype))


def test_an_int8_build_packs_its_weights_at_compile_time(tmp_path):
    """The int8 conv kernels take their packed weights as constants: no packing stage is left to run."""
    import torch

    from edgekit.compile import compile_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.run import run_artifact

    class Calibration:
        x = torch.randn(8, 16, 8, 8, generator=torch.Generator().manual_seed(0))

        def batches(self, batch_size):
            yield self.x, None

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 16, 1)).eval()
    quantized = quantize_model(model, Calibration(), QuantizeConfig(calibration_size=8))
    artifact = compile_model(quantized, "host", input_shapes=[(1, 16, 8, 8)], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    assert len(artifact.manifest["schedules"]["by_rule"].get("Int8Conv2D", [])) == 2, artifact.manifest["schedules"]
    result = run_artifact(artifact, warmup=0, repeats=1, kernels=True)
    names = [k["name"] for k in result.to_dict()["kernels"]]
    assert any(n.endswith("_prepacked") for n in names), names
    assert not [n for n in names if "weight_prepack" in n], names
    assert result.output_check["passed"] and result.output_check["max_abs_error"] < 1e-5


def test_a_float_conv_build_streams_blocked_weights_packed_at_compile_time(tmp_path):
    """fp32 convs read their weights as [O/block][KH][KW][I][block] (one register tile's channels contiguous),
    packed into the constants at compile time; the kernels still match torch and map to their modules."""
    import torch

    from edgekit.compile import compile_model
    from edgekit.measure.kernel_sources import PREPACKED_KERNEL_SUFFIX
    from edgekit.run import run_artifact

    torch.manual_seed(0)
    # A deep 3x3 conv at 4x4 (weights outweigh the input: streamed oc-block by oc-block), a 1x1 conv and a
    # grouped conv: every non-depthwise conv the rule tiles gets blocked weights.
    model = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(128, 64, 1), torch.nn.Conv2d(64, 64, 3, padding=1, groups=4)).eval()
    artifact = compile_model(model, "host", input_shapes=[(1, 64, 4, 4)], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    assert len(artifact.manifest["schedules"]["by_rule"].get("ConvNHWC", [])) == 3, artifact.manifest["schedules"]
    result = run_artifact(artifact, warmup=0, repeats=1, kernels=True)
    names = [k["name"] for k in result.to_dict()["kernels"]]
    assert sum(n.endswith(PREPACKED_KERNEL_SUFFIX) for n in names) == 3, names
    assert not [n for n in names if "weight_prepack" in n], names  # no packing left to run per call
    assert result.output_check["passed"] and result.output_check["max_abs_error"] < 1e-4, result.output_check
