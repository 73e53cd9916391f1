"""Secure CLIP (both towers, L2 normalisation, logit scale and image-text logits) on shares.

Parties (as in :mod:`secinfer.transformer.model`): P0 and P1 compute, P2 is the helper and
the user is a fourth party (3). The model owner (P0 in the runner, which then knows the
weights; an outside owner calls :func:`~secinfer.transformer.model.send_shares` instead)
secret-shares the weights of :func:`~secinfer.transformer.clip_weights.capture_clip`.

Protocol of :func:`clip_program`:
  1. the owner shares every weight; P0 and P1 open each weight's Beaver mask once
     ("prepared" weights: later products exchange only activations);
  2. ``cfg.hide_length`` (the default): user -> P0 / P1 only: shares of the padding bias
     (keep - 1) * BIG [T, S] (:func:`~secinfer.transformer.layer.hidden_bias`) and of the EOS
     one-hot [T, S] (at scale 0); the prompts are padded to the text tower's context length
     (:func:`secure_clip`), so nothing the servers see depends on a prompt's length. With
     ``hide_length=False``: user -> P0, P1, P2 in the clear: the text keep mask [T, S, S]
     (causal AND padding) and the EOS positions [T] (each prompt's token count);
  3. user -> P0 / P1: shares (enc(x) - r, r) of the image patches [N, P, C p p] (the user cuts
     its images into patches: a public re-ordering of its own pixels) and of the text
     embedding [T, S, H_t] = token + position tables, computed by the user in plaintext as in
     the BERT path (no server sees a pixel or a token id; the user holds the two tables);
  4. vision tower: patches W_patch^T (prepared weight, 1 round), [0; .] + (class token +
     positions) (shared, local), ``pre_layrnorm``, pre-norm layers
     (:func:`~secinfer.transformer.layer.secure_prenorm_layer_forward`, no mask), the class
     token's ``post_layernorm``, ``visual_projection``;
  5. text tower: pre-norm layers with the public causal mask and the padding (the shared
     bias added to the scores, local; or the public [T, S, S] mask), the EOS row selected by
     the one-hot (hidden: one Beaver matmul [T, 1, S] x [T, S, H_t] of a scale-0 one-hot, so
     exact and untruncated, 1 round; public: local), ``final_layer_norm`` on that row
     (LayerNorm is row-wise, so this equals transformers' order), ``text_projection``;
  6. L2 normalisation of both embeddings: sum of squares (1 product), Newton rsqrt on shares
     (22 comparisons per row in one DReLU), 1 product;
  7. logits = exp(logit_scale) * img txt^T: one Beaver matmul of two secrets and one product
     with the shared scale;
  8. P0 and P1 send their shares of the [N, T] logits (and, if asked, of both normalised
     embeddings) to the user only, who adds them; the predicted class is its argmax.

Activations and softmax follow :class:`~secinfer.transformer.layer.SecureTransformerConfig`:
``hidden_act="gelu"`` is CLIP's native quick-GELU x sigmoid(1.702 x) (tanh-form GELU for
a checkpoint whose config says ``gelu``), ``"sig"`` SecLMM's x sig(1.702 x) with the
piecewise-polynomial sigmoid; ``softmax_act`` "softmax" or SecLMM's I-BERT "quant". Fixed
point f = 16 as the BERT path. Paper: SecLMM (the seeds study's section 1: the ``sig`` and
``quant`` switches on CLIP), PUMA's (Dong et al. 2023) softmax and LayerNorm structure.

Fixed-point ranges: every LayerNorm's row variance must lie in [2^-8, 2^14) at f = 16. The
first LayerNorm of each tower sees raw embeddings (token tables and position embeddings of
std ~0.02, variance ~4e-4 < 2^-8); it is computed on 2^k x with epsilon 4^k eps
(``embed_ln_shift`` k = 4 by default), the same function since LayerNorm is scale-invariant,
which accepts input variances in [2^-16, 2^6). The squared norms of the projected features
must lie in [2^-8, 2^14) (norms 0.06 to 128).

Threat model: semi-honest, non-colluding P0, P1, P2 (see :mod:`secinfer.mpc.engine`). The
servers learn the public sizes (both towers, image geometry, number of images and prompts,
the padded prompt length: the context length with ``hide_length``), nothing else; with
``hide_length=False`` also the padding mask and the EOS positions (each prompt's token
count). The user learns the logits (and the embeddings when asked).
Collusion of the helper with a compute server reveals everything.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..mpc.config import HELPER, P0, P1
from ..mpc.engine import MPCEngine, PreparedWeight
from ..mpc.nonlinear import rsqrt
from ..mpc.nonlinear_norm import layer_norm
from ..mpc.share import Share
from ..net.session import Session, run_in_memory, run_tls_threads
from .clip_weights import ClipDims, ClipUserSide, ClipWeights, capture_clip, eos_positions
from .layer import (
    Mask,
    SecretPadding,
    SecureTransformerConfig,
    hidden_bias,
    secure_prenorm_layer_forward,
)
from .model import USER, SecureEncoder, receive_output, send_shares, share_encoder

__all__ = ["SecureClip", "SecureClipResult", "share_clip", "pad_prompts", "secure_image_tower",
           "secure_text_tower", "l2_normalise", "clip_program", "secure_clip",
           "secure_clip_logits"]

#: Default k of the towers' first LayerNorm computed on 2^k x (see the module docstring).
EMBED_LN_SHIFT = 4


@dataclass
class SecureClip:
    """The shared, prepared CLIP weights of one server session."""

    patch_w: PreparedWeight
    cls_pos: Share
    pre_ln: tuple[PreparedWeight, Share]
    vision: SecureEncoder
    post_ln: tuple[PreparedWeight, Share]
    vision_proj: PreparedWeight
    text: SecureEncoder
    final_ln: tuple[PreparedWeight, Share]
    text_proj: PreparedWeight
    logit_scale: Share
    dims: ClipDims


def share_clip(engine: MPCEngine, w: ClipWeights | None, owner: int, dims: ClipDims,
               dealt: Mapping[str, torch.Tensor] | None = None) -> SecureClip:
    """Share and prepare every CLIP weight from ``owner`` (who passes ``w``), in a fixed order.

    ``dealt``: a server's pre-dealt shares (:mod:`.clip_bundle`; "name", "vision.i.name",
    "text.i.name") instead of owner sharing; the helper passes None. The prepare step is
    unchanged."""
    vd, td = dims.vision, dims.text
    shapes: dict[str, tuple[int, ...]] = {
        "patch_w": (vd.hidden, dims.patch_dim), "cls_pos": (dims.n_patches + 1, vd.hidden),
        "pre_ln_w": (vd.hidden,), "pre_ln_b": (vd.hidden,),
        "post_ln_w": (vd.hidden,), "post_ln_b": (vd.hidden,),
        "vision_proj": (dims.projection, vd.hidden),
        "final_ln_w": (td.hidden,), "final_ln_b": (td.hidden,),
        "text_proj": (dims.projection, td.hidden), "logit_scale": (1,)}
    got: dict[str, torch.Tensor] = {}
    if w is not None:
        got = {k: getattr(w, k) for k in shapes if k != "logit_scale"}
        got["logit_scale"] = torch.tensor([w.logit_scale], dtype=torch.float64)
    sh: dict[str, Share] = {}
    for name, shape in shapes.items():
        x = got.get(name)
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"CLIP weight {name}: expected shape {shape}, got {tuple(x.shape)}")
        if dealt is not None and not engine.is_helper:
            d = dealt.get(name)
            if d is None or tuple(d.shape) != shape or d.dtype != torch.int64:
                raise ValueError(f"CLIP weight {name}: the dealt share is missing or not "
                                 f"int64 {shape}")
            sh[name] = Share(d, engine.f)
        else:
            sh[name] = engine.share_input(x, owner, shape)
    prep = {k: engine.prepare_weight(sh[k]) for k in
            ("patch_w", "pre_ln_w", "post_ln_w", "vision_proj", "final_ln_w", "text_proj")}

    def tower(prefix: str) -> dict[str, torch.Tensor] | None:
        if dealt is None:
            return None
        return {k[len(prefix):]: v for k, v in dealt.items() if k.startswith(prefix)}

    vision = share_encoder(engine, w.vision if w is not None else None, owner, vd,
                           dealt=tower("vision."))
    text = share_encoder(engine, w.text if w is not None else None, owner, td,
                         dealt=tower("text."))
    return SecureClip(prep["patch_w"], sh["cls_pos"], (prep["pre_ln_w"], sh["pre_ln_b"]),
                      vision, (prep["post_ln_w"], sh["post_ln_b"]), prep["vision_proj"], text,
                      (prep["final_ln_w"], sh["final_ln_b"]), prep["text_proj"],
                      sh["logit_scale"], dims)


def l2_normalise(engine: MPCEngine, e: Share, cfg: SecureTransformerConfig) -> Share:
    """e / ||e|| over the last dim (step 6); ||e||^2 must lie in [2^-8, 2^14)."""
    ss = engine.mul(e, e).sum(-1, keepdim=True)
    return engine.mul(e, rsqrt(engine, ss, -8, 14, cfg.nonlinear))


def _encoder(engine: MPCEngine, enc: SecureEncoder, x: Share, keep: Mask,
             cfg: SecureTransformerConfig, act: str, first_shift: int) -> Share:
    for i, lyr in enumerate(enc.layers):
        with engine.session.op(f"layer{i}"):
            x = secure_prenorm_layer_forward(engine, lyr, x, keep, cfg, act,
                                             first_shift if i == 0 else 0)
    return x


def secure_image_tower(engine: MPCEngine, sc: SecureClip, patches: Share,
                       cfg: SecureTransformerConfig, embed_ln_shift: int = EMBED_LN_SHIFT
                       ) -> Share:
    """Step 4 then 6: shares of patches [N, P, C p p] -> normalised image embeddings [N, D]."""
    n = patches.shape[0]
    vd, nl = sc.dims.vision, cfg.nonlinear
    with engine.session.op("patch_embed"):
        e = engine.linear(patches, sc.patch_w).pad((0, 0, 1, 0)) + sc.cls_pos.unsqueeze(0)
    with engine.session.op("layernorm"):
        k = embed_ln_shift
        x = layer_norm(engine, e.mul_int(1 << k) if k else e, sc.pre_ln[0], sc.pre_ln[1],
                       vd.eps * 4.0 ** k, nl)
    keep = torch.ones(n, e.shape[1], dtype=torch.int64)
    y = _encoder(engine, sc.vision, x, keep, cfg, sc.dims.native_act, 0)
    with engine.session.op("pool"):
        pooled = layer_norm(engine, y[:, 0], sc.post_ln[0], sc.post_ln[1], vd.eps, nl)
        return l2_normalise(engine, engine.linear(pooled, sc.vision_proj), cfg)


def secure_text_tower(engine: MPCEngine, sc: SecureClip, x: Share, keep: Mask,
                      eos: torch.Tensor | Share, cfg: SecureTransformerConfig,
                      embed_ln_shift: int = EMBED_LN_SHIFT) -> Share:
    """Step 5 then 6: shares of embedded prompts [T, S, H_t], keep (public [T, S, S], or a
    causal :class:`~secinfer.transformer.layer.SecretPadding`) and EOS (public positions [T],
    or shares of the one-hot [T, S] at scale 0) -> normalised text embeddings [T, D]."""
    t, s, h = x.shape
    y = _encoder(engine, sc.text, x, keep, cfg, sc.dims.native_act, embed_ln_shift)
    with engine.session.op("pool"):
        if isinstance(eos, Share):
            if tuple(eos.shape) != (t, s) or eos.frac_bits not in (0, engine.f):
                raise ValueError(f"EOS one-hot shares must be [T, S] = {(t, s)} at scale 0 "
                                 f"or {engine.f}")
            # at scale 0 the product is exact; at scale f (packed with the text, as the
            # served program takes it) it is truncated once
            row = engine.matmul(eos.reshape(t, 1, s), y,
                                truncate=eos.frac_bits != 0).reshape(t, h)
        elif engine.is_helper:
            row = y.sum(1)  # a placeholder of the right shape
        else:
            onehot = torch.nn.functional.one_hot(eos, s).to(torch.int64).unsqueeze(-1)
            row = y.mul_int(onehot).sum(1)
        pooled = layer_norm(engine, row, sc.final_ln[0], sc.final_ln[1], sc.dims.text.eps,
                            cfg.nonlinear)
        return l2_normalise(engine, engine.linear(pooled, sc.text_proj), cfg)


def _padding_of(keep: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """The key padding [T, S] of a causal-and-padding keep [T, S, S] (its last query row)."""
    pad = keep[:, -1, :].to(torch.int64)
    causal = torch.tril(torch.ones(s, s, dtype=torch.int64))
    if not torch.equal(keep.to(torch.int64), causal.unsqueeze(0) * pad.reshape(t, 1, s)):
        raise ValueError("hide_length needs the text mask to be causal AND key padding")
    return pad


def _check_public(keep: torch.Tensor, eos: torch.Tensor, t: int, s: int) -> None:
    if tuple(keep.shape) != (t, s, s) or not ((keep == 0) | (keep == 1)).all():
        raise ValueError(f"the user sent a bad text mask of shape {tuple(keep.shape)}, "
                         f"expected 0/1 of {(t, s, s)}")
    if tuple(eos.shape) != (t,) or bool((eos < 0).any()) or bool((eos >= s).any()):
        raise ValueError(f"the user sent bad EOS positions of shape {tuple(eos.shape)}")


def clip_program(session: Session, dims: ClipDims, cfg: SecureTransformerConfig,
                 shapes: tuple[int, int, int], weights: ClipWeights | None = None,
                 patches: torch.Tensor | None = None, text: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None, eos: torch.Tensor | None = None,
                 owner: int = P0, user: int = USER, with_embeddings: bool = False,
                 embed_ln_shift: int = EMBED_LN_SHIFT) -> dict[str, Any]:
    """SPMD program (steps 1-8 of the module docstring) for P0, P1, P2 and the user.

    ``shapes`` = (images N, prompts T, padded prompt length S), public. The owner passes
    ``weights``; the user passes ``patches`` [N, P, C p p] and the output of
    :meth:`~secinfer.transformer.clip_weights.ClipUserSide.embed_text` (``text``, ``keep``,
    ``eos``). Returns at the user {"logits" [N, T]} (plus "image" [N, D] and "text" [T, D]
    with ``with_embeddings``) and at every party its cost report ("report").
    """
    pid = session.party_id
    n, t, s = shapes
    pshape = (n, dims.n_patches, dims.patch_dim)
    tshape = (t, s, dims.text.hidden)
    if pid == user:
        with session.op("inference"):
            if patches is None or tuple(patches.shape) != pshape:
                raise ValueError(f"the user must pass patches of shape {pshape}")
            if text is None or keep is None or eos is None or tuple(text.shape) != tshape:
                raise ValueError(f"the user must pass text {tshape}, keep and eos")
            _check_public(keep, eos, t, s)
            with session.op("text"):  # the user's upload is charged to the tower it feeds
                if cfg.hide_length:
                    pad = _padding_of(keep, t, s)
                    send_shares(session, hidden_bias(pad, cfg.nonlinear), cfg.frac_bits)
                    send_shares(session, torch.nn.functional.one_hot(eos.to(torch.int64), s)
                                .to(torch.float64), 0)
                else:
                    for p in (P0, P1, HELPER):
                        session.send(p, keep.to(torch.int64))
                        session.send(p, eos.to(torch.int64))
            with session.op("vision"):
                send_shares(session, patches, cfg.frac_bits)
            with session.op("text"):
                send_shares(session, text, cfg.frac_bits)
            out: dict[str, Any] = {"logits": receive_output(session, cfg.frac_bits)}
            if with_embeddings:
                out["image"] = receive_output(session, cfg.frac_bits)
                out["text"] = receive_output(session, cfg.frac_bits)
        out["report"] = session.report()
        return out
    engine = MPCEngine(session, cfg.mpc_config())
    with session.op("weights"):
        model = share_clip(engine, weights, owner, dims)
    with session.op("inference"):
        km: Mask
        ep: torch.Tensor | Share
        if cfg.hide_length:
            km = SecretPadding(engine.share_input(None, user, (t, s)), causal=True)
            ep = engine.share_input(None, user, (t, s), frac_bits=0)
        else:
            km, ep = session.recv(user), session.recv(user)
            _check_public(km, ep, t, s)
        xi = engine.share_input(None, user, pshape)
        xt = engine.share_input(None, user, tshape)
        with session.op("vision"):
            img = secure_image_tower(engine, model, xi, cfg, embed_ln_shift)
        with session.op("text"):
            txt = secure_text_tower(engine, model, xt, km, ep, cfg, embed_ln_shift)
        with session.op("logits"):
            cos = engine.matmul(img, txt.transpose(0, 1).contiguous())
            logits = engine.mul(cos, model.logit_scale.reshape(1, 1))
        if cfg.verify_dealer:  # before any output leaves
            engine.check_dealer()
        engine.reveal(logits, to=user)
        if with_embeddings:
            engine.reveal(img, to=user)
            engine.reveal(txt, to=user)
    return {"report": session.report()}


@dataclass
class SecureClipResult:
    """What the user gets, and the run's costs (all four parties)."""

    logits: torch.Tensor                 # [N, T] float64
    image_embeds: torch.Tensor | None    # [N, D], L2-normalised
    text_embeds: torch.Tensor | None     # [T, D]
    seconds: float                       # wall time of the whole run (weights included)
    bytes_inference: int                 # bytes sent by all parties after weight sharing
    bytes_weights: int                   # bytes sent to share and prepare the weights
    rounds: int                          # the largest per-party round count of the inference
    text_length: int = 0                 # the padded prompt length the servers saw


