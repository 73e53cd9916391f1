"""A whole BERT-family encoder on shares, with the user's embedding and sentence pooling.

Parties: P0, P1 (compute servers), P2 (helper), and the user (any other party id, 3 by default).
The model owner shares the encoder's weights (``owner``; P0 in the examples, which then knows
them: use an outside owner party calling :func:`send_shares` for the full threat model).

Embedding choice: the USER computes the embedding (token + position + type lookup and the
embedding LayerNorm) in plaintext and secret-shares the result, so neither server ever sees a
token id. Cost: 16 bytes per element of the [B, S, H] embedding from the user (8 to each
server; 786 KB for S = 128, H = 384), no rounds among the servers. The price is that the
user holds the embedding tables (12 MB for MiniLM), i.e. the owner gives those to the user;
the alternative, a secret-shared one-hot [S, vocab] times a shared table, keeps the tables
private but costs 16 * S * 30522 bytes (63 MB at S = 128) from the user and a
[S, 30522] x [30522, H] product on shares.

Protocol of :func:`sentence_embedding_program`:
  1. user -> P0, P1, P2: the attention mask (public: it only marks padding, whose amount the
     shapes reveal anyway); user -> P0: enc(x) - r, user -> P1: r (r from the OS CSPRNG);
  2. the servers run the layers of :mod:`secinfer.transformer.layer`;
  3. mean pooling over kept tokens (public mask: local sums, public 1/count), then L2
     normalisation by a Newton rsqrt on shares;
  4. P0 and P1 send their shares of the [B, H] embedding to the user only, who adds them.

Threat model: semi-honest, non-colluding P0, P1, P2 (see :mod:`secinfer.mpc.engine`); the
user learns the embedding, the servers learn shapes and the padding mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mpc.config import HELPER, P0, P1
from ..mpc.engine import MPCEngine, decode, encode
from ..mpc.nonlinear import NonlinearConfig, rsqrt
from ..mpc.nonlinear_base import mul_const
from ..mpc.prg import PRG, new_seed
from ..mpc.share import Share
from ..net.session import Session
from .layer import SecureLayer, SecureTransformerConfig, secure_layer_forward, share_layer
from .weights import EncoderWeights

__all__ = ["EncoderDims", "SecureEncoder", "share_encoder", "encoder_forward",
           "pool_normalise", "send_shares", "receive_output", "sentence_embedding_program"]

USER = 3


@dataclass(frozen=True)
class EncoderDims:
    """The public sizes every party needs: layers, hidden, heads, FFN width, LayerNorm eps."""

    n_layers: int
    hidden: int
    heads: int
    ffn: int
    eps: float = 1e-12

    @classmethod
    def of(cls, enc: EncoderWeights) -> EncoderDims:
        return cls(len(enc.layers), enc.hidden, enc.heads, int(enc.layers[0].ff1_w.shape[0]),
                   enc.eps)


@dataclass
class SecureEncoder:
    layers: list[SecureLayer]
    dims: EncoderDims


def share_encoder(engine: MPCEngine, enc: EncoderWeights | None, owner: int,
                  dims: EncoderDims) -> SecureEncoder:
    """Share and prepare every layer (``enc`` only at the owner)."""
    if enc is not None and EncoderDims.of(enc) != dims:
        raise ValueError(f"weights have dims {EncoderDims.of(enc)}, the plan says {dims}")
    layers = [share_layer(engine, enc.layers[i] if enc is not None else None, owner,
                          dims.hidden, dims.ffn, dims.heads, dims.eps)
              for i in range(dims.n_layers)]
    return SecureEncoder(layers, dims)


def encoder_forward(engine: MPCEngine, model: SecureEncoder, x: Share, keep: torch.Tensor,
                    cfg: SecureTransformerConfig) -> Share:
    for i, lyr in enumerate(model.layers):
        with engine.session.op(f"layer{i}"):
            x = secure_layer_forward(engine, lyr, x, keep, cfg)
    return x


def pool_normalise(engine: MPCEngine, x: Share, keep: torch.Tensor,
                   cfg: NonlinearConfig | None = None) -> Share:
    """Mean over kept tokens, then x / ||x||: [B, S, H] -> [B, H].

    The squared norm must lie in [2^-8, 2^14) (sentence embeddings before normalisation have
    norms of a few units).
    """
    km = keep.to(torch.int64)
    summed = (x if engine.is_helper else x.mul_int(km.unsqueeze(-1))).sum(1)
    pooled = mul_const(engine, summed, 1.0 / km.sum(1, keepdim=True).to(torch.float64))
    ss = engine.mul(pooled, pooled).sum(-1, keepdim=True)
    return engine.mul(pooled, rsqrt(engine, ss, -8, 14, cfg))


def send_shares(session: Session, x: torch.Tensor, frac_bits: int) -> None:
    """An outside party (user or model owner) shares ``x``: enc(x) - r to P0, r to P1.

    r comes from an AES-CTR PRG keyed by a fresh OS-CSPRNG seed. 16 bytes per element sent.
    """
    enc = encode(x, frac_bits)
    r = PRG(new_seed()).int64(tuple(enc.shape))
    session.send(P0, enc - r)
    session.send(P1, r)


def receive_output(session: Session, frac_bits: int) -> torch.Tensor:
    """The user adds the two servers' shares of a revealed output."""
    return decode(session.recv(P0) + session.recv(P1), frac_bits)


def sentence_embedding_program(session: Session, dims: EncoderDims,
                               cfg: SecureTransformerConfig, seq_shape: tuple[int, int],
                               weights: EncoderWeights | None = None,
                               embedded: torch.Tensor | None = None,
                               keep: torch.Tensor | None = None,
                               owner: int = P0, user: int = USER) -> torch.Tensor | None:
    """SPMD program (steps 1-4 of the module docstring) for P0, P1, P2 and the user.

    The owner passes ``weights``; the user passes ``embedded`` [B, S, H] (from
    :class:`~secinfer.transformer.weights.Embeddings`) and ``keep`` [B, S]. Returns the
    normalised [B, H] embedding at the user, None elsewhere.
    """
    pid = session.party_id
    b, s = seq_shape
    shape = (b, s, dims.hidden)
    if pid == user:
        if embedded is None or keep is None or tuple(embedded.shape) != shape:
            raise ValueError(f"the user must pass embedded {shape} and keep {(b, s)}")
        for p in (P0, P1, HELPER):
            session.send(p, keep.to(torch.int64))
        send_shares(session, embedded, cfg.frac_bits)
        return receive_output(session, cfg.frac_bits)
    engine = MPCEngine(session, cfg.mpc_config())
    with session.op("weights"):
        model = share_encoder(engine, weights, owner, dims)
    with session.op("inference"):
        km = session.recv(user)
        if tuple(km.shape) != (b, s) or not ((km == 0) | (km == 1)).all():
            raise ValueError(f"the user sent a bad attention mask of shape {tuple(km.shape)}")
        x = engine.share_input(None, user, shape)
        y = encoder_forward(engine, model, x, km, cfg)
        with session.op("pool"):
            out = pool_normalise(engine, y, km, cfg.nonlinear)
        engine.reveal(out, to=user)
    return None
