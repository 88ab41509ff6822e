"""User data (issue 11, part 3): image folders, .npz files and factories become train/val/test Datasets.

Real data only: the image folders are Fashion-MNIST test images written as RGB PNG files by Pillow
(edgekit.testing.user_project), the regression set is scikit-learn's bundled diabetes data.  Each test runs in
seconds: small folders, models trained for a second or two.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgekit.errors import DataError


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """An image folder (3 classes x 100 RGB 64x64 PNGs), the user's package, and its model trained on the folder."""
    import sys

    import torch

    from edgekit.data.user_data import load_data
    from edgekit.testing.user_project import train_user_model, write_image_folder, write_user_package

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("userdata")
    images = write_image_folder(base / "images")
    write_user_package(base / "project")
    sys.path.insert(0, str(base / "project"))
    from userpkg.models import make_model

    splits = load_data(images, input_shape=(1, 3, 32, 32))
    model = train_user_model(make_model(), splits)
    yield {"base": base, "images": images, "splits": splits, "model": model}
    sys.path.remove(str(base / "project"))
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    from edgekit.testing.user_project import write_diabetes_npz

    return write_diabetes_npz(tmp_path_factory.mktemp("diabetes") / "diabetes.npz")


# ---------------------------------------------------------------- image folders


def test_image_folder_labels_are_sorted_class_names_and_the_size_follows_the_model(project):
    from PIL import Image

    splits = project["splits"]
    assert splits.train.classes == ("bag", "trouser", "tshirt")
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.test.x.shape[1:] == (3, 32, 32)
    assert len(splits.train) == 240 and len(splits.test) == 60  # 20% of each class held out
    assert np.bincount(splits.test.y.numpy()).tolist() == [20, 20, 20]
    # normalised with the training images' own per-channel mean and std, recorded for the report
    x = splits.train.x.numpy()
    assert np.allclose(x.mean((0, 2, 3)), 0, atol=1e-4) and np.allclose(x.std((0, 2, 3)), 1, atol=1e-3)
    info = splits.describe()
    assert info["form"] == "image-folder" and info["size"] == [32, 32] and len(info["mean"]) == 3
    # one image by hand: Pillow's bilinear resize of the file, scaled and normalised with the recorded numbers
    first = sorted((project["images"] / "bag").iterdir())
    mean, std = np.array(info["mean"]), np.array(info["std"])
    decoded = [(np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)) / 255.0
                - mean) / std for p in first]
    bags = np.concatenate([splits.train.x[splits.train.y == 0].numpy(), splits.test.x[splits.test.y == 0].numpy()])
    assert min(np.abs(bags - decoded[0].transpose(2, 0, 1)).max(axis=(1, 2, 3))) < 1e-3


def test_image_options_resize_crop_gray_and_normalise(project):
    from PIL import Image

    from edgekit.data.image_folder import ImageOptions
    from edgekit.data.user_data import load_data

    options = ImageOptions(size=(24, 20), resize=40, channels=1, mean=(0.5,), std=(0.25,))
    splits = load_data(project["images"], image_options=options)
    assert splits.train.x.shape[1:] == (1, 24, 20)
    path = sorted((project["images"] / "trouser").iterdir())[0]
    pic = Image.open(path).resize((40, 40), Image.Resampling.BILINEAR).crop((10, 8, 30, 32)).convert("L")
    expected = (np.asarray(pic) / 255.0 - 0.5) / 0.25
    trousers = np.concatenate([d.x[d.y == 1].numpy()[:, 0] for d in (splits.train, splits.test)])
    assert min(np.abs(trousers - expected).max(axis=(1, 2))) < 1e-3
    assert splits.describe()["mean"] == [0.5] and splits.describe()["channels"] == 1


def test_image_folder_defaults_come_from_the_images_and_the_models_first_layer(project, tmp_path):
    from edgekit.data.user_data import load_data
    from edgekit.testing.user_project import write_image_folder

    gray = load_data(project["images"], input_shape=(1,))  # a channels-only hint: the model's first conv
    assert gray.train.x.shape[1:] == (1, 64, 64)
    native = load_data(project["images"], model=project["model"])  # RGB first conv, size from the files
    assert native.train.x.shape[1:] == (3, 64, 64)
    given = write_image_folder(tmp_path / "split", per_class=10, size=40, ext=".jpg", splits=True)
    splits = load_data(given)
    assert (len(splits.train), len(splits.test)) == (24, 6)  # train/ and test/ folders as given
    assert splits.train.x.shape[1:] == (3, 40, 40) and splits.describe()["splits"] == ["test", "train"]


