"""Short fine-tuning of a sentence encoder with the approximations switched on (SecLMM's recipe
for recovering the accuracy an MPC-friendly activation or softmax costs).

Objective: the zero-shot classifier itself. For a batch of articles with labels y, the logits
are ``scale * cos(article, prompt_c)`` over the class prompts ("This is a news article about
{label}."), both sides encoded by the same (patched) encoder with gradients, and the loss is
the cross-entropy with y. This is CLIP's contrastive loss with the prompts as the text side.

Only the training split is used; the embedding tables stay frozen (they are a lookup, not
affected by the approximations, and hold half of MiniLM's parameters).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import torch

from secinfer.seclmm.tasks import TextDataset, TextEncoder
from secinfer.seclmm.zeroshot import prompts_for

__all__ = ["FinetuneConfig", "FinetuneReport", "finetune_text"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of ``finetune_text``.

    Attributes:
        epochs: passes over the training texts.
        batch_size: articles per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        logit_scale: multiplier of the cosine similarities (CLIP learns ~100; 20 suits MiniLM).
        freeze_embeddings: keep the token/position embedding tables fixed.
        seed: shuffling seed; None draws one from the OS CSPRNG.
        max_seconds: stop early after this much training time (bounded CPU runs).
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-5
    weight_decay: float = 0.01
    logit_scale: float = 20.0
    freeze_embeddings: bool = True
    seed: int | None = None
    max_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.logit_scale <= 0 or self.max_seconds <= 0:
            raise ValueError("logit_scale and max_seconds must be positive")


@dataclass(frozen=True)
class FinetuneReport:
    """Steps taken, mean loss of the first and last epoch, and wall time."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float


def finetune_text(encoder: TextEncoder, data: TextDataset, template: str,
                  cfg: FinetuneConfig | None = None) -> FinetuneReport:
    """Fine-tune ``encoder`` in place on ``data`` (a training split) for zero-shot ``template``."""
    cfg = cfg or FinetuneConfig()
    if len(data.texts) == 0:
        raise ValueError("fine-tuning needs at least one training text")
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    params = []
    for name, p in encoder.model.named_parameters():
        frozen = (cfg.freeze_embeddings and name.startswith("embeddings.")
                  and "LayerNorm" not in name)
        p.requires_grad_(not frozen)
        if not frozen:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prompts = prompts_for(data.classes, template)
    encoder.model.train()
    start = time.perf_counter()
    steps = 0
    epoch_losses: list[float] = []
    try:
        for _ in range(cfg.epochs):
            order = torch.randperm(len(data.texts), generator=gen)
            total, n = 0.0, 0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i:i + cfg.batch_size].tolist()
                texts = [data.texts[j] for j in idx]
                y = data.labels[idx]
                logits = cfg.logit_scale * encoder(texts) @ encoder(prompts).T
                loss = torch.nn.functional.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                total += float(loss.detach()) * len(idx)
                n += len(idx)
                if time.perf_counter() - start > cfg.max_seconds:
                    break
            epoch_losses.append(total / max(n, 1))
            if time.perf_counter() - start > cfg.max_seconds:
                break
    finally:
        encoder.model.eval()
        for p in encoder.model.parameters():
            p.requires_grad_(False)
    return FinetuneReport(steps, epoch_losses[0], epoch_losses[-1], time.perf_counter() - start)
