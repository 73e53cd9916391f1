"""The user's side of a served encoder: tokenize, embed and pack one request, in plaintext.

The user artifact (:func:`.bundle.compile_encoder`) holds the embedding tables, the
tokenizer's files and the secure config. Per text the user computes, at the padded length
``max_length`` S (every text, so the servers learn only S):

- the embedding [S, H] (token + position + type lookup and the embedding LayerNorm);
- the score bias (keep - 1) * BIG [S] (:func:`.layer.hidden_bias`): the padding, as a value;
- the pooling weights keep / count [S].

They travel as one tensor [S, H + 2] (embedding, bias, weights along the last axis), secret-
shared like any input (:class:`secinfer.serve.client.Client`): the served program
(:mod:`secinfer.serve.served`) slices it apart on shares, so the request header, the limits
and the batching are the CNNs'. The user receives the L2-normalised [H] embedding.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_artifact
from ..errors import ArtifactError
from .bundle import TOKENIZER_PREFIX, USER_FORMAT, config_of
from .layer import SecureTransformerConfig, hidden_bias
from .weights import Embeddings

__all__ = ["UserEncoder", "load_user_encoder", "pack"]


def pack(embedded: torch.Tensor, keep: torch.Tensor, cfg: SecureTransformerConfig
         ) -> torch.Tensor:
    """[B, S, H] embedding and [B, S] 0/1 mask -> the request [B, S, H + 2] (float64)."""
    kf = keep.to(torch.float64)
    if bool((kf.sum(-1) == 0).any()):
        raise ValueError("every text needs at least one token")
    bias = hidden_bias(kf, cfg.nonlinear)
    weights = kf / kf.sum(-1, keepdim=True)
    return torch.cat([embedded.to(torch.float64), bias.unsqueeze(-1), weights.unsqueeze(-1)], -1)


@dataclass
class UserEncoder:
    embeddings: Embeddings
    tokenizer: Any
    max_length: int
    cfg: SecureTransformerConfig

    def request(self, texts: list[str]) -> torch.Tensor:
        """The packed request [len(texts), max_length, H + 2] for ``texts``."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("embed takes a non-empty list of strings")
        batch = self.tokenizer(texts, padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            x = self.embeddings(batch["input_ids"], batch.get("token_type_ids"))
        return pack(x, batch["attention_mask"], self.cfg)


def load_user_encoder(path: str | Path) -> UserEncoder:
    """The user artifact of a compiled encoder (checksums verified by the one reader)."""
    art = read_artifact(path, USER_FORMAT)
    if art.meta.get("kind") != "encoder":
        raise ArtifactError(f"{path}: not an encoder's user artifact "
                            f"(kind {art.meta.get('kind')!r})")
    t = art.tensors("embeddings.safetensors")
    emb = Embeddings(t["word"], t["position"], t["token_type"], t["ln_w"], t["ln_b"],
                     float(art.meta["ln_eps"]))
    names = [n for n in art.files if n.startswith(TOKENIZER_PREFIX)]
    if not names:
        raise ArtifactError(f"{path}: the user artifact holds no tokenizer (compile with "
                            "tokenizer=...)")
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            (Path(tmp) / n[len(TOKENIZER_PREFIX):]).write_bytes(art.read_bytes(n))
        tok = transformers.AutoTokenizer.from_pretrained(tmp)
    return UserEncoder(emb, tok, int(art.meta["max_length"]), config_of(art.meta))