# ---------------------------------------------------------------- .npz and factories


def test_npz_splits_are_used_as_given_and_a_lone_val_is_the_test_set(project, tmp_path):
    from edgekit.data.user_data import load_data

    s = project["splits"]
    x, y = s.train.x.numpy(), s.train.y.numpy()
    full = tmp_path / "full.npz"
    np.savez(full, x=x[:200], y=y[:200], x_val=x[200:220], y_val=y[200:220], x_test=s.test.x.numpy(),
             y_test=s.test.y.numpy())
    splits = load_data(full)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (200, 20, 60)
    assert splits.train.is_classification and splits.train.x.dtype.is_floating_point
    lone = tmp_path / "val.npz"
    np.savez(lone, x=x[:200], y=y[:200], x_val=x[200:], y_val=y[200:])
    splits = load_data(lone)
    assert splits.val is None and len(splits.test) == 40
    only = tmp_path / "only.npz"
    np.savez(only, x=x, y=y)
    splits = load_data(only)
    assert (len(splits.train), len(splits.test)) == (192, 48) and "held out" in splits.test.split


@pytest.mark.parametrize("factory, sizes", [("dataset", (192, 48)), ("pair", (240, 60)), ("loaders", (240, 60))])
def test_factory_returning_a_dataset_a_pair_or_dataloaders(project, tmp_path, factory, sizes):
    import userpkg.data

    from edgekit.data.user_data import load_data

    s = project["splits"]
    userpkg.data.NPZ = tmp_path / "d.npz"
    np.savez(userpkg.data.NPZ, x=s.train.x.numpy(), y=s.train.y.numpy(), x_test=s.test.x.numpy(),
             y_test=s.test.y.numpy())
    splits = load_data(f"userpkg.data:{factory}")
    assert (len(splits.train), len(splits.test)) == sizes
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.train.y.dtype.is_floating_point is False
    if factory == "pair":  # the pair's second set is the evaluation set, in order
        assert np.array_equal(splits.test.y.numpy(), s.test.y.numpy())


# ---------------------------------------------------------------- bad data: DataError (exit 14), saying what and where


def _corrupt_png(root):
    (root / "bag" / "0000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return "cannot decode image"


def _truncated_png(root):
    path = sorted((root / "trouser").iterdir())[0]
    path.write_bytes(path.read_bytes()[:120])
    return f"cannot decode image .*{path.name}"


def _empty_class(root):
    (root / "coat").mkdir()
    return r"class folder\(s\) with no images .*: coat"


@pytest.mark.parametrize("damage", [_corrupt_png, _truncated_png, _empty_class])
def test_damaged_image_folders_name_the_file_or_folder(tmp_path, damage):
    from edgekit.data.user_data import load_data
    from edgekit.testing.user_project import write_image_folder

    root = write_image_folder(tmp_path / "images", per_class=4, size=32)
    expected = damage(root)
    with pytest.raises(DataError, match=expected) as info:
        load_data(root)
    assert info.value.exit_code == 14 and str(root) in str(info.value)


def test_empty_folder_npz_problems_and_unknown_forms_are_data_errors(tmp_path):
    from edgekit.data.user_data import load_data

    (tmp_path / "empty").mkdir()
    cases = {str(tmp_path / "empty"): "has no class subfolders", "nosuch/dir": "data not found",
             "no-such-set": "unknown data set"}
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 3)))
    cases[str(tmp_path / "noy.npz")] = "lacks the array"
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 3)), y=np.zeros(3, dtype=np.int64))
    cases[str(tmp_path / "short.npz")] = "4 inputs but 3 targets"
    np.savez(tmp_path / "nan.npz", x=np.full((4, 3), np.nan), y=np.zeros(4, dtype=np.int64))
    cases[str(tmp_path / "nan.npz")] = "NaN"
    np.savez(tmp_path / "half.npz", x=np.zeros((4, 3)), y=np.zeros(4, dtype=np.int64), x_test=np.zeros((2, 3)))
    cases[str(tmp_path / "half.npz")] = "has x_test but not y_test"
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 3)), y=np.zeros(0, dtype=np.int64))
    cases[str(tmp_path / "none.npz")] = "is empty"
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    cases[str(tmp_path / "bad.npz")] = "cannot read"
    for spec, expected in cases.items():
        with pytest.raises(DataError, match=expected):
            load_data(spec)


def test_factory_returning_junk_is_a_data_error(project):
    from edgekit.data.user_data import load_data

    with pytest.raises(DataError, match="returned a int"):
        load_data("userpkg.data:junk")
    with pytest.raises(DataError, match="cannot load data factory 'userpkg.data:nothing'"):
        load_data("userpkg.data:nothing")


