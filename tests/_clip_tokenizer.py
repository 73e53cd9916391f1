"""A minimal byte-level BPE CLIP tokenizer in the real checkpoints' file format (test data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_bpe_tokenizer(folder: Path) -> Any:
    """Write ``vocab.json`` and ``merges.txt`` into ``folder``; returns the ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    words = ["a</w>", "photo</w>", "of</w>", "cat</w>", "dog</w>"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    chars = list(letters) + [c + "</w>" for c in letters]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *words])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         pad_token="<|endoftext|>")