def _cost(reports: list[dict[str, dict[str, Any]]], op: str, key: str) -> list[int]:
    return [int(r[op][key]) for r in reports if op in r]


def secure_clip(bundle: Any, images: torch.Tensor, prompts: list[str],
                cfg: SecureTransformerConfig | None = None, tls: bool = False,
                timeout: float = 600.0, with_embeddings: bool = True,
                embed_ln_shift: int = EMBED_LN_SHIFT,
                captured: tuple[ClipUserSide, ClipWeights] | None = None,
                text_length: int | None = None) -> SecureClipResult:
    """CLIP logits (and normalised embeddings) of ``images`` x ``prompts`` on shares.

    ``bundle``: a :class:`~secinfer.seclmm.tinyclip.ClipBundle` (``.model`` a
    ``transformers.CLIPModel``, ``.tokenize(texts) -> (ids, mask)``); ``images``: pixel values
    [N, C, S, S] as the model takes them. All four parties run as threads of this process
    (P0 owner and server, P1 server, P2 helper, 3 user), over in-memory queues or, with
    ``tls=True``, real mutual-TLS sockets. ``captured`` re-uses a :func:`capture_clip`.
    ``text_length``: the padded prompt length the servers see; by default the text tower's
    context length (its number of positions) with ``cfg.hide_length``, else the longest
    prompt. Raises ValueError naming the problem for images of the wrong shape, no prompts or
    prompts longer than ``text_length``.
    """
    if not prompts:
        raise ValueError("secure_clip needs at least one prompt")
    cfg = cfg or SecureTransformerConfig()
    user_side, weights = captured if captured is not None else capture_clip(bundle.model)
    patches = user_side.patches(images)
    ids, mask = bundle.tokenize(list(prompts))
    text, keep, eos = pad_prompts(user_side, ids, mask, text_length if text_length is not None
                                  else user_side.position.shape[0] if cfg.hide_length
                                  else int(ids.shape[1]))
    shapes = (int(patches.shape[0]), int(text.shape[0]), int(text.shape[1]))
    none = (None, None, None, None, None)
    party_args = [(weights, *none[1:]), none, none, (None, patches, text, keep, eos)]
    run = run_tls_threads if tls else run_in_memory
    t0 = time.perf_counter()
    out = run(4, clip_program, user_side.dims, cfg, shapes, party_args=party_args,
              timeout=timeout, with_embeddings=with_embeddings, embed_ln_shift=embed_ln_shift)
    seconds = time.perf_counter() - t0
    reports = [o["report"] for o in out]
    res = out[USER]
    return SecureClipResult(
        res["logits"], res.get("image"), res.get("text"), seconds,
        sum(_cost(reports, "inference", "bytes_sent")),
        sum(_cost(reports, "weights", "bytes_sent")),
        max(_cost(reports[:3], "inference", "rounds")), shapes[2])


