"""Graph rewrites before TVM's pipeline: explicit zero pads become the next conv's padding (float and int8),
the built kernels match torch, and no pad kernel is left to run."""

from __future__ import annotations

import pytest


def _padded_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    # TF "SAME" padding as EfficientNet-Lite writes it (asymmetric, before a strided depthwise conv),
    # a symmetric pad before a dense conv that has padding of its own, and a pad no conv follows.
    return nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU6(), nn.ZeroPad2d((0, 1, 0, 1)),
                         nn.Conv2d(16, 16, 3, stride=2, groups=16), nn.ZeroPad2d(1), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.ZeroPad2d((2, 0, 0, 0))).eval()


SHAPE = (1, 16, 12, 12)


class _Calibration:
    def __init__(self):
        import torch

        self.x = torch.randn(8, *SHAPE[1:], generator=torch.Generator().manual_seed(0))

    def batches(self, batch_size):
        yield self.x, None


def _pads_in(mod) -> int:
    return mod["main"].script().count("R.nn.pad(")


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
def test_zero_pads_become_conv_padding_and_the_build_matches_torch(quantized, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.compile.frontend import import_model
    from edgekit.compile.graph_passes import explicit_pads_into_convs
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.run import run_artifact

    model = _padded_net()
    if quantized:
        model = quantize_model(model, _Calibration(), QuantizeConfig(calibration_size=8))
    imported = import_model(model, input_shapes=[SHAPE], frontend="torch.export")
    assert _pads_in(imported.mod) == 3
    rewritten = explicit_pads_into_convs()(imported.mod)
    assert _pads_in(rewritten) == 1, "the pad no conv follows stays"
    assert "padding=[0, 0, 1, 1]" in rewritten["main"].script()  # (top, left, bottom, right) of the SAME pad
    assert "padding=[2, 2, 2, 2]" in rewritten["main"].script()  # its own 1 plus the explicit 1

    artifact = compile_model(model, "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    result = run_artifact(artifact, warmup=0, repeats=1, kernels=True)
    assert result.output_check["passed"] and result.output_check["max_abs_error"] < 1e-5, result.output_check
    kernels = [k["name"] for k in result.to_dict()["kernels"]]
    assert sum("pad" in name and "conv2d" not in name and "prepack" not in name for name in kernels) <= 1, kernels
    if quantized:
        assert len(artifact.manifest["schedules"]["by_rule"].get("Int8Conv2D", [])) == 2


class _MaskedAttentionScores:
    """softmax(q k^T / 4 + mask) over 37 keys (off every vector grid: 37 is prime), some keys masked with -inf."""

    TOKENS = 37

    @staticmethod
    def build():
        import torch

        class Scores(torch.nn.Module):
            def __init__(self):
                super().__init__()
                mask = torch.zeros(_MaskedAttentionScores.TOKENS, _MaskedAttentionScores.TOKENS)
                mask[::3, -5:] = float("-inf")  # padding keys, as a key-padding mask writes them
                self.register_buffer("mask", mask)

            def forward(self, x):
                return torch.softmax(x @ x.transpose(-1, -2) / 4 + self.mask, dim=-1)

        return Scores().eval()


def test_softmax_rows_off_the_vector_grid_are_padded_with_minus_inf_and_match_torch(tmp_path):
    import torch

    from edgekit.compile import compile_model
    from edgekit.compile.frontend import import_model
    from edgekit.compile.graph_passes import softmax_rows_on_the_vector_grid
    from edgekit.run import run_artifact

    tokens = _MaskedAttentionScores.TOKENS
    model = _MaskedAttentionScores.build()
    imported = import_model(model, input_shapes=[(1, tokens, 16)], frontend="torch.export")
    script = softmax_rows_on_the_vector_grid(16)(imported.mod)["main"].script()
    assert f"R.Tensor((1, {tokens}, 48)" in script and 'pad_value="-inf"' in script, script
    assert "R.strided_slice(" in script
    # Rows already on the grid, or too short to vectorize, are left alone.
    assert "R.nn.pad(" not in softmax_rows_on_the_vector_grid(37)(imported.mod)["main"].script()
    assert "R.nn.pad(" not in softmax_rows_on_the_vector_grid(32)(imported.mod)["main"].script()

    artifact = compile_model(model, "host", input_shapes=[(1, tokens, 16)], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    softmax_kernels = [k for k in artifact.manifest["schedules"]["by_rule"].get("RowReduction", []) if "softmax" in k]
    assert softmax_kernels, artifact.manifest["schedules"]
    result = run_artifact(artifact, warmup=0, repeats=1)
    assert result.output_check["passed"] and result.output_check["max_abs_error"] < 1e-6, result.output_check
    assert torch.isinf(model.mask).any()  # the masked keys really were -inf, and came out as 0


def test_gelu_between_two_linears_becomes_the_first_ones_epilogue(tmp_path):
    """Linear -> GELU -> Linear on [1, tokens, C] (a transformer MLP): the GELU leaves its reshape pair and fuses
    into the first matmul's kernel; the build matches torch."""
    import torch
    from torch import nn

    from edgekit.compile import compile_model
    from edgekit.compile.frontend import import_model
    from edgekit.compile.graph_passes import elementwise_out_of_reshape_pairs
    from edgekit.run import run_artifact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.SiLU(), nn.Flatten(0, 1)).eval()
    shape = (1, 12, 32)
    imported = import_model(model, input_shapes=[shape], frontend="torch.export").mod
    before, after = imported["main"].script(), elementwise_out_of_reshape_pairs()(imported)["main"].script()
    assert before.count("R.reshape(") - after.count("R.reshape(") == 2, after  # GELU's pair; x * sigmoid(x) is no unary op
    gelu = next(line for line in after.splitlines() if "R.nn.gelu(" in line)
    assert "(12, 64)" in gelu, gelu  # applied to the 2-D matmul output, not to a reshape of it

    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=tmp_path, tuning=False,
                             frontend="torch.export")
    result = run_artifact(artifact, warmup=0, repeats=1, kernels=True)
    assert result.output_check["passed"] and result.output_check["max_abs_error"] < 1e-5, result.output_check
    kernels = [k["name"] for k in result.to_dict()["kernels"]]
    assert any("matmul" in name and "gelu" in name for name in kernels), kernels
