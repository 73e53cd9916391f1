"""Linear probe and N-way K-shot few-shot classification on frozen embeddings.

* ``linear_probe``: logistic regression on training embeddings, accuracy on test embeddings
  (the 97.75% BBC figure of ``../shared/data.md`` uses a 70/30 stratified split).
* ``few_shot``: episodes of N-way K-shot. The support set is K random training examples of each
  of N random classes; queries are all test examples of those classes. Classification by
  prototypes (the normalised mean support embedding of each class, nearest by cosine) or by a
  logistic-regression probe fitted on the support set only.

SecLMM asks for 10-way 5-shot. BBC News has only 5 classes, so on it we run N-way with N = the
number of classes available (5-way 5-shot); ``few_shot`` takes ``n_way=None`` to mean that.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["FewShotResult", "few_shot", "linear_probe"]

Method = Literal["proto", "probe"]


def _logreg(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> object:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=c).fit(x, y)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, c: float = 1.0) -> float:
    """Test accuracy of a logistic-regression head trained on ``train_x``."""
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("embeddings and labels differ in length")
    if len(torch.unique(train_y)) < 2:
        raise ValueError("a linear probe needs at least two classes in the training set")
    clf = _logreg(train_x.double().numpy(), train_y.numpy(), c)
    pred = clf.predict(test_x.double().numpy())  # type: ignore[attr-defined]
    return float((pred == test_y.numpy()).mean())


@dataclass(frozen=True)
class FewShotResult:
    """Mean and standard deviation of episode accuracies, and the episode settings."""

    mean: float
    std: float
    n_way: int
    k_shot: int
    episodes: int
    method: str


def few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
             test_y: torch.Tensor, n_way: int | None = None, k_shot: int = 5,
             episodes: int = 20, method: Method = "proto",
             generator: torch.Generator | None = None) -> FewShotResult:
    """N-way K-shot accuracy averaged over ``episodes`` (see the module docstring).

    ``generator`` makes episodes reproducible; by default it is seeded from the OS CSPRNG.
    """
    classes = torch.unique(train_y)
    n_avail = len(classes)
    n_way = n_avail if n_way is None else n_way
    if not 2 <= n_way <= n_avail:
        raise ValueError(f"n_way must be in [2, {n_avail}] (classes available), got {n_way}")
    counts = torch.stack([(train_y == c).sum() for c in classes])
    if k_shot < 1 or int(counts.min()) < k_shot:
        raise ValueError(f"k_shot must be in [1, {int(counts.min())}], got {k_shot}")
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    if method not in ("proto", "probe"):
        raise ValueError(f"method must be 'proto' or 'probe', got {method!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    accs: list[float] = []
    for _ in range(episodes):
        chosen = classes[torch.randperm(n_avail, generator=generator)[:n_way]]
        support_idx = []
        for c in chosen:
            idx = torch.nonzero(train_y == c).flatten()
            support_idx.append(idx[torch.randperm(len(idx), generator=generator)[:k_shot]])
        s_idx = torch.cat(support_idx)
        sx, sy = train_x[s_idx], train_y[s_idx]
        q_mask = torch.isin(test_y, chosen)
        qx, qy = test_x[q_mask], test_y[q_mask]
        if method == "proto":
            protos = torch.stack([sx[sy == c].mean(dim=0) for c in chosen])
            protos = torch.nn.functional.normalize(protos.double(), dim=-1)
            sims = torch.nn.functional.normalize(qx.double(), dim=-1) @ protos.T
            pred = chosen[sims.argmax(dim=-1)]
            accs.append(float((pred == qy).double().mean()))
        else:
            clf = _logreg(sx.double().numpy(), sy.numpy(), c=10.0)
            p = clf.predict(qx.double().numpy())  # type: ignore[attr-defined]
            accs.append(float((p == qy.numpy()).mean()))
    arr = np.array(accs)
    return FewShotResult(float(arr.mean()), float(arr.std()), n_way, k_shot, episodes, method)
