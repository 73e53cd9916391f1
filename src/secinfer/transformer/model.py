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

Protocol of :func:`sentence_embedding_program` (``cfg.hide_length``, the default):
  1. user -> P0 / P1: shares (enc(v) - r, r; r from an AES-CTR PRG keyed from the OS CSPRNG)
     of the padding bias (keep - 1) * BIG [B, S] (:func:`~secinfer.transformer.layer.
     hidden_bias`), of the pooling weights keep / count [B, S] and of the embedding [B, S, H].
     The user knows its own lengths, so it computes 1/count itself: cheaper than a secure
     reciprocal of a shared count (no comparisons, no Newton steps, no rounds). The helper
     receives nothing from the user;
  2. the servers run the layers of :mod:`secinfer.transformer.layer`, the bias added to the
     shared scores (local);
  3. mean pooling = (keep / count) @ y per text: one Beaver matmul [B, 1, S] x [B, S, H]
     (1 round + 1 exact truncation, 16 B S (H + 1) bytes); 1/count's rounding at f = 16 is a
     common factor of the row, which the L2 normalisation (Newton rsqrt on shares) cancels;
  4. P0 and P1 send their shares of the [B, H] embedding to the user only, who adds them.

With ``hide_length=False`` step 1 sends the attention mask [B, S] in the clear to P0, P1 and
P2 instead (it tells every server each text's exact token count, even when texts are padded
to a fixed length), the softmax masks publicly and step 3 is local (public sums, public
1/count).

Threat model: semi-honest, non-colluding P0, P1, P2 (see :mod:`secinfer.mpc.engine`); the
user learns the embedding; the servers learn the shapes: batch and padded length (with
``hide_length``, nothing that depends on the true lengths; without it, the padding mask too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..mpc.config import HELPER, P0, P1, NonlinearConfig
from ..mpc.engine import MPCEngine, decode, encode
from ..mpc.nonlinear import rsqrt
from ..mpc.nonlinear_base import mul_const
from ..mpc.prg import PRG, new_seed
from ..mpc.share import Share
from ..net.session import Session
from .layer import (
    Mask,
    SecretPadding,
    SecureLayer,
    SecureTransformerConfig,
    hidden_bias,
    secure_layer_forward,
    share_layer,
)
from .weights import EncoderWeights

__all__ = ["EncoderDims", "SecureEncoder", "share_encoder", "encoder_forward",
           "pool_normalise", "send_shares", "receive_output", "check_keep",
           "send_hidden_length", "receive_hidden_length", "sentence_embedding_program"]

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
                  dims: EncoderDims,
                  dealt: Mapping[str, torch.Tensor] | None = None) -> SecureEncoder:
    """Share and prepare every layer (``enc`` only at the owner).

    ``dealt``: a server's pre-dealt shares keyed "layer.name" (:func:`.bundle.load_encoder_shares`)
    instead of owner sharing; the prepare step is unchanged."""
    if enc is not None and EncoderDims.of(enc) != dims:
        raise ValueError(f"weights have dims {EncoderDims.of(enc)}, the plan says {dims}")
    layers = [share_layer(engine, enc.layers[i] if enc is not None else None, owner,
                          dims.hidden, dims.ffn, dims.heads, dims.eps,
                          None if dealt is None else
                          {k.split(".", 1)[1]: v for k, v in dealt.items()
                           if k.split(".", 1)[0] == str(i)})
              for i in range(dims.n_layers)]
    return SecureEncoder(layers, dims)


def encoder_forward(engine: MPCEngine, model: SecureEncoder, x: Share, keep: Mask,
                    cfg: SecureTransformerConfig) -> Share:
    for i, lyr in enumerate(model.layers):
        with engine.session.op(f"layer{i}"):
            x = secure_layer_forward(engine, lyr, x, keep, cfg)
    return x