def test_data_the_model_refuses_or_labels_out_of_range_are_data_errors(project):
    import userpkg.models

    from edgekit.data.data_checks import check_fits
    from edgekit.data.image_folder import ImageOptions
    from edgekit.data.user_data import load_data

    gray = load_data(project["images"], image_options=ImageOptions(channels=1, size=(32, 32)))
    with pytest.raises(DataError, match=r"refuses the inputs .* shape \(1, 32, 32\)") as info:
        check_fits(project["model"], gray)
    assert "--image-size" in str(info.value) and "--channels" in str(info.value)
    with pytest.raises(DataError, match=r"labels out of range: .* 3 class folders, the model outputs 2 class scores"):
        check_fits(userpkg.models.make_two_class_model(), project["splits"])
    check_fits(project["model"], project["splits"])  # the right model passes


# ---------------------------------------------------------------- scoring, distillation, warnings


def test_metric_hook_scores_every_step_of_compress(project):
    import userpkg.metrics

    from edgekit.compress import compress_model, recipe_from_toml
    from edgekit.data.metrics import top1
    from edgekit.evaluate import model_outputs

    userpkg.metrics.CALLS.clear()
    recipe = recipe_from_toml('[[steps]]\nkind = "prune"\nratio = 0.25\n')
    result = compress_model(project["model"], recipe, project["images"], input_shape=(1, 3, 32, 32),
                            metric="userpkg.metrics:balanced_accuracy", progress=False)
    report = result.report.to_dict()
    assert report["data"]["metric"] == "userpkg.metrics:balanced_accuracy"
    # Before and after the step, on the test split, and the near-chance check's constant guesses
    # (edgekit.data.data_checks.near_chance scores them with the same metric).
    assert [c["examples"] for c in userpkg.metrics.CALLS] == [60, 60, 60, 60]
    assert report["before"]["accuracy"] in [round(c["value"], 4) for c in userpkg.metrics.CALLS]
    test = project["splits"].test
    assert report["before"]["accuracy"] == round(top1(model_outputs(project["model"], test), test.y), 4)  # balanced


def test_regression_distillation_uses_mse_on_any_output(diabetes, project, monkeypatch):
    import torch
    import torch.nn.functional as F
    import userpkg.models

    from edgekit.compress import compress_model, recipe_from_toml
    from edgekit.compress.distill import distillation_loss
    from edgekit.data.user_data import load_data
    from edgekit.testing.user_project import train_user_model

    s, t, y = torch.randn(8, 1), torch.randn(8, 1), torch.randn(8)
    expected = 0.7 * F.mse_loss(s, t) + 0.3 * F.mse_loss(s, y.reshape(8, 1))
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=4.0, alpha=0.7), expected)
    pair = (torch.randn(8, 1), torch.randn(8, 4))  # several outputs: each matched to the teacher's
    teacher = (torch.randn(8, 1), torch.randn(8, 4))
    torch.testing.assert_close(distillation_loss(pair, teacher, y, temperature=4.0, alpha=1.0),
                               F.mse_loss(pair[0], teacher[0]) + F.mse_loss(pair[1], teacher[1]))

    splits = load_data(diabetes)
    model = train_user_model(userpkg.models.make_regressor(), splits, epochs=30)
    used = []
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: pytest.fail("cross-entropy on regression targets"))
    monkeypatch.setattr(F, "kl_div", lambda *a, **k: pytest.fail("KL on regression outputs"))
    real_mse = F.mse_loss
    monkeypatch.setattr(F, "mse_loss", lambda *a, **k: used.append(1) or real_mse(*a, **k))
    recipe = recipe_from_toml('[[steps]]\nkind = "prune"\nratio = 0.5\n\n[[steps]]\nkind = "distill"\nepochs = 5\n'
                              'lr = 0.005\nbatch_size = 32\nval_size = 0\n')
    report = compress_model(model, recipe, str(diabetes), progress=False).report.to_dict()
    assert report["data"]["metric"] == "r2" and report["data"]["task"] == "regression"
    pruned, distilled = (step["accuracy"] for step in report["steps"])
    assert used and distilled > pruned  # R^2 back up after distilling the pruned model with MSE
    assert report["before"]["accuracy"] > 0.1  # a trained regressor, no near-chance warning needed


