"""Capture of a ``transformers.CLIPModel`` into float64 weights for secure CLIP inference.

The owner's side (:class:`ClipWeights`, secret-shared by the model owner): the vision tower
(patch embedding as a linear map on flattened patches, class token + position embeddings,
``pre_layrnorm``, pre-norm encoder layers, ``post_layernorm``, ``visual_projection``), the
text tower's pre-norm layers, ``final_layer_norm`` and ``text_projection``, and the logit
scale exp(logit_scale). As in :func:`~secinfer.transformer.weights.capture_bert`, Q, K and V
are fused and 1/sqrt(d_head) is folded into the query weight and bias.

The user's side (:class:`ClipUserSide`, plaintext, given to the user): the text token and
position tables (the user embeds its own prompts, as in the BERT path, so no server sees a
token id), the EOS rule, and the public image geometry used to cut images into patches.

Threat model: none here; plaintext arithmetic on the owner's or the user's own data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .model import EncoderDims
from .weights import EncoderWeights, layer_weights, read_roles

__all__ = ["ClipDims", "ClipUserSide", "ClipWeights", "capture_clip", "eos_positions",
           "patchify"]


@dataclass(frozen=True)
class ClipDims:
    """Public sizes of both towers: every party needs them to plan the shares."""

    vision: EncoderDims
    text: EncoderDims
    projection: int
    image_size: int
    patch_size: int
    channels: int
    native_act: str = "quick_gelu"

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size ** 2


@dataclass(frozen=True)
class ClipWeights:
    """The owner's float64 weights (shapes: H_v / H_t tower widths, D the projection)."""

    patch_w: torch.Tensor      # [H_v, C p p]
    cls_pos: torch.Tensor      # [1 + P, H_v]: row 0 class + pos[0], rows 1.. pos[1:]
    pre_ln_w: torch.Tensor
    pre_ln_b: torch.Tensor
    vision: EncoderWeights
    post_ln_w: torch.Tensor
    post_ln_b: torch.Tensor
    vision_proj: torch.Tensor  # [D, H_v]
    text: EncoderWeights
    final_ln_w: torch.Tensor
    final_ln_b: torch.Tensor
    text_proj: torch.Tensor    # [D, H_t]
    logit_scale: float         # exp(logit_scale), as transformers applies it


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The pooled position per row, exactly as ``CLIPTextTransformer`` picks it: argmax of
    the ids when the config's eos id is 2 (old checkpoints), else the first eos token."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(-1).to(torch.int64)
    return (input_ids.to(torch.int) == eos_token_id).int().argmax(-1).to(torch.int64)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, S, S] -> [N, (S/p)^2, C p p], patches row-major and each flattened (C, y, x),
    the order of ``Conv2d(stride=p)`` followed by ``flatten(2)`` in ``CLIPVisionEmbeddings``."""
    n, c, h, w = images.shape
    g = h // patch
    x = images.to(torch.float64).reshape(n, c, g, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, g * (w // patch), c * patch * patch)


@dataclass(frozen=True)
class ClipUserSide:
    """What the user holds: the token/position tables, the EOS rule and the image geometry."""

    token: torch.Tensor
    position: torch.Tensor
    eos_token_id: int
    dims: ClipDims

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedding [B, S, H_t] float64, causal-and-padding keep [B, S, S], eos [B])."""
        if input_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must be the same [batch, seq]")
        b, s = input_ids.shape
        if s > self.position.shape[0]:
            raise ValueError(f"prompt length {s} exceeds {self.position.shape[0]} positions")
        x = self.token[input_ids] + self.position[:s].unsqueeze(0)
        causal = torch.tril(torch.ones(s, s, dtype=torch.int64))
        keep = causal.unsqueeze(0) * attention_mask.to(torch.int64).reshape(b, 1, s)
        return x, keep, eos_positions(input_ids, self.eos_token_id)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """Check ``images`` against the model's geometry and cut them into patches."""
        d = self.dims
        want = (d.channels, d.image_size, d.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must be [N, {want[0]}, {want[1]}, {want[2]}] "
                             f"(channels, height, width of this CLIP), got "
                             f"{tuple(images.shape)}")
        if images.shape[0] < 1:
            raise ValueError("need at least one image")
        return patchify(images, d.patch_size)


def _native_act(cfg: Any) -> str:
    act = getattr(cfg, "hidden_act", None)
    if act == "quick_gelu":
        return "quick_gelu"
    if act in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        return "gelu"
    raise ValueError(f"unsupported CLIP hidden_act {act!r}: only quick_gelu and gelu")


def capture_clip(model: Any) -> tuple[ClipUserSide, ClipWeights]:
    """Read a ``transformers.CLIPModel`` (project-made tiny or a real checkpoint) by role
    through the architecture table (:mod:`secinfer.models.hf`).

    Raises a ValueError naming what is unsupported: an unknown parameter, other activations,
    the two towers using
    different activations, or a vision tower whose image size is not a multiple of its patch.
    """
    _, t = read_roles(model, "clip")
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    act = _native_act(vcfg)
    if _native_act(tcfg) != act:
        raise ValueError(f"the towers use different activations ({vcfg.hidden_act!r} vs "
                         f"{tcfg.hidden_act!r})")
    if vcfg.image_size % vcfg.patch_size:
        raise ValueError(f"image_size {vcfg.image_size} not divisible by {vcfg.patch_size}")
    vh, th = int(vcfg.num_attention_heads), int(tcfg.num_attention_heads)
    vis = EncoderWeights(layer_weights(t, "vision.", vh), vh, float(vcfg.layer_norm_eps))
    txt = EncoderWeights(layer_weights(t, "text.", th), th, float(tcfg.layer_norm_eps))
    conv = t["vision.embeddings.patch"]
    pos = t["vision.embeddings.position"]
    cls_pos = pos.clone()
    cls_pos[0] += t["vision.embeddings.class"]
    weights = ClipWeights(
        patch_w=conv.reshape(conv.shape[0], -1), cls_pos=cls_pos,
        pre_ln_w=t["vision.pre_ln.weight"], pre_ln_b=t["vision.pre_ln.bias"], vision=vis,
        post_ln_w=t["vision.post_ln.weight"], post_ln_b=t["vision.post_ln.bias"],
        vision_proj=t["vision.proj"], text=txt,
        final_ln_w=t["text.final_ln.weight"], final_ln_b=t["text.final_ln.bias"],
        text_proj=t["text.proj"], logit_scale=float(t["logit_scale"].exp()))
    dims = ClipDims(EncoderDims.of(vis), EncoderDims.of(txt), int(t["vision.proj"].shape[0]),
                    int(vcfg.image_size), int(vcfg.patch_size), int(vcfg.num_channels), act)
    if pos.shape[0] != dims.n_patches + 1:
        raise ValueError(f"{pos.shape[0]} vision positions for {dims.n_patches} patches + 1")
    tm = model.text_model
    user = ClipUserSide(t["text.embeddings.token"], t["text.embeddings.position"],
                        int(tm.eos_token_id if hasattr(tm, "eos_token_id")
                            else tcfg.eos_token_id), dims)
    return user, weights
