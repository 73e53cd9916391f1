"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

The package installs four gzip'd idx files under ``/usr/share/datasets/fashion-mnist``; without
root, point ``$SECINFER_FASHION_MNIST`` (or ``root=``) at a folder holding the same four files
(for example unpacked with ``apt-get download dataset-fashion-mnist && dpkg-deb -x *.deb DIR``,
then ``DIR/usr/share/datasets/fashion-mnist``). The idx
format is a big-endian header (16 bytes for images: magic, count, rows, cols; 8 bytes for labels:
magic, count) followed by uint8 data. We check the magic numbers and counts instead of trusting the
offsets blindly, so a truncated or swapped file is a clear error, not a silent garbage tensor.

Normalisation: ``(pixel / 255 - FMNIST_MEAN) / FMNIST_STD`` with the mean and standard deviation
of the 60,000 training images (0.2860 and 0.3530), the usual constants for this data set.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import SecinferError

__all__ = ["FMNIST_DIR", "FMNIST_MEAN", "FMNIST_STD", "INPUT_RANGE", "FashionMNISTMissing",
           "data_dir", "load", "normalize"]

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
# what ``normalize`` makes of pixels 0..255: the range a model trained on it can be asked about
INPUT_RANGE = ((0.0 - FMNIST_MEAN) / FMNIST_STD, (1.0 - FMNIST_MEAN) / FMNIST_STD)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049

Split = Literal["train", "test"]


class FashionMNISTMissing(SecinferError, FileNotFoundError):
    """The Fashion-MNIST files are not installed."""


def _read(path: Path, magic: int, header: int) -> tuple[tuple[int, ...], np.ndarray]:
    if not path.is_file():
        raise FashionMNISTMissing(
            f"Fashion-MNIST file {path} not found; install the Debian package "
            f"dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), or set "
            f"SECINFER_FASHION_MNIST to a folder with its four files (or pass root=)"
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < header:
        raise ValueError(f"{path}: file too short for an idx header ({len(raw)} bytes)")
    fields = struct.unpack(f">{header // 4}I", raw[:header])
    if fields[0] != magic:
        raise ValueError(f"{path}: idx magic {fields[0]} != expected {magic}")
    dims = tuple(int(d) for d in fields[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} data bytes, header says shape {dims}")
    return dims, data


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape) -> float32, scaled to [0, 1] then standardised."""
    return (pixels.to(torch.float32) / 255.0 - FMNIST_MEAN) / FMNIST_STD


def data_dir() -> Path:
    """Where the files are looked for: ``$SECINFER_FASHION_MNIST`` if set, else the Debian
    package's folder."""
    env = os.environ.get("SECINFER_FASHION_MNIST")
    return Path(env) if env else FMNIST_DIR


def load(
    split: Split, limit: int | None = None, root: Path | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images float32 [N, 1, 28, 28] normalised, labels int64 [N])``.

    ``limit`` keeps the first ``limit`` examples (the files' order, deterministic).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    base = Path(root) if root is not None else data_dir()
    img_name, lab_name = _FILES[split]
    (n, rows, cols), pixels = _read(base / img_name, _IMAGE_MAGIC, 16)
    (n_labels,), labels = _read(base / lab_name, _LABEL_MAGIC, 8)
    if n != n_labels:
        raise ValueError(f"{split}: {n} images but {n_labels} labels")
    keep = n if limit is None else min(limit, n)
    images = torch.from_numpy(pixels.reshape(n, 1, rows, cols)[:keep].copy())
    y = torch.from_numpy(labels[:keep].astype(np.int64))
    return normalize(images), y
