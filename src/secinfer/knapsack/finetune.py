"""Fine-tuning a network whose ReLUs were replaced by block ReLUs, with knowledge distillation.

Paper: Gorski, Jevnisek, Avidan, arXiv 2304.10442 (the seed fine-tunes with mmcls/mmseg and
``--relu-spec-file``). Steps:

1. The student is a copy of the trained model with the spec applied (``apply_spec``); the
   teacher is the original model, frozen, in eval mode.
2. Loss per batch: ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``
   (Hinton et al. 2015). The block ReLU passes gradients straight through its gate.
3. Adam with cosine decay over all steps; batch order from a CSPRNG-seeded generator.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from secinfer.models.block_spec import apply_spec

__all__ = ["FinetuneConfig", "distill", "evaluate", "finetune"]


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2
    lr: float = 1e-3
    batch: int = 128
    temperature: float = 4.0  # distillation temperature T
    alpha: float = 0.9  # weight of the distillation term; 0 = plain cross-entropy
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be >= 1")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be positive")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need matching non-empty inputs and labels, got {len(x)} and {len(y)}")
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train(was)
    return correct / len(x)


def finetune(
    teacher: nn.Module,
    spec: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: FinetuneConfig | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> nn.Module:
    """Return a fine-tuned copy of ``teacher`` with ``spec`` applied (the teacher is unchanged).

    ``on_epoch(epoch, mean_loss, seconds)`` is called after each epoch.
    """
    return distill(teacher, apply_spec(copy.deepcopy(teacher), spec), x, y, config, on_epoch)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: FinetuneConfig | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> nn.Module:
    """Steps 2-3 for any student (trained in place and returned), e.g. a block-ReLU copy or a
    copy whose max pools became average pools; the teacher is frozen and unchanged."""
    cfg = config or FinetuneConfig()
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need matching non-empty inputs and labels, got {len(x)} and {len(y)}")
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    steps = cfg.epochs * ((len(x) + cfg.batch - 1) // cfg.batch)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    t = cfg.temperature
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        student.train()
        total = 0.0
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch):
            idx = perm[i:i + cfg.batch]
            xb, yb = x[idx], y[idx]
            logits = student(xb)
            loss = (1 - cfg.alpha) * F.cross_entropy(logits, yb)
            if cfg.alpha > 0:
                with torch.no_grad():
                    soft = F.softmax(teacher(xb) / t, dim=1)
                kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
                loss = loss + cfg.alpha * t * t * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / len(x), time.perf_counter() - start)
    return student.eval()