def pad_prompts(user_side: ClipUserSide, ids: torch.Tensor, mask: torch.Tensor, length: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's text side padded to ``length`` tokens: (embedding [T, length, H_t],
    causal-and-padding keep, EOS positions found on the unpadded ids). The added positions
    hold token 0 (any token: every later position is masked and only the EOS row is pooled)."""
    t, s = ids.shape
    if not s <= length <= user_side.position.shape[0]:
        raise ValueError(f"prompts of {s} tokens cannot be padded to {length} (the text "
                         f"tower has {user_side.position.shape[0]} positions)")
    eos = eos_positions(ids, user_side.eos_token_id)
    pad_ids = torch.nn.functional.pad(ids.to(torch.int64), (0, length - s))
    pad_mask = torch.nn.functional.pad(mask.to(torch.int64), (0, length - s))
    text, keep, _ = user_side.embed_text(pad_ids, pad_mask)
    return text, keep, eos


def secure_clip_logits(bundle: Any, images: torch.Tensor, prompts: list[str],
                       cfg: SecureTransformerConfig | None = None, tls: bool = False,
                       timeout: float = 600.0) -> torch.Tensor:
    """Float logits [n_images, n_prompts] = exp(logit_scale) cos(image, prompt), on shares;
    only the user (this caller) sees them. See :func:`secure_clip`."""
    return secure_clip(bundle, images, prompts, cfg, tls, timeout,
                       with_embeddings=False).logits