def pool_normalise(engine: MPCEngine, x: Share, keep: torch.Tensor | Share,
                   cfg: NonlinearConfig | None = None) -> Share:
    """Mean over kept tokens, then x / ||x||: [B, S, H] -> [B, H].

    ``keep``: the public mask [B, S] (local sums, public 1/count) or, when the length is
    hidden, shares of the weights keep / count [B, S] (one Beaver matmul). The squared norm
    must lie in [2^-8, 2^14) (sentence embeddings before normalisation have norms of a few
    units).
    """
    if isinstance(keep, Share):
        b, s, h = x.shape
        if tuple(keep.shape) != (b, s):
            raise ValueError(f"pooling weights of shape {tuple(keep.shape)} != {(b, s)}")
        pooled = engine.matmul(keep.reshape(b, 1, s), x).reshape(b, h)
    else:
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


def check_keep(keep: torch.Tensor, b: int, s: int) -> None:
    """A padding mask [B, S] of 0/1 with at least one kept token per text (named errors)."""
    if tuple(keep.shape) != (b, s) or not ((keep == 0) | (keep == 1)).all():
        raise ValueError(f"bad attention mask of shape {tuple(keep.shape)}, expected 0/1 of "
                         f"{(b, s)}")
    if bool((keep.sum(-1) == 0).any()):
        raise ValueError("every text needs at least one kept token")


def send_hidden_length(session: Session, keep: torch.Tensor, cfg: SecureTransformerConfig
                       ) -> None:
    """The user's step 1 (``hide_length``): shares of the padding bias and of keep / count.

    32 bytes per element of [B, S], to P0 and P1 only; the randomness is :func:`send_shares`'s.
    """
    b, s = keep.shape
    check_keep(keep, b, s)
    kf = keep.to(torch.float64)
    send_shares(session, hidden_bias(kf, cfg.nonlinear), cfg.frac_bits)
    send_shares(session, kf / kf.sum(-1, keepdim=True), cfg.frac_bits)


def receive_hidden_length(engine: MPCEngine, user: int, b: int, s: int
                          ) -> tuple[SecretPadding, Share]:
    """The servers' side of :func:`send_hidden_length`: (secret padding, pooling weights)."""
    bias = engine.share_input(None, user, (b, s))
    weights = engine.share_input(None, user, (b, s))
    return SecretPadding(bias), weights


def sentence_embedding_program(session: Session, dims: EncoderDims,
                               cfg: SecureTransformerConfig, seq_shape: tuple[int, int],
                               weights: EncoderWeights | None = None,
                               embedded: torch.Tensor | None = None,
                               keep: torch.Tensor | None = None,
                               owner: int = P0, user: int = USER) -> torch.Tensor | None:
    """SPMD program (steps 1-4 of the module docstring) for P0, P1, P2 and the user.

    The owner passes ``weights``; the user passes ``embedded`` [B, S, H] (from
    :class:`~secinfer.transformer.weights.Embeddings`) and ``keep`` [B, S]; with
    ``cfg.hide_length`` ``keep`` never leaves the user in the clear. Returns the normalised
    [B, H] embedding at the user, None elsewhere.
    """
    pid = session.party_id
    b, s = seq_shape
    shape = (b, s, dims.hidden)
    if pid == user:
        if embedded is None or keep is None or tuple(embedded.shape) != shape:
            raise ValueError(f"the user must pass embedded {shape} and keep {(b, s)}")
        if cfg.hide_length:
            send_hidden_length(session, keep, cfg)
        else:
            for p in (P0, P1, HELPER):
                session.send(p, keep.to(torch.int64))
        send_shares(session, embedded, cfg.frac_bits)
        return receive_output(session, cfg.frac_bits)
    engine = MPCEngine(session, cfg.mpc_config())
    with session.op("weights"):
        model = share_encoder(engine, weights, owner, dims)
    with session.op("inference"):
        mask: Mask
        pool: torch.Tensor | Share
        if cfg.hide_length:
            mask, pool = receive_hidden_length(engine, user, b, s)
        else:
            km = session.recv(user)
            check_keep(km, b, s)
            mask = pool = km
        x = engine.share_input(None, user, shape)
        y = encoder_forward(engine, model, x, mask, cfg)
        with session.op("pool"):
            out = pool_normalise(engine, y, pool, cfg.nonlinear)
        if cfg.verify_dealer:  # before the output leaves
            engine.check_dealer()
        engine.reveal(out, to=user)
    return None
