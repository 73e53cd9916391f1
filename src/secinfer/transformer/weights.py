"""Capture of a ``transformers`` BERT-family encoder into plain float64 tensors, and the plaintext
reference forward pass the secure layers are tested against.

The capture is what the model owner does once, before secret-sharing: it reads the encoder's
weights by role from the one architecture table (:mod:`secinfer.models.hf`, which STIP's
transform reads too), folds the attention scale 1/sqrt(d_head) into the query projection (a
public constant, so folding it is free and saves a multiplication on shares), and concatenates
Q, K and V into one projection (one Beaver round instead of three). The embedding tables stay
with the user's side (see :mod:`secinfer.transformer.model`).

Threat model: none here; plaintext arithmetic on the owner's or user's own data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..models.hf import ARCHS, ArchSpec, float_state, spec_for
from ..mpc.approx import quick_gelu_sig, softmax_quant

__all__ = ["HiddenAct", "SoftmaxAct", "LayerWeights", "EncoderWeights", "Embeddings",
           "capture_bert", "read_roles", "layer_weights", "plain_layer", "plain_encoder",
           "random_encoder", "mean_pool"]

HiddenAct = Literal["gelu", "sig"]
SoftmaxAct = Literal["softmax", "quant"]


@dataclass(frozen=True)
class LayerWeights:
    """One encoder layer, float64. ``qkv`` rows: [Q / sqrt(d_head); K; V] (scale folded in)."""

    qkv_w: torch.Tensor   # [3H, H]
    qkv_b: torch.Tensor   # [3H]
    out_w: torch.Tensor   # [H, H]
    out_b: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ff1_w: torch.Tensor   # [I, H]
    ff1_b: torch.Tensor
    ff2_w: torch.Tensor   # [H, I]
    ff2_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class EncoderWeights:
    """The encoder stack: ``heads`` attention heads, LayerNorm epsilon ``eps``."""

    layers: tuple[LayerWeights, ...]
    heads: int
    eps: float

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an encoder needs at least one layer")
        h = self.hidden
        if h % self.heads:
            raise ValueError(f"hidden size {h} is not divisible by {self.heads} heads")

    @property
    def hidden(self) -> int:
        return int(self.layers[0].out_w.shape[0])


@dataclass(frozen=True)
class Embeddings:
    """The user's side: token, position and type tables and the embedding LayerNorm."""

    word: torch.Tensor
    position: torch.Tensor
    token_type: torch.Tensor
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    eps: float

    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """[B, S] token ids -> [B, S, H] float64 (absolute positions, as BERT)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got {tuple(input_ids.shape)}")
        s = input_ids.shape[1]
        if s > self.position.shape[0]:
            raise ValueError(f"sequence length {s} exceeds {self.position.shape[0]} positions")
        tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word[input_ids] + self.position[:s].unsqueeze(0) + self.token_type[tt]
        return F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b, self.eps)


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).clone()


def read_roles(model: Any, layout: str) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
    """``model``'s float64 tensors by role, through the one architecture table
    (:mod:`secinfer.models.hf`): a class of another layout, or any parameter the table does
    not know, is refused by name."""
    spec = spec_for(type(model).__name__)
    if spec.layout != layout:
        wants = sorted(s.model_class for s in ARCHS.values() if s.layout == layout)
        raise ValueError(f"{spec.model_class} is not a {layout} layout; this capture takes "
                         f"{', '.join(wants)}")
    return spec, {k: _d(v) for k, v in spec.roles(float_state(model)).items()}


def layer_weights(t: dict[str, torch.Tensor], prefix: str, heads: int
                  ) -> tuple[LayerWeights, ...]:
    """The layers ``{prefix}layers.<i>.*`` of a role dict, Q, K, V fused and 1/sqrt(d_head)
    folded into Q. The same for post-norm (BERT) and pre-norm (CLIP) layers: the forward
    pass, not the weights, says where the norms sit."""
    n = 0
    while f"{prefix}layers.{n}.q.weight" in t:
        n += 1
    out = []
    for i in range(n):
        def g(role: str, i: int = i) -> torch.Tensor:
            return t[f"{prefix}layers.{i}.{role}"]

        sc = 1.0 / math.sqrt(g("q.weight").shape[0] // heads)
        out.append(LayerWeights(
            qkv_w=torch.cat([g("q.weight") * sc, g("k.weight"), g("v.weight")]),
            qkv_b=torch.cat([g("q.bias") * sc, g("k.bias"), g("v.bias")]),
            out_w=g("out.weight"), out_b=g("out.bias"),
            ln1_w=g("ln1.weight"), ln1_b=g("ln1.bias"),
            ff1_w=g("ff1.weight"), ff1_b=g("ff1.bias"),
            ff2_w=g("ff2.weight"), ff2_b=g("ff2.bias"),
            ln2_w=g("ln2.weight"), ln2_b=g("ln2.bias")))
    return tuple(out)


def capture_bert(model: Any) -> tuple[Embeddings, EncoderWeights]:
    """Read a ``transformers`` BertModel (e.g. MiniLM) or BertForSequenceClassification
    (its encoder; the head stays out) through the architecture table.

    Raises a ValueError naming what is unsupported: another architecture, an unknown
    parameter, non-GELU activations, relative position embeddings, decoders (cross-attention).
    """
    _, t = read_roles(model, "bert")
    cfg = model.config
    if getattr(cfg, "hidden_act", None) not in ("gelu", "gelu_new", "gelu_python"):
        raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r}: only GELU encoders")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {cfg.position_embedding_type!r}")
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise ValueError("decoders and cross-attention are not supported")
    heads = int(cfg.num_attention_heads)
    eps = float(cfg.layer_norm_eps)
    embeddings = Embeddings(t["embeddings.word"], t["embeddings.position"],
                            t["embeddings.token_type"], t["embeddings.ln.weight"],
                            t["embeddings.ln.bias"], eps)
    return embeddings, EncoderWeights(layer_weights(t, "", heads), heads, eps)


def random_encoder(n_layers: int, hidden: int, heads: int, ffn: int,
                   generator: torch.Generator | None = None) -> EncoderWeights:
    """Random weights scaled so activations stay O(1) (for tests and benchmarks)."""

    def r(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, generator=generator) * scale

    layers = []
    for _ in range(n_layers):
        layers.append(LayerWeights(
            qkv_w=r(3 * hidden, hidden, scale=hidden ** -0.5),
            qkv_b=r(3 * hidden, scale=0.1),
            out_w=r(hidden, hidden, scale=hidden ** -0.5), out_b=r(hidden, scale=0.1),
            ln1_w=1 + r(hidden, scale=0.1), ln1_b=r(hidden, scale=0.1),
            ff1_w=r(ffn, hidden, scale=hidden ** -0.5), ff1_b=r(ffn, scale=0.1),
            ff2_w=r(hidden, ffn, scale=ffn ** -0.5), ff2_b=r(hidden, scale=0.1),
            ln2_w=1 + r(hidden, scale=0.1), ln2_b=r(hidden, scale=0.1)))
    return EncoderWeights(tuple(layers), heads, 1e-12)


def plain_layer(w: LayerWeights, x: torch.Tensor, keep: torch.Tensor, heads: int, eps: float,
                hidden_act: HiddenAct = "gelu", softmax_act: SoftmaxAct = "softmax"
                ) -> torch.Tensor:
    """The float64 reference of one layer; x [B, S, H], keep [B, S] (1 = token, 0 = padding)."""
    b, s, h = x.shape
    dh = h // heads
    qkv = x @ w.qkv_w.T + w.qkv_b
    q, k, v = (t.reshape(b, s, heads, dh).transpose(1, 2) for t in qkv.split(h, -1))
    scores = q @ k.transpose(-1, -2)
    km = keep.to(torch.float64).reshape(b, 1, 1, s)
    if softmax_act == "quant":
        probs = softmax_quant(scores, -1, km.expand_as(scores))
    else:
        probs = torch.softmax(scores.masked_fill(km == 0, float("-inf")), -1)
    ctx = (probs @ v).transpose(1, 2).reshape(b, s, h)
    h1 = F.layer_norm(ctx @ w.out_w.T + w.out_b + x, (h,), w.ln1_w, w.ln1_b, eps)
    ff = h1 @ w.ff1_w.T + w.ff1_b
    act = quick_gelu_sig(ff) if hidden_act == "sig" else F.gelu(ff)
    return F.layer_norm(act @ w.ff2_w.T + w.ff2_b + h1, (h,), w.ln2_w, w.ln2_b, eps)


def plain_encoder(enc: EncoderWeights, x: torch.Tensor, keep: torch.Tensor,
                  hidden_act: HiddenAct = "gelu", softmax_act: SoftmaxAct = "softmax"
                  ) -> torch.Tensor:
    for lw in enc.layers:
        x = plain_layer(lw, x, keep, enc.heads, enc.eps, hidden_act, softmax_act)
    return x


def mean_pool(x: torch.Tensor, keep: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Sentence-transformers pooling: mean over kept tokens, then L2 normalisation."""
    km = keep.to(x.dtype).unsqueeze(-1)
    pooled = (x * km).sum(1) / km.sum(1)
    return F.normalize(pooled, dim=-1) if normalise else pooled
