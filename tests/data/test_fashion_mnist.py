"""Fashion-MNIST loader (reads the Debian package files) and the sklearn digits helper."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from secinfer.data import FMNIST_MEAN, FMNIST_STD, FashionMNISTMissing, load, load_digits


def _write_idx(tmp_path, split_prefix, images, labels):
    with gzip.open(tmp_path / f"{split_prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with gzip.open(tmp_path / f"{split_prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


def test_parses_idx_files_exactly(tmp_path):
    rng = np.random.default_rng()
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    _write_idx(tmp_path, "t10k", images, labels)
    x, y = load("test", root=tmp_path)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    expected = (torch.from_numpy(images).float() / 255 - FMNIST_MEAN) / FMNIST_STD
    torch.testing.assert_close(x[:, 0], expected, rtol=0, atol=1e-6)
    assert y.tolist() == labels.tolist()
    x3, y3 = load("test", limit=3, root=tmp_path)
    assert x3.shape[0] == 3 and y3.tolist() == labels[:3].tolist()


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FashionMNISTMissing, match="dataset-fashion-mnist"):
        load("train", root=tmp_path)
    images = np.zeros((2, 28, 28), np.uint8)
    _write_idx(tmp_path, "t10k", images, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        load("test", root=tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2049, 2, 28, 28) + images.tobytes())
    with pytest.raises(ValueError, match="magic"):
        load("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load("val")  # type: ignore[arg-type]


def test_real_fashion_mnist_test_split():
    # The Debian package is a declared dependency of the project (make data), not optional.
    x, y = load("test")
    assert x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    # Normalisation constants are the train-set statistics, so the test split is close to 0/1.
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_digits():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert set(y.tolist()) == set(range(10))
    assert abs(x.mean().item()) < 1e-4
    assert load_digits(limit=5)[0].shape[0] == 5


def test_the_data_folder_can_be_given_without_root(tmp_path, monkeypatch):
    import shutil

    from secinfer.data import fashion_mnist as fm

    for name in fm._FILES["test"]:
        shutil.copy(fm.FMNIST_DIR / name, tmp_path / name)
    monkeypatch.setenv("SECINFER_FASHION_MNIST", str(tmp_path))
    assert fm.data_dir() == tmp_path
    x, y = fm.load("test", limit=3)
    assert x.shape == (3, 1, 28, 28) and y.shape == (3,)
    monkeypatch.setenv("SECINFER_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(fm.FashionMNISTMissing, match="SECINFER_FASHION_MNIST"):
        fm.load("test", limit=1)
