"""Structured pruning keeps every architecture runnable, smaller, and exact where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.compress.prune import (PruneConfig, SparsifyConfig, dependency_groups, prune_model,
                                    sparsify_model)
from edgekit.compress.stats import count_params, sparsity_ratio
from edgekit.errors import RecipeError, UnsupportedOperatorError

torch.set_num_threads(1)


class ConcatGrouped(nn.Module):
    """Residual add, depthwise conv, channel concat, a grouped conv, and a Linear after view()."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        y = F.relu(self.b2(self.c2(x))) + x
        z = self.grouped(torch.cat([y, self.dw(y)], 1))
        z = self.c3(F.max_pool2d(z, 2))
        return self.fc(z.view(z.size(0), -1))


class ConcatBranches(nn.Module):
    """Two convs concatenated, then BN + depthwise over the concat, then flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.dw = nn.Conv2d(20, 20, 3, padding=1, groups=20)
        self.fc = nn.Linear(20 * 14 * 14, 10)

    def forward(self, x):
        z = self.dw(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(torch.flatten(F.avg_pool2d(z, 2), 1))


def _models():
    """(name, model, input shape): the compile tests' architecture set, the zoo, and our concat models."""
    from edgekit.data.zoo import build_zoo_model
    from edgekit.testing.models import ARCHITECTURES, build

    out = [(f"testing:{a}", *build(a)) for a in ARCHITECTURES]
    torch.manual_seed(0)
    out += [("zoo:fmnist-resnet", build_zoo_model("fmnist-resnet").eval(), (1, 1, 28, 28)),
            ("zoo:fmnist-mobilenetv2", build_zoo_model("fmnist-mobilenetv2").eval(), (1, 1, 28, 28)),
            ("concat-grouped", ConcatGrouped().eval(), (1, 1, 28, 28)),
            ("concat-branches", ConcatBranches().eval(), (1, 1, 28, 28))]
    return out


MODELS = _models()


