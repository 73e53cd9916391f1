"""The front door: secure sentence embeddings of texts with a ``transformers`` BertModel, all
four parties (P0 model owner and server, P1 server, P2 helper, user 3) simulated locally.

For separate processes or machines, run
:func:`~secinfer.transformer.model.sentence_embedding_program` as the party program
instead (every party passes the same public ``dims``, ``cfg`` and shape).
"""

from __future__ import annotations

from typing import Any

import torch

from ..net.session import run_in_memory, run_tls_threads
from .layer import SecureTransformerConfig
from .model import EncoderDims, sentence_embedding_program
from .weights import capture_bert

__all__ = ["secure_sentence_embeddings"]


def secure_sentence_embeddings(model: Any, tokenizer: Any, texts: list[str],
                               cfg: SecureTransformerConfig | None = None,
                               max_length: int = 128, tls: bool = False,
                               timeout: float = 600.0) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings [len(texts), H], computed on shares.

    The user's side tokenizes and embeds (plaintext), the servers run the encoder on shares,
    and only the user receives the result. ``tls=True`` uses real mutual-TLS sockets between
    the (thread) parties instead of in-memory queues. With ``cfg.hide_length`` (the default)
    every text is padded to ``max_length`` tokens, so the servers learn only ``max_length``;
    otherwise to the batch's longest text, whose length the shapes then reveal (and the
    public mask reveals every text's).
    """
    if not texts:
        raise ValueError("secure_sentence_embeddings needs at least one text")
    cfg = cfg or SecureTransformerConfig()
    emb, enc = capture_bert(model)
    batch = tokenizer(texts, padding="max_length" if cfg.hide_length else True,
                      truncation=True, max_length=max_length, return_tensors="pt")
    keep = batch["attention_mask"]
    x = emb(batch["input_ids"], batch.get("token_type_ids"))
    b, s = keep.shape
    party_args = [(enc, None, None), (None, None, None), (None, None, None), (None, x, keep)]
    run = run_tls_threads if tls else run_in_memory
    out = run(4, sentence_embedding_program, EncoderDims.of(enc),
              cfg, (b, s), party_args=party_args,
              timeout=timeout)
    return out[3]