def test_compressed_model_input_shape_follows_the_data(project, tmp_path):
    import torch

    from edgekit.compress import compress_model, recipe_from_toml

    recipe = recipe_from_toml('[[steps]]\nkind = "prune"\nratio = 0.25\n')
    result = compress_model(project["model"], recipe, project["images"], image_options=None,
                            input_shape=None, out_dir=tmp_path / "out", progress=False)
    assert result.input_shape == (1, 3, 64, 64)  # the images' size: this model takes any
    program = torch.export.load(str(tmp_path / "out" / "model.pt2"))
    assert tuple(program.example_inputs[0][0].shape) == (1, 3, 64, 64)
    assert np.load(tmp_path / "out" / "reference_input.npy").shape == (1, 3, 64, 64)


def test_near_chance_baseline_is_a_warning_that_says_so(project):
    import userpkg.models

    from edgekit.compress import compress_model, recipe_from_toml
    from edgekit.data.data_checks import DataWarning, near_chance

    untrained = userpkg.models.make_model()
    recipe = recipe_from_toml('[[steps]]\nkind = "prune"\nratio = 0.25\n')
    with pytest.warns(DataWarning, match=r"near chance \(0\.333"):
        result = compress_model(untrained, recipe, project["images"], input_shape=(1, 3, 32, 32), progress=False)
    assert "near chance" in result.report.to_dict()["data"]["warnings"][0]
    assert near_chance(project["model"], project["splits"].test, source="images") is None


def test_near_chance_uses_a_custom_metric(project):
    """With --metric, chance is what that metric gives a constant guess (the most common class every time)."""
    import dataclasses

    import userpkg.metrics
    import userpkg.models

    from edgekit.data.data_checks import near_chance

    test = dataclasses.replace(project["splits"].test, metric=userpkg.metrics.balanced_accuracy)
    untrained = userpkg.models.make_model()
    warning = near_chance(untrained, test, source="images")
    assert re.search(r"by the metric userpkg\.metrics:balanced_accuracy is 0\.\d+, near chance \(0\.333: that "
                     r"metric for always answering the most common class, over 60 examples\)", warning), warning
    assert near_chance(project["model"], test, source="images") is None

    def negated_top1(outputs, targets):  # higher is better, but a trained model scores low: the metric decides
        return -float((outputs.argmax(1) == targets).float().mean())

    assert "near chance (-0.333" in near_chance(project["model"], dataclasses.replace(test, metric=negated_top1),
                                                source="images")


def test_near_chance_says_when_a_custom_metric_has_no_known_chance_level(project):
    """A metric that cannot score a constant guess (here: one that takes strictly positive probabilities, which
    a one-hot guess is not) leaves chance unknown, and the warning says so rather than guessing."""
    import dataclasses

    import torch

    from edgekit.data.data_checks import near_chance

    def log_likelihood(probabilities, targets):
        if not bool((probabilities > 0).all()):
            raise ValueError("outputs must be probabilities above 0")
        return float(probabilities[torch.arange(len(targets)), targets].log().mean())

    test = dataclasses.replace(project["splits"].test, metric=log_likelihood)
    with_softmax = torch.nn.Sequential(project["model"], torch.nn.Softmax(dim=1)).eval()
    warning = near_chance(with_softmax, test, source="images")
    assert warning.startswith("the chance level of the metric ") and "is unknown" in warning, warning
    assert "ValueError: outputs must be probabilities above 0" in warning and "not checked against guessing" in warning


def test_compile_model_chains_onto_compress_model_in_the_api(project, tmp_path):
    """compile_model(compress_model(...)): the compressed user model compiles at the data's input shape,
    with its int8 layers as integer kernels, and the artifact passes its output check."""
    import re

    from edgekit.compile import compile_model
    from edgekit.compress import compress_model, recipe_from_toml
    from edgekit.run import run_artifact

    recipe = recipe_from_toml('[[steps]]\nkind = "prune"\nratio = 0.25\n\n[[steps]]\nkind = "quantize"\n')
    compressed = compress_model(project["model"], recipe, project["images"], input_shape=(1, 3, 32, 32),
                                progress=False)
    artifact = compile_model(compressed, "host", out_dir=tmp_path, tuning=False)
    assert artifact.manifest["inputs"][0]["shape"] == [1, 3, 32, 32]
    # Integer convs (int8 in, int32 sums, then the float requantize: "conv2d_cast" kernels); a pruned width
    # that the dot-product group does not divide runs on the widened-load conv rule, still in integers.
    kernels = [k for names in artifact.manifest["schedules"]["by_rule"].values() for k in names]
    assert any(re.match(r"fused_conv2d\d*_cast", k) for k in kernels), artifact.manifest["schedules"]
    assert run_artifact(artifact, warmup=0, repeats=2).output_check["passed"]
