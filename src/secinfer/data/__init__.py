"""Offline data sets: Fashion-MNIST (Debian package) and scikit-learn's 8x8 digits."""

from secinfer.data.digits import load_digits
from secinfer.data.fashion_mnist import (
    FMNIST_DIR,
    FMNIST_MEAN,
    FMNIST_STD,
    FashionMNISTMissing,
    load,
    normalize,
)

__all__ = [
    "FMNIST_DIR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "FashionMNISTMissing",
    "load",
    "load_digits",
    "normalize",
]
