"""Training the DeepLabV3 variants on FashionDigits scenes, and the segmentation metrics.

Metrics (the usual semantic-segmentation ones): a confusion matrix over all test pixels; IoU of
class ``c`` = TP / (TP + FP + FN); mIoU = the mean over the classes present in the labels or the
predictions; pixel accuracy = trace / total. Batch order comes from a CSPRNG-seeded generator
(public training randomness, no secret).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["confusion", "miou", "pixel_accuracy", "predict", "train_segmenter"]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Per-pixel argmax labels ``[N, H, W]`` of ``model`` (eval mode)."""
    model.eval()
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``[classes, classes]`` int64 counts, rows = label, columns = prediction."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ")
    idx = target.flatten().long() * classes + pred.flatten().long()
    return torch.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def miou(conf: torch.Tensor) -> float:
    """Mean intersection over union of a confusion matrix (classes that occur at all)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def pixel_accuracy(conf: torch.Tensor) -> float:
    return float(conf.diag().sum()) / max(1, int(conf.sum()))


def train_segmenter(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 4,
                    lr: float = 3e-3, batch: int = 64,
                    on_epoch: Callable[[int, float, float], None] | None = None) -> nn.Module:
    """Per-pixel cross-entropy, Adam, cosine decay; returns ``model`` trained, in eval mode."""
    if len(x) != len(y) or len(x) == 0 or epochs < 1:
        raise ValueError("need matching non-empty images and labels and epochs >= 1")
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    steps = epochs * -(-len(x) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / len(x), time.perf_counter() - start)
    return model.eval()
