"""The project's word-level tokenizer for its tiny CLIPs (no tokenizer files install offline).

It lives here, below :mod:`secinfer.seclmm`, because a served CLIP's user side
(:mod:`.clip_bundle`) tokenizes with it; :mod:`secinfer.seclmm.tinyclip` re-exports it.
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["CLIP_TEMPLATES", "WordTokenizer"]

CLIP_TEMPLATES = ("a photo of a {label}.", "a picture of a {label}.", "an image of the {label}.")
_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Lower-cased word tokenizer over a fixed vocabulary.

    Ids: 0 pad, 1 bos, 2 unknown, words from 3, and eos = the largest id, so CLIP's pooling
    (first eos, or argmax of the ids) picks the eos position either way.
    """

    def __init__(self, words: list[str], max_length: int = 16) -> None:
        if len(set(words)) != len(words):
            raise ValueError("tokenizer words must be unique")
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3, got {max_length}")
        self.words = list(words)
        self.max_length = max_length
        self._ids = {w: i + 3 for i, w in enumerate(self.words)}
        self.pad_id, self.bos_id, self.unk_id = 0, 1, 2
        self.eos_id = len(self.words) + 3

    @classmethod
    def for_prompts(cls, classes: list[str], templates: tuple[str, ...] = CLIP_TEMPLATES,
                    max_length: int = 16) -> WordTokenizer:
        """A vocabulary covering every word of every template filled with every class."""
        words: list[str] = []
        for t in templates:
            for p in (t.format(label=c) for c in classes):
                words.extend(w for w in _WORD.findall(p.lower()) if w not in words)
        return cls(words, max_length)

    @property
    def vocab_size(self) -> int:
        return self.eos_id + 1

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, int64 ``[len(texts), L]``, padded to the longest."""
        rows = []
        for t in texts:
            ids = [self._ids.get(w, self.unk_id) for w in _WORD.findall(t.lower())]
            rows.append([self.bos_id, *ids[: self.max_length - 2], self.eos_id])
        width = max(len(r) for r in rows)
        ids_t = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids_t, mask

    def to_json(self) -> dict[str, Any]:
        return {"kind": "secinfer-word", "words": self.words, "max_length": self.max_length}
