"""FashionDigits scenes: an offline segmentation data set composed from real images.

What it is (not a standard benchmark): each 32x32 grey-level scene is a procedural texture
background (two random sinusoidal gratings plus smoothed noise) with one real Fashion-MNIST
garment (resized to 14-22 pixels) and one real handwritten digit from scikit-learn's 8x8 digits
(the UCI optical digits, upscaled to 10-16 pixels) pasted at random places; the digit goes on
top where they overlap. Per-pixel labels come from the pasted images' own ink: a pixel belongs
to an object where that object's intensity is at least 30% of its maximum, else to whatever is
below it.

Classes (6): 0 background, 1 top (T-shirt, pullover, dress, coat, shirt), 2 trouser,
3 footwear (sandal, sneaker, ankle boot), 4 bag, 5 digit.

Splits: train scenes use the Fashion-MNIST train split and digits 0..1199; test scenes the
Fashion-MNIST test split and digits 1200..1796 (scikit-learn's set has no split of its own).
Scene ``i`` of a split is a pure function of (split, seed, i): fixed seeds (numpy PCG64; the
layout is public data, no secret), so every run and machine builds the same scenes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from secinfer.data import fashion_mnist

__all__ = ["CLASSES", "SIZE", "SEEDS", "load_scenes", "normalize_scene"]

CLASSES = ("background", "top", "trouser", "footwear", "bag", "digit")
SIZE = 32
SEEDS = {"train": 1901, "test": 1902}
# Fashion-MNIST label -> scene class
# (0 T-shirt, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag,
# 9 ankle boot)
_FASHION = np.array([1, 2, 1, 1, 1, 3, 1, 3, 4, 3])
_DIGIT_SPLIT = 1200
_MEAN, _STD = 0.35, 0.195  # fixed normalisation of the scene pixels


def _fashion_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion_mnist.load(split)  # type: ignore[arg-type]  # normalised; undo to [0, 1]
    px = (x * fashion_mnist.FMNIST_STD + fashion_mnist.FMNIST_MEAN).clamp(0, 1)
    return px[:, 0].numpy().astype(np.float32), y.numpy()


def _digits_raw(split: str) -> np.ndarray:
    from sklearn.datasets import load_digits

    imgs = load_digits().images.astype(np.float32) / 16.0
    return imgs[:_DIGIT_SPLIT] if split == "train" else imgs[_DIGIT_SPLIT:]


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(img)[None, None]
    return F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()


def _background(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    bg = np.full((SIZE, SIZE), rng.uniform(0.15, 0.45), np.float32)
    for _ in range(2):
        fx, fy = rng.uniform(-4, 4, 2)
        amp = rng.uniform(0.05, 0.15)
        bg += amp * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))
    coarse = rng.normal(0, 0.12, (1, 1, SIZE // 4, SIZE // 4)).astype(np.float32)
    noise = F.interpolate(torch.from_numpy(coarse), size=(SIZE, SIZE), mode="bilinear",
                          align_corners=False)
    bg += noise[0, 0].numpy()
    return np.clip(bg, 0, 1)


def _paste(img: np.ndarray, lab: np.ndarray, obj: np.ndarray, cls: int,
           rng: np.random.Generator, brightness: float) -> None:
    side = obj.shape[0]
    r, c = rng.integers(0, SIZE - side + 1, 2)
    ink = obj / max(float(obj.max()), 1e-6)
    alpha = np.clip(2.0 * ink, 0, 1)
    win = img[r:r + side, c:c + side]
    img[r:r + side, c:c + side] = win * (1 - alpha) + alpha * brightness * ink
    lab[r:r + side, c:c + side][ink >= 0.3] = cls


def normalize_scene(pixels: torch.Tensor) -> torch.Tensor:
    """Scene pixels in [0, 1] -> the standardised network input."""
    return (pixels - _MEAN) / _STD


def load_scenes(split: Literal["train", "test"], n: int, seed: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of ``split``: ``(images float32 [n, 1, 32, 32] standardised, labels int64
    [n, 32, 32])``. Garments are used in order, one per scene (at most the split's size)."""
    if split not in SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    fx, fy = _fashion_raw(split)
    digits = _digits_raw(split)
    if not 1 <= n <= len(fx):
        raise ValueError(f"n must be in 1..{len(fx)} for the {split} split, got {n}")
    rng = np.random.default_rng(SEEDS[split] if seed is None else seed)
    images = np.empty((n, 1, SIZE, SIZE), np.float32)
    labels = np.empty((n, SIZE, SIZE), np.int64)
    for i in range(n):
        img, lab = _background(rng), np.zeros((SIZE, SIZE), np.int64)
        garment = _resize(fx[i], int(rng.integers(14, 23)))
        _paste(img, lab, garment, int(_FASHION[fy[i]]), rng, rng.uniform(0.7, 1.0))
        digit = _resize(digits[int(rng.integers(0, len(digits)))], int(rng.integers(10, 17)))
        _paste(img, lab, digit, 5, rng, rng.uniform(0.7, 1.0))
        images[i, 0], labels[i] = img, lab
    return normalize_scene(torch.from_numpy(images)), torch.from_numpy(labels)
