"""scikit-learn's 8x8 handwritten digits (1,797 images), a tiny real data set for unit tests."""

from __future__ import annotations

import torch

__all__ = ["load_digits"]


def load_digits(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images float32 [N, 1, 8, 8] standardised, labels int64 [N])``.

    Pixels are 0..16 in the source; we scale to [0, 1] and standardise with the set's own mean and
    std (it has no train/test split, so there is nothing to leak).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load
    except ImportError as e:  # optional dependency (extras "data" / "transformers")
        raise ImportError("load_digits needs scikit-learn: pip install 'secinfer[data]'") from e
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    ds = _sk_load()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(ds.target, dtype=torch.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
