"""Per-channel int8 PTQ: bounded weight error, BN folding, calibration, and a compiled TVM artifact."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgekit.compress.quantize import (QuantizeConfig, fold_batchnorm, quantize_model, quantize_weight,
                                       weight_quantization_error)
from edgekit.errors import RecipeError

torch.set_num_threads(1)


def _layer_with_uneven_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.logspace(-3, 0, 16).reshape(-1, 1, 1, 1))  # channel ranges differ 1000x
    return conv


def test_per_channel_error_is_at_most_half_a_step_of_each_channel():
    conv = _layer_with_uneven_channels()
    err, scale = weight_quantization_error(conv, "per_channel")
    assert err.shape == (16,) and scale.shape == (16,)
    assert bool((err <= scale / 2 + 1e-7).all())
    amax = conv.weight.detach().abs().reshape(16, -1).amax(1)
    torch.testing.assert_close(scale, amax / 127)


def test_per_channel_beats_per_tensor_on_small_channels():
    conv = _layer_with_uneven_channels()
    err_c, _ = weight_quantization_error(conv, "per_channel")
    err_t, scale_t = weight_quantization_error(conv, "per_tensor")
    assert bool((err_t <= scale_t / 2 + 1e-7).all())
    assert float(err_c[:4].max()) < float(err_t[:4].max()) / 50  # smallest channels: far more precise


def test_int8_weights_are_int8_and_symmetric():
    q, scale = quantize_weight(_layer_with_uneven_channels().weight, "per_channel")
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127


def test_batchnorm_folding_is_exact_and_removes_the_bn():
    from edgekit.testing.models import build

    model, shape = build("resnet")
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def digits_model():
    """The zoo CNN, trained one epoch on digits (seconds, ~97% test accuracy): a real, non-random model."""
    from edgekit.compress.distill import TrainConfig, train
    from edgekit.data import load_dataset
    from edgekit.data.zoo import build_zoo_model

    torch.manual_seed(0)
    model = build_zoo_model("fmnist-resnet")
    train(model, load_dataset("digits", "train"), config=TrainConfig(epochs=1, lr=3e-3, val_size=0, batch_size=16),
          progress=False)
    return model.eval()


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_quantized_model_keeps_accuracy_and_is_smaller(digits_model, granularity, calibration):
    from edgekit.compress.qlayers import QuantConv2d, QuantLinear
    from edgekit.compress.stats import state_dict_bytes
    from edgekit.data import load_dataset
    from edgekit.evaluate import evaluate

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    q = quantize_model(digits_model, train, QuantizeConfig(granularity=granularity, calibration=calibration,
                                                           calibration_size=256))
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in q.modules())
    assert any(isinstance(m, QuantConv2d) for m in q.modules()) and any(isinstance(m, QuantLinear) for m in q.modules())
    base, quant = evaluate(digits_model, test), evaluate(q, test)
    assert base > 0.9
    assert quant >= base - 0.03
    assert state_dict_bytes(q) < state_dict_bytes(digits_model) / 2.5


def test_activations_sit_on_the_int8_grid(digits_model):
    from edgekit.compress.qlayers import QuantConv2d
    from edgekit.data import load_dataset

    q = quantize_model(digits_model, load_dataset("digits", "train"), QuantizeConfig(calibration_size=128))
    seen = []
    layer = next(m for m in q.modules() if isinstance(m, QuantConv2d))
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(m._quant_act(i[0])[0]))
    q(torch.randn(2, 1, 28, 28))
    hook.remove()
    xq = seen[0]
    assert bool((xq == xq.round()).all()) and float(xq.min()) >= -128 and float(xq.max()) <= 255


@pytest.mark.slow
def test_quantized_model_compiles_with_tvm_and_matches_torch_on_the_artifact(digits_model, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.data import load_dataset
    from edgekit.evaluate import artifact_predictor, evaluate

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    q = quantize_model(digits_model, train, QuantizeConfig(calibration_size=256))
    artifact = compile_model(q, "host", input_shapes=[(32, 1, 28, 28)], out_dir=tmp_path,
                             reference_inputs=[test.x[:32].numpy()], tolerance={"atol": 5e-2, "rtol": 1e-2})
    logits = artifact_predictor(artifact)(test.x[:100].numpy())
    with torch.no_grad():
        expected = q(test.x[:100]).numpy()
    assert abs(logits - expected).max() < 0.1
    assert abs(evaluate(artifact, test) - evaluate(q, test)) <= 0.01


@pytest.mark.parametrize("bad", [{"granularity": "per_group"}, {"calibration": "kl"}, {"percentile": 20.0},
                                 {"bits": 4}, {"calibration_size": 0}])
def test_bad_quantize_options_fail_clearly(bad):
    with pytest.raises(RecipeError, match="quantize"):
        QuantizeConfig(**bad)


def test_layers_that_are_more_than_a_plain_conv_or_linear_quantize_correctly():
    """EfficientNet's static "same" padding is kept in the int8 conv; nn.MultiheadAttention's out_proj
    (read by the attention's functional forward, not called) and a conv with a forward of its own
    stay float, with a warning for the latter; the quantized model stays close to the float one."""
    import warnings

    import torch
    import torch.nn as nn
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    from edgekit.compress.qlayers import QuantConv2d, QuantLinear
    from edgekit.compress.quantize import QuantizeConfig, quantize_model

    class ReflectConv(nn.Conv2d):  # a forward of its own: not a plain convolution
        def forward(self, x):
            return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.same = Conv2dStaticSamePadding(3, 8, 5, stride=2, image_size=16)
            self.dynamic = ReflectConv(8, 8, 3, stride=2)
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.dynamic(torch.relu(self.same(x))))
            tokens = x.flatten(2).transpose(1, 2)
            tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
            return self.head(tokens.mean(1))

    torch.manual_seed(0)
    model = Net().eval()
    calibration = [(torch.randn(4, 3, 16, 16), None)]

    class Data:
        def batches(self, _size):
            return iter(calibration)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_model(model, Data(), QuantizeConfig())
    assert isinstance(quantized.same, QuantConv2d) and isinstance(quantized.head, QuantLinear)
    assert type(quantized.dynamic) is ReflectConv
    assert type(quantized.attention.out_proj) is not QuantLinear
    assert any("dynamic" in str(w.message) and "stays float" in str(w.message) for w in caught)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected, actual = model(x), quantized(x)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max() / expected.abs().max()) < 0.1
