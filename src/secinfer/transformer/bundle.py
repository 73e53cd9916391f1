"""Compile a BERT-family encoder into the one artifact format (first step of the encoder service).

What is written (``out/party0``, ``out/party1``, ``out/party2``, ``out/user``):

1. The compiler encodes every encoder weight at ``frac_bits`` and draws a uniform mask ``r``
   per tensor from :mod:`secinfer.mpc.prg`: party 0 gets ``enc - r``, party 1 gets ``r`` (as
   :func:`secinfer.models.bundle.compile_model` does for CNNs). Each server learns nothing
   about the weights from its file alone.
2. The helper (party 2) gets the public dims and config only.
3. The user artifact holds the plaintext embedding tables (the user embeds locally, see
   :mod:`.model`), ``max_length`` and ``frac_bits``.

The manifest's meta carries ``"kind": "encoder"`` so a server can pick the program. Serving
these artifacts (server/scheduler entries, Client methods) is NOT done yet.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_artifact, tensor_bytes, write_artifact
from ..errors import ArtifactError
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from .layer import SecureTransformerConfig
from .model import EncoderDims
from .weights import Embeddings, EncoderWeights, capture_bert

__all__ = ["FORMAT", "USER_FORMAT", "compile_encoder", "compile_encoder_parts",
           "load_encoder_shares"]

FORMAT = "secinfer-mpc-bundle"
USER_FORMAT = "secinfer-user-artifact"
ROLES = {0: "server", 1: "server", 2: "helper"}


def compile_encoder_parts(emb: Embeddings, enc: EncoderWeights, out: str | Path,
                          max_length: int = 128, frac_bits: int = 16) -> list[Path]:
    """Write the three party artifacts and the user artifact; returns [p0, p1, p2, user]."""
    if not 1 <= max_length <= emb.position.shape[0]:
        raise ArtifactError(f"max_length {max_length} outside 1..{emb.position.shape[0]}")
    out = Path(out)
    dims = EncoderDims.of(enc)
    prg = PRG(new_seed())
    s0: dict[str, torch.Tensor] = {}
    s1: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(enc.layers):
        for name, w in layer.tensors().items():
            e = encode(w, frac_bits)
            r = prg.int64(e.shape)
            s0[f"{i}.{name}"], s1[f"{i}.{name}"] = (e - r).contiguous(), r.contiguous()
    meta: dict[str, Any] = {"kind": "encoder", "dims": asdict(dims), "frac_bits": frac_bits,
                            "max_length": max_length}
    dirs = []
    for party, shares in ((0, s0), (1, s1), (2, None)):
        files = {"dims.json": json.dumps(asdict(dims)).encode()}
        if shares is not None:
            files["weights.safetensors"] = tensor_bytes(shares)
        dirs.append(write_artifact(out / f"party{party}", FORMAT, "mpc", ROLES[party], files,
                                   meta, party=party, secret=shares is not None,
                                   overwrite=True))
    tables = {"word": emb.word, "position": emb.position[:max_length],
              "token_type": emb.token_type, "ln_w": emb.ln_w, "ln_b": emb.ln_b}
    dirs.append(write_artifact(out / "user", USER_FORMAT, "mpc", "user",
                               {"embeddings.safetensors": tensor_bytes(
                                   {k: v.contiguous() for k, v in tables.items()})},
                               {**meta, "ln_eps": emb.eps}, overwrite=True))
    return dirs


def compile_encoder(model: Any, out: str | Path, max_length: int = 128,
                    cfg: SecureTransformerConfig | None = None,
                    tokenizer: str | None = None) -> list[Path]:
    """A Hugging Face BERT-family ``model`` (e.g. all-MiniLM-L6-v2) -> [p0, p1, p2, user].

    ``tokenizer``: a reference (name or path) the user side loads its tokenizer from; recorded
    in the user artifact's meta only."""
    cfg = cfg or SecureTransformerConfig()
    emb, enc = capture_bert(model)
    dirs = compile_encoder_parts(emb, enc, out, max_length, cfg.frac_bits)
    if tokenizer is not None:
        art = read_artifact(dirs[3], USER_FORMAT)
        files = {n: art.read_bytes(n) for n in art.files}
        write_artifact(dirs[3], USER_FORMAT, "mpc", "user", files,
                       {**art.meta, "tokenizer": str(tokenizer)}, overwrite=True)
    return dirs


def load_encoder_shares(path: str | Path) -> tuple[EncoderDims, dict[str, torch.Tensor] | None]:
    """A server's (dims, shares by "layer.name") or the helper's (dims, None)."""
    art = read_artifact(path, FORMAT)
    if art.meta.get("kind") != "encoder":
        raise ArtifactError(f"{path}: not an encoder artifact (kind {art.meta.get('kind')!r})")
    dims = EncoderDims(**art.meta["dims"])
    if "weights.safetensors" not in art.files:
        return dims, None
    from safetensors.torch import load

    return dims, load(art.read_bytes("weights.safetensors"))
