"""A BERT encoder layer on secret shares (SecLMM-style secure transformer inference).

Protocol of one layer (x: shares [B, S, H]; keep: the public attention mask [B, S]):
  1. q, k, v = x W_qkv^T + b_qkv: one product with a prepared weight (Beaver with the weight's
     mask re-used; the 1/sqrt(d_head) scale was folded into W_q by the owner);
  2. scores = q k^T per head: a Beaver product of two secret tensors;
  3. probs = softmax(scores) over keys, masked (exp form or SecLMM's I-BERT ``quant`` form);
  4. ctx = probs v (Beaver, two secrets); attn = ctx W_o^T + b_o (prepared);
  5. h1 = LayerNorm(attn + x) (mean, variance, Newton rsqrt, gamma as a prepared weight);
  6. h2 = act(h1 W_1^T + b_1) W_2^T + b_2, act = GELU (tanh form) or SecLMM ``sig``
     (x sig(1.702 x), the piecewise-polynomial sigmoid); 7. out = LayerNorm(h2 + h1).

:func:`secure_prenorm_layer_forward` is the pre-norm variant (CLIP): the same steps 1-4 and
6 (:func:`secure_attention`), with the LayerNorms before attention and MLP and plain
residuals x + attn(LN1(x)), h + MLP(LN2(h)); its masks may also be [B, S, S] (causal).

Paper followed: SecLMM (seeds-study section 1) for the activation switches, PUMA (Dong et al.
2023) for the softmax and LayerNorm structure, the 3-party engine of :mod:`secinfer.mpc`.

Length hiding (``SecureTransformerConfig.hide_length``, the default): the padding mask reaches
the servers only as shares of an additive score bias (:class:`SecretPadding`): shares of
(keep - 1) * BIG per key, BIG = ``mask_offset`` / 2 = 5000, added to every row of the shared
scores (local, no communication) before the softmax, which then runs unmasked (or with only
the public causal mask, whose offset is halved too). Ranges: scores lie in [-30, 30], so a
masked score ends >= 4940 below its row's max, far past exp's clamp (-14: it contributes
e^-14.4 ~ 0.04 units, i.e. at most 1 unit = 2^-16 after the exact truncation, to its row's
sum and its own probability) and I-BERT's cut (-17 ln 2: exactly 0). A score masked by both
the causal and the padding bias moves by mask_offset, the same as on the public path, so
every compared difference stays below 2 mask_offset, inside the approximate DReLU's window
that :class:`SecureTransformerConfig` validates; in the ring, 1e4 2^16 ~ 6.6e8 (scale f) and
1e4 2^32 ~ 4.3e13 (a product at scale 2f) are far below 2^62, the exact truncation's range.

Threat model: semi-honest, non-colluding P0, P1 and helper P2 (see :mod:`secinfer.mpc.engine`).
The servers learn the shapes (batch, padded sequence length, model sizes) and nothing else
with ``hide_length``; without it they also learn the attention mask (which positions are
padding, i.e. every text's token count); weights are shared by their owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ..mpc.config import MPCConfig, NonlinearConfig, Truncation
from ..mpc.engine import MPCEngine, PreparedWeight
from ..mpc.nonlinear import gelu, quick_gelu, quick_gelu_sig
from ..mpc.nonlinear_norm import layer_norm, softmax, softmax_quant
from ..mpc.share import Share
from .weights import HiddenAct, LayerWeights, SoftmaxAct

__all__ = ["SecureTransformerConfig", "SecureLayer", "SecretPadding", "Mask", "share_layer",
           "layer_shapes", "hidden_bias", "secure_attention", "secure_layer_forward",
           "secure_prenorm_layer_forward"]


@dataclass(frozen=True)
class SecureTransformerConfig:
    """Knobs of a secure encoder.

    hidden_act: ``"gelu"`` (tanh-form GELU on shares, 4e-3 from erf GELU) or ``"sig"``
        (SecLMM's x sig(1.702 x)); softmax_act: ``"softmax"`` or ``"quant"`` (I-BERT exp).
    frac_bits (16): see :mod:`secinfer.mpc.nonlinear` for why 16 and not the CNNs' 12.
    drelu_high_bits (0): the approximate DReLU's ignored high bits (exact when 0). Every
        compared value must stay below the window 2^(63 - high - f): at f = 16, 32 gives
        2^15, enough for masked scores (pushed to -1e4) and variances below 2^ln_hi = 2^14,
        and cuts the layer's traffic by 20% (measured). Checked against the nonlinear config.
    truncation ("exact"): how products are scaled back (see :class:`MPCConfig`). A MiniLM
        article takes ~4e7 truncations at f = 16; with SecureML's free local truncation their
        failure probabilities add up to 0.007 per article (measured), and one failure wrecks
        the article's embedding (cosine 0.06 was seen once in 170 articles). The exact
        protocol removes that failure for one round and 6 bytes per truncated element.
    nonlinear: the approximations' knobs.
    hide_length (True): the user secret-shares the padding mask (as a score bias, see the
        module docstring), the pooling weights keep / count (BERT) and the EOS one-hot (CLIP)
        instead of sending the mask and EOS positions in the clear, and the front doors pad
        every text to a fixed length (``max_length``; CLIP's context length), so the servers
        learn only that padded length. False: the mask and EOS positions are public (each
        text's token count leaks) and the front doors pad to the batch's longest text.
        Measured cost at a fixed padded length: ``benchmarks/transformer.py --length-hiding``.
    verify_dealer (False): prove every product the helper dealt before the output leaves
        (:attr:`secinfer.mpc.MPCConfig.verify_dealer`, ``docs/integrity.md``).
    """

    hidden_act: HiddenAct = "gelu"
    softmax_act: SoftmaxAct = "softmax"
    frac_bits: int = 16
    drelu_high_bits: int = 0
    truncation: Truncation = "exact"
    nonlinear: NonlinearConfig = field(default_factory=NonlinearConfig)
    hide_length: bool = True
    verify_dealer: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.hide_length, bool):
            raise ValueError(f"hide_length must be a bool, got {self.hide_length!r}")
        if self.hidden_act not in ("gelu", "sig"):
            raise ValueError(f"hidden_act must be 'gelu' or 'sig', got {self.hidden_act!r}")
        if self.softmax_act not in ("softmax", "quant"):
            raise ValueError(f"softmax_act must be 'softmax' or 'quant', got {self.softmax_act!r}")
        if self.frac_bits < 14:
            raise ValueError(f"transformers need frac_bits >= 14, got {self.frac_bits}")
        window = 2.0 ** (63 - self.drelu_high_bits - self.frac_bits)
        nl = self.nonlinear
        if window <= max(2.0 * nl.mask_offset, 2.0 ** nl.ln_hi):
            raise ValueError(
                f"drelu_high_bits {self.drelu_high_bits} leaves a comparison window of "
                f"{window:g}, too small for masked attention scores (2 x mask_offset = "
                f"{2 * nl.mask_offset:g}) or LayerNorm variances up to 2^{nl.ln_hi}")
        if self.hide_length and nl.mask_offset / 2.0 <= 64.0 - nl.exp_lower:
            raise ValueError(
                f"hide_length adds -mask_offset / 2 = {-nl.mask_offset / 2:g} to padded "
                f"scores: it must push scores in [-30, 30] below exp_lower {nl.exp_lower:g} "
                f"(mask_offset > {2 * (64.0 - nl.exp_lower):g})")

    def mpc_config(self) -> MPCConfig:
        return MPCConfig(frac_bits=self.frac_bits, drelu_high_bits=self.drelu_high_bits,
                         truncation=self.truncation, verify_dealer=self.verify_dealer)


_PREPARED = ("qkv_w", "out_w", "ln1_w", "ff1_w", "ff2_w", "ln2_w")


def layer_shapes(hidden: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a layer's tensors, in sharing order (every party must know them)."""
    return {"qkv_w": (3 * hidden, hidden), "qkv_b": (3 * hidden,), "out_w": (hidden, hidden),
            "out_b": (hidden,), "ln1_w": (hidden,), "ln1_b": (hidden,),
            "ff1_w": (ffn, hidden), "ff1_b": (ffn,), "ff2_w": (hidden, ffn),
            "ff2_b": (hidden,), "ln2_w": (hidden,), "ln2_b": (hidden,)}


@dataclass
class SecureLayer:
    """One layer's shares: prepared weights (masks opened once) and bias shares."""

    prepared: dict[str, PreparedWeight]
    biases: dict[str, Share]
    heads: int
    eps: float


def share_layer(engine: MPCEngine, w: LayerWeights | None, owner: int, hidden: int, ffn: int,
                heads: int, eps: float,
                dealt: Mapping[str, torch.Tensor] | None = None) -> SecureLayer:
    """Secret-share a layer from ``owner`` (who passes ``w``; the others pass None) and
    prepare its weights: each weight's mask is opened once (8 bytes per element per compute
    party), after which queries exchange only activations.

    ``dealt`` (name -> int64 share at ``engine.f``, from a compiled bundle, see
    :mod:`.bundle`): P0 and P1 each pass their own pre-dealt share instead, nothing is sent
    for the sharing (``w`` and ``owner`` are then ignored); the helper passes None."""
    tensors = w.tensors() if w is not None else {}
    prepared: dict[str, PreparedWeight] = {}
    biases: dict[str, Share] = {}
    for name, shape in layer_shapes(hidden, ffn).items():
        x = tensors.get(name)
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
        if dealt is not None and not engine.is_helper:
            d = dealt.get(name)
            if d is None or tuple(d.shape) != shape or d.dtype != torch.int64:
                raise ValueError(f"{name}: the dealt share is missing or not int64 {shape}")
            sh = Share(d, engine.f)
        else:
            sh = engine.share_input(x, owner, shape)
        if name in _PREPARED:
            prepared[name] = engine.prepare_weight(sh)
        else:
            biases[name] = sh
    return SecureLayer(prepared, biases, heads, eps)


@dataclass
class SecretPadding:
    """A padding mask the servers hold only as shares (``hide_length``).

    bias: shares [B, S] of (keep - 1) * BIG (:func:`hidden_bias`), one per key, broadcast over
    heads and queries; causal: also apply the public causal mask (CLIP's text tower).
    """

    bias: Share
    causal: bool = False


#: A layer's attention mask: public keep bits [B, S] / [B, S, S], or secret (hidden length).
Mask = torch.Tensor | SecretPadding


def hidden_bias(keep: torch.Tensor, cfg: NonlinearConfig) -> torch.Tensor:
    """The user's plaintext score bias (keep - 1) * BIG, BIG = mask_offset / 2 (float64)."""
    return (keep.to(torch.float64) - 1.0) * (cfg.mask_offset / 2.0)


def _heads(x: Share, b: int, s: int, heads: int) -> Share:
    return x.reshape(b, s, heads, -1).permute(0, 2, 1, 3).contiguous()


def _attention_mask(keep: torch.Tensor, b: int, s: int) -> torch.Tensor:
    """Public keep bits [B, S] (padding) or [B, S, S] (e.g. causal AND padding, query x key)
    as a float mask broadcasting to the scores [B, heads, S, S]."""
    if tuple(keep.shape) == (b, s):
        return keep.to(torch.float64).reshape(b, 1, 1, s)
    if tuple(keep.shape) == (b, s, s):
        return keep.to(torch.float64).reshape(b, 1, s, s)
    raise ValueError(f"attention mask shape {tuple(keep.shape)} is neither (batch, seq) "
                     f"{(b, s)} nor (batch, seq, seq) {(b, s, s)}")


def _check_secret(keep: SecretPadding, b: int, s: int) -> None:
    if tuple(keep.bias.shape) != (b, s):
        raise ValueError(f"secret padding bias shape {tuple(keep.bias.shape)} != (batch, seq) "
                         f"{(b, s)}")


def secure_attention(engine: MPCEngine, lyr: SecureLayer, x: Share, keep: Mask,
                     cfg: SecureTransformerConfig) -> Share:
    """Steps 1-4 of the module docstring (multi-head self-attention with the output
    projection). x: shares [B, S, H]; keep: public [B, S] or [B, S, S] of 0/1, or a
    :class:`SecretPadding` (its bias is added to the shared scores: local)."""
    b, s, h = x.shape
    p, bs, nl = lyr.prepared, lyr.biases, cfg.nonlinear
    bias: Share | None = None
    km: torch.Tensor | None
    if isinstance(keep, SecretPadding):
        _check_secret(keep, b, s)
        bias = keep.bias.reshape(b, 1, 1, s)
        km = (torch.tril(torch.ones(s, s, dtype=torch.float64)).reshape(1, 1, s, s)
              if keep.causal else None)
        # BIG = mask_offset / 2 for both offsets: a doubly masked score moves by mask_offset
        nl = replace(nl, mask_offset=nl.mask_offset / 2.0)
    else:
        km = _attention_mask(keep, b, s)
    with engine.session.op("qkv"):
        qkv = engine.linear(x, p["qkv_w"], bs["qkv_b"])
        q, k, v = (_heads(qkv[..., i * h : (i + 1) * h], b, s, lyr.heads) for i in range(3))
    with engine.session.op("scores"):
        scores = engine.matmul(q, k.transpose(-1, -2).contiguous())
        if bias is not None:
            scores = scores + bias  # shares of the padding bias, broadcast: local
    with engine.session.op("softmax"):
        sm = softmax_quant if cfg.softmax_act == "quant" else softmax
        probs = sm(engine, scores, km, nl)
    with engine.session.op("context"):
        ctx = engine.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, s, h)
        return engine.linear(ctx, p["out_w"], bs["out_b"])


def secure_layer_forward(engine: MPCEngine, lyr: SecureLayer, x: Share, keep: Mask,
                         cfg: SecureTransformerConfig) -> Share:
    """Steps 1-7 of the module docstring. x: shares [B, S, H]; keep: public [B, S] of 0/1
    or a :class:`SecretPadding` (no causal mask)."""
    b, s, h = x.shape
    if isinstance(keep, SecretPadding):
        _check_secret(keep, b, s)
    elif tuple(keep.shape) != (b, s):
        raise ValueError(f"attention mask shape {tuple(keep.shape)} != (batch, seq) {(b, s)}")
    p, bs, nl = lyr.prepared, lyr.biases, cfg.nonlinear
    attn = secure_attention(engine, lyr, x, keep, cfg)
    with engine.session.op("layernorm"):
        h1 = layer_norm(engine, attn + x, p["ln1_w"], bs["ln1_b"], lyr.eps, nl)
    with engine.session.op("ffn"):
        ff = engine.linear(h1, p["ff1_w"], bs["ff1_b"])
    with engine.session.op("activation"):
        act = quick_gelu_sig(engine, ff) if cfg.hidden_act == "sig" else gelu(engine, ff, nl)
    with engine.session.op("ffn"):
        h2 = engine.linear(act, p["ff2_w"], bs["ff2_b"])
    with engine.session.op("layernorm"):
        return layer_norm(engine, h2 + h1, p["ln2_w"], bs["ln2_b"], lyr.eps, nl)


def secure_prenorm_layer_forward(engine: MPCEngine, lyr: SecureLayer, x: Share,
                                 keep: Mask, cfg: SecureTransformerConfig,
                                 native_act: str = "quick_gelu", ln1_shift: int = 0) -> Share:
    """A pre-norm layer (CLIP, GPT-2 style): h = x + attn(LN1(x)); out = h + MLP(LN2(h)).

    ``ln1``/``ln2`` of the shared layer are the LayerNorms before attention and before the
    MLP. The MLP activation is the model's ``native_act`` (``"quick_gelu"``: x sigmoid(1.702
    x); ``"gelu"``: tanh-form GELU) when ``cfg.hidden_act == "gelu"``, and SecLMM's
    x sig(1.702 x) when it is ``"sig"``. ``ln1_shift`` k computes LN1 on 2^k x with epsilon
    4^k eps, which is the same function (LayerNorm is scale-invariant) but moves a small
    input variance (e.g. raw token embeddings, ~4e-4) into the rsqrt's accurate range at
    f = 16 (a local multiplication, no communication). keep: public [B, S] or [B, S, S],
    or a :class:`SecretPadding`.
    """
    if native_act not in ("quick_gelu", "gelu"):
        raise ValueError(f"native_act must be 'quick_gelu' or 'gelu', got {native_act!r}")
    p, bs, nl = lyr.prepared, lyr.biases, cfg.nonlinear
    with engine.session.op("layernorm"):
        xin = x.mul_int(1 << ln1_shift) if ln1_shift else x
        a = layer_norm(engine, xin, p["ln1_w"], bs["ln1_b"], lyr.eps * 4.0 ** ln1_shift, nl)
    h1 = x + secure_attention(engine, lyr, a, keep, cfg)
    with engine.session.op("layernorm"):
        a2 = layer_norm(engine, h1, p["ln2_w"], bs["ln2_b"], lyr.eps, nl)
    with engine.session.op("ffn"):
        ff = engine.linear(a2, p["ff1_w"], bs["ff1_b"])
    with engine.session.op("activation"):
        if cfg.hidden_act == "sig":
            act = quick_gelu_sig(engine, ff)
        elif native_act == "gelu":
            act = gelu(engine, ff, nl)
        else:
            act = quick_gelu(engine, ff, nl)
    with engine.session.op("ffn"):
        return h1 + engine.linear(act, p["ff2_w"], bs["ff2_b"])