@pytest.mark.parametrize("name,model,shape", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_pruned_model_runs_with_the_same_output_shape_and_fewer_params(name, model, shape, ratio):
    result = prune_model(model, PruneConfig(ratio=ratio), input_shape=shape)
    x = torch.randn(3, *shape[1:])
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    assert result.params_after < result.params_before
    assert result.removed, "something must have been pruned"
    assert count_params(model) == result.params_before  # the original is untouched


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_param_count_falls_as_asked_on_a_plain_cnn(ratio):
    """Coupled 3x3 convs: keeping (1-r) of in and out channels keeps about (1-r)^2 of their weights."""
    from edgekit.data.zoo import build_zoo_model

    model = build_zoo_model("fmnist-resnet")
    result = prune_model(model, PruneConfig(ratio=ratio))
    expected = (1 - ratio) ** 2
    assert abs(result.params_ratio - expected) < 0.06, (result.params_ratio, expected)
    for group in result.groups:
        if not group.frozen:
            assert group.channels == 24 - int(ratio * 24) or group.channels == 48 - int(ratio * 48)


def test_residual_add_couples_the_stem_and_both_blocks():
    from edgekit.testing.models import build

    model, shape = build("resnet")
    groups = {g.name: g for g in dependency_groups(model, input_shape=shape)}
    stem = groups["stem.0"]
    assert {"stem.0:conv_out", "layer1.conv2:conv_out", "layer1.bn2:bn", "layer2.conv1:conv_in",
            "layer2.shortcut.0:conv_in"} <= set(stem.members)


def test_transformer_prunes_only_the_mlp_width_and_freezes_the_attention():
    from edgekit.testing.models import build

    model, shape = build("transformer")
    result = prune_model(model, PruneConfig(ratio=0.5), input_shape=shape)
    assert result.removed == {"mlp.0": 128}
    assert result.model.mlp[0].out_features == 128 and result.model.mlp[2].in_features == 128
    frozen = {g.name: g.why_frozen for g in result.groups if g.frozen}
    assert "qkv" in frozen and "reshape" in frozen["qkv"]


def test_grouped_conv_freezes_its_channels_and_depthwise_follows_its_input():
    groups = {g.name: g for g in dependency_groups(ConcatGrouped())}
    assert groups["c1"].frozen and "grouped conv" in groups["c1"].why_frozen
    assert "dw:dwconv" in groups["c1"].members
    assert not groups["c3"].frozen and "fc:linear_in" in groups["c3"].members


def test_concat_then_flatten_slices_the_linear_per_channel_block():
    model = ConcatBranches().eval()
    result = prune_model(model, PruneConfig(ratio=0.5))
    pruned = result.model
    assert pruned.a.out_channels == 4 and pruned.b.out_channels == 6
    assert pruned.dw.groups == pruned.dw.out_channels == 10
    assert pruned.fc.in_features == 10 * 14 * 14


def _zero_channels(model, group_bns, keep_every=2):
    """Zero BN gamma/beta of every other channel in a coupled group: those channels output exactly 0."""
    with torch.no_grad():
        for bn in group_bns:
            bn.weight[1::keep_every] = 0.0
            bn.bias[1::keep_every] = 0.0


def test_removing_dead_channels_is_exact():
    """Channels whose BN output is identically zero are found by bn_scale and removed without changing outputs."""
    from edgekit.data.zoo import build_zoo_model

    torch.manual_seed(0)
    model = build_zoo_model("fmnist-resnet").eval()
    for g in dependency_groups(model):
        if not g.frozen:
            _zero_channels(model, [model.get_submodule(m.split(":")[0]) for m in g.members if m.endswith(":bn")])
    result = prune_model(model, PruneConfig(ratio=0.5, importance="bn_scale"))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_every_importance_criterion_prunes(importance):
    from edgekit.testing.models import build

    model, shape = build("mobilenetv2")
    assert prune_model(model, PruneConfig(ratio=0.5, importance=importance), input_shape=shape).removed


def test_excluded_layers_keep_their_channels_and_layer_ratios_apply():
    from edgekit.data.zoo import build_zoo_model

    model = build_zoo_model("fmnist-resnet")
    result = prune_model(model, PruneConfig(ratio=0.5, exclude=("layer1.conv1.0",),
                                            layer_ratios={"layer2.1.conv1.0": 0.25}))
    assert result.model.layer1.conv1[0].out_channels == 24
    assert result.model.layer2[1].conv1[0].out_channels == 36
    assert result.model.layer2[0].conv1[0].out_channels == 24


def test_global_ranking_removes_the_asked_share_of_all_channels():
    from edgekit.data.zoo import build_zoo_model

    model = build_zoo_model("fmnist-resnet")
    result = prune_model(model, PruneConfig(ratio=0.5, global_ranking=True))
    total = sum(g.channels for g in result.groups if not g.frozen)
    assert total == 192 - 96
    assert all(g.channels >= 3 for g in result.groups)  # max_group_ratio keeps every layer alive


def test_round_to_keeps_channel_counts_multiples():
    from edgekit.data.zoo import build_zoo_model

    result = prune_model(build_zoo_model("fmnist-resnet"), PruneConfig(ratio=0.3, round_to=8))
    assert all(g.channels % 8 == 0 for g in result.groups if not g.frozen)


@pytest.mark.parametrize("bad", [{"ratio": 1.5}, {"ratio": -0.1}, {"importance": "taylor"},
                                 {"layer_ratios": {"fc": 1.0}}, {"round_to": 0},
                                 {"global_ranking": True, "layer_ratios": {"fc": 0.5}}])
def test_bad_prune_options_fail_clearly(bad):
    with pytest.raises(RecipeError):
        PruneConfig(**bad)


def test_unknown_excluded_layer_is_reported_with_the_layer_names():
    from edgekit.data.zoo import build_zoo_model

    with pytest.raises(RecipeError, match="no layer matches 'conv9'"):
        prune_model(build_zoo_model("fmnist-resnet"), PruneConfig(ratio=0.5, exclude=("conv9",)))


def test_untraceable_model_fails_with_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(UnsupportedOperatorError, match="torch.fx"):
        prune_model(DataDependent(), PruneConfig(ratio=0.5))


def test_unstructured_sparsity_zeroes_weights_but_keeps_shapes():
    from edgekit.data.zoo import build_zoo_model

    model = build_zoo_model("fmnist-resnet")
    sparse = sparsify_model(model, SparsifyConfig(sparsity=0.6))
    assert count_params(sparse) == count_params(model)
    assert abs(sparsity_ratio(sparse) - 0.6) < 0.01
    layer = sparsify_model(model, SparsifyConfig(sparsity=0.5, scope="layer"))
    assert abs(float((layer.fc.weight == 0).float().mean()) - 0.5) < 0.01


def test_pruned_zoo_model_compiles_with_tvm_and_keeps_its_accuracy(tmp_path):
    """The pruned model is an ordinary dense model: compile_model takes it, and its artifact agrees with torch."""
    from edgekit.compile import compile_model
    from edgekit.data import load_dataset, load_zoo_model
    from edgekit.evaluate import evaluate

    model = load_zoo_model("fmnist-resnet")
    pruned = prune_model(model, PruneConfig(ratio=0.3)).model
    test = load_dataset("fashion-mnist", "test", limit=200)
    artifact = compile_model(pruned, "host", input_shapes=[(1, 1, 28, 28)], out_dir=tmp_path)
    assert tuple(artifact.inputs[0].shape) == (1, 1, 28, 28)
    assert abs(evaluate(artifact, test) - evaluate(pruned, test)) <= 0.005  # at most one borderline image
