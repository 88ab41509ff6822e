"""Offline data sets and the model zoo (real Fashion-MNIST files, real shipped weights)."""

from __future__ import annotations

import pytest

from edgekit.data import load_dataset, load_zoo_model, zoo_names
from edgekit.errors import DataError


def test_fashion_mnist_test_split_has_10k_normalised_images():
    data = load_dataset("fashion-mnist", "test")
    assert len(data) == 10_000
    assert tuple(data.x.shape) == (10_000, 1, 28, 28)
    assert set(data.y.unique().tolist()) == set(range(10))
    assert abs(float(data.x.mean())) < 0.1 and 0.9 < float(data.x.std()) < 1.1


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", "train")
    assert "dataset-fashion-mnist" in str(exc.value)
    assert exc.value.exit_code == 14


def test_corrupt_idx_file_is_a_data_error(tmp_path, monkeypatch):
    import gzip

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(b"not an idx file")
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="IDX"):
        load_dataset("fashion-mnist", "test")


def test_digits_are_28x28_and_split_without_overlap():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.input_shape == test.input_shape == (1, 28, 28)
    assert len(train) + len(test) == 1797


def test_subset_is_seeded_and_sized():
    data = load_dataset("digits", "train")
    a, b = data.subset(100, seed=3), data.subset(100, seed=3)
    assert len(a) == 100 and bool((a.y == b.y).all())
    assert not bool((a.y == data.subset(100, seed=4).y).all())


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(DataError, match="fashion-mnist, digits"):
        load_dataset("cifar10")


def test_shipped_zoo_cnn_classifies_fashion_mnist():
    from edgekit.data.zoo import zoo_metrics
    from edgekit.evaluate import evaluate

    model = load_zoo_model("fmnist-resnet")
    accuracy = evaluate(model, load_dataset("fashion-mnist", "test", limit=1000))
    assert accuracy > 0.88
    assert zoo_metrics()["fmnist-resnet"]["test_accuracy"] > 0.90  # recorded by tools/train_zoo.py


@pytest.mark.parametrize("name", ["fmnist-resnet", "fmnist-mobilenetv2", "fmnist-resnet-teacher"])
def test_every_zoo_model_builds_and_has_weights_under_a_megabyte(name):
    import torch

    from edgekit.data.zoo import zoo_entry

    assert name in zoo_names()
    model = load_zoo_model(name)
    assert tuple(model(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
    assert zoo_entry(name).weights_path.stat().st_size < 1_000_000


def test_unknown_zoo_model_is_a_data_error():
    with pytest.raises(DataError, match="fmnist-resnet"):
        load_zoo_model("resnet50")
