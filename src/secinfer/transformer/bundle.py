"""Compile a BERT-family encoder into the one artifact format (first step of the encoder service).

What is written (``out/party0``, ``out/party1``, ``out/party2``, ``out/user``):

1. The compiler encodes every encoder weight at ``frac_bits`` and draws a uniform mask ``r``
   per tensor from :mod:`secinfer.mpc.prg`: party 0 gets ``enc - r``, party 1 gets ``r`` (as
   :func:`secinfer.models.bundle.compile_model` does for CNNs). Each server learns nothing
   about the weights from its file alone.
2. The helper (party 2) gets the public dims and config only.
3. The user artifact holds the plaintext embedding tables (the user embeds locally, see
   :mod:`.model`), ``max_length`` and ``frac_bits``.

The manifest's meta carries ``"kind": "encoder"``, the public dims and the secure config
(:class:`~.layer.SecureTransformerConfig`), so a server builds the program from the artifact
alone (:mod:`secinfer.serve.served`); the user artifact also carries the tokenizer's files, so
the user needs nothing else (:mod:`.user`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_artifact, tensor_bytes, write_artifact
from ..errors import ArtifactError
from ..mpc.config import NonlinearConfig
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from .layer import SecureTransformerConfig
from .model import EncoderDims
from .weights import Embeddings, EncoderWeights, capture_bert

__all__ = ["FORMAT", "USER_FORMAT", "TOKENIZER_PREFIX", "compile_encoder",
           "compile_encoder_parts", "load_encoder_shares", "config_of", "write_server_artifacts"]

FORMAT = "secinfer-mpc-bundle"
USER_FORMAT = "secinfer-user-artifact"
ROLES = {0: "server", 1: "server", 2: "helper"}
TOKENIZER_PREFIX = "tokenizer-"  # the tokenizer's files in the user artifact (names are flat)


def config_of(meta: dict[str, Any]) -> SecureTransformerConfig:
    """The secure config an encoder artifact was compiled with (unknown keys refused)."""
    raw = dict(meta.get("config") or {"frac_bits": meta.get("frac_bits", 16)})
    try:
        nl = NonlinearConfig(**raw.pop("nonlinear", {}))
        return SecureTransformerConfig(**raw, nonlinear=nl)
    except TypeError as e:
        raise ArtifactError(f"encoder artifact has a config this version cannot read: {e}") from e


def write_server_artifacts(out: Path, tensors: dict[str, torch.Tensor], dims: dict[str, Any],
                           meta: dict[str, Any], frac_bits: int) -> list[Path]:
    """Steps 1-2 of the module docstring for any transformer: every tensor encoded at
    ``frac_bits`` and split ``enc - r`` (party 0) / ``r`` (party 1), ``r`` uniform from the
    AES-CTR PRG keyed by the OS CSPRNG; the helper (party 2) gets the dims only."""
    prg = PRG(new_seed())
    s0: dict[str, torch.Tensor] = {}
    s1: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        e = encode(t, frac_bits)
        r = prg.int64(tuple(e.shape))
        s0[name], s1[name] = (e - r).contiguous(), r.contiguous()
    dirs = []
    for party, shares in ((0, s0), (1, s1), (2, None)):
        files = {"dims.json": json.dumps(dims).encode()}
        if shares is not None:
            files["weights.safetensors"] = tensor_bytes(shares)
        dirs.append(write_artifact(out / f"party{party}", FORMAT, "mpc", ROLES[party], files,
                                   meta, party=party, secret=shares is not None,
                                   overwrite=True))
    return dirs


def compile_encoder_parts(emb: Embeddings, enc: EncoderWeights, out: str | Path,
                          max_length: int = 128, frac_bits: int = 16,
                          cfg: SecureTransformerConfig | None = None,
                          user_files: dict[str, bytes] | None = None) -> list[Path]:
    """Write the three party artifacts and the user artifact; returns [p0, p1, p2, user].

    ``cfg`` (default: the defaults at ``frac_bits``) is recorded for the servers; it must
    hide the length (the served program takes the padding as shares)."""
    cfg = cfg or SecureTransformerConfig(frac_bits=frac_bits)
    frac_bits = cfg.frac_bits
    if not cfg.hide_length:
        raise ArtifactError("a served encoder hides the text length: compile with "
                            "hide_length=True")
    if not 1 <= max_length <= emb.position.shape[0]:
        raise ArtifactError(f"max_length {max_length} outside 1..{emb.position.shape[0]}")
    out = Path(out)
    dims = EncoderDims.of(enc)
    tensors = {f"{i}.{name}": w for i, layer in enumerate(enc.layers)
               for name, w in layer.tensors().items()}
    meta: dict[str, Any] = {"kind": "encoder", "dims": asdict(dims), "frac_bits": frac_bits,
                            "max_length": max_length, "config": asdict(cfg),
                            "input_shape": [max_length, dims.hidden + 2]}
    dirs = write_server_artifacts(out, tensors, asdict(dims), meta, frac_bits)
    tables = {"word": emb.word, "position": emb.position[:max_length],
              "token_type": emb.token_type, "ln_w": emb.ln_w, "ln_b": emb.ln_b}
    dirs.append(write_artifact(out / "user", USER_FORMAT, "mpc", "user",
                               {"embeddings.safetensors": tensor_bytes(
                                   {k: v.contiguous() for k, v in tables.items()}),
                                **(user_files or {})},
                               {**meta, "ln_eps": emb.eps}, overwrite=True))
    return dirs


def compile_encoder(model: Any, out: str | Path, max_length: int = 128,
                    cfg: SecureTransformerConfig | None = None,
                    tokenizer: Any = None) -> list[Path]:
    """A Hugging Face BERT-family ``model`` (e.g. all-MiniLM-L6-v2) -> [p0, p1, p2, user].

    ``tokenizer``: the model's tokenizer, or a name / folder to load it from; its files go
    into the user artifact (the user tokenizes; the servers never see a token)."""
    emb, enc = capture_bert(model)
    files: dict[str, bytes] = {}
    meta: dict[str, Any] = {}
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            import transformers

            meta["tokenizer"] = str(tokenizer)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            files = {TOKENIZER_PREFIX + p.name: p.read_bytes()
                     for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    dirs = compile_encoder_parts(emb, enc, out, max_length, cfg=cfg, user_files=files)
    if meta:
        art = read_artifact(dirs[3], USER_FORMAT)
        write_artifact(dirs[3], USER_FORMAT, "mpc", "user",
                       {n: art.read_bytes(n) for n in art.files}, {**art.meta, **meta},
                       overwrite=True)
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
