"""Apply an ``ApproxConfig`` to a Hugging Face transformer in place (BERT/MiniLM, ViT, CLIP).

What changes, per ``ApproxConfig``:

* hidden activation: the MLP activation module (``BertIntermediate.intermediate_act_fn``,
  ``ViTIntermediate.intermediate_act_fn``, ``CLIPMLP.activation_fn``) becomes
  ``ApproxActivation``. ``sig`` computes x * sig_seclmm(1.702 x) whatever the model's native
  activation: for CLIP's quick-GELU this is SecLMM's substitution exactly; for an erf-GELU
  model (MiniLM, ViT) it uses GELU(x) ~ x * sigmoid(1.702 x) (max gap 0.020), so ``sig`` also
  swaps GELU for quick-GELU, which fine-tuning then absorbs.
* softmax: the model's attention implementation becomes ``"secinfer_approx"``: the eager
  attention computation with the softmax chosen by the config.
* with ``emulate_mpc``: native GELU / quick-GELU use the MPC forms, and every ``nn.LayerNorm``
  becomes ``ApproxLayerNorm`` (same parameters, rsqrt by Newton).

Parameters are kept (only wrapped), so a patched model can be fine-tuned and saved as usual.

Why two registrations in ``transformers``' own tables: attention functions are looked up by name
in ``AttentionInterface`` and masks in ``AttentionMaskInterface``. ``patch_model`` registers one
pure function under one fixed name (idempotent; nothing is registered at import). The function
reads the approximation from an attribute set on each attention module, so two models patched
with different configs do not interfere.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from secinfer.mpc.approx import (
    ApproxConfig,
    gelu_mpc,
    layer_norm_mpc,
    quick_gelu_mpc,
    quick_gelu_sig,
    softmax_mpc,
    softmax_quant,
)

__all__ = [
    "ATTN_NAME",
    "ApproxActivation",
    "ApproxLayerNorm",
    "approx_softmax",
    "approx_attention_forward",
    "patch_model",
    "patched_config",
]

ATTN_NAME = "secinfer_approx"
_CFG_ATTR = "_secinfer_approx"
NativeAct = Literal["gelu", "quick_gelu"]

# Activation class names (transformers.activations and torch) by the function they compute.
_NATIVE_BY_CLASS: dict[str, NativeAct] = {
    "GELUActivation": "gelu",
    "GELU": "gelu",
    "QuickGELUActivation": "quick_gelu",
}
_ACT_ATTRS = ("intermediate_act_fn", "activation_fn")


class ApproxActivation(nn.Module):
    """The MLP activation selected by an ``ApproxConfig``, replacing a native GELU/quick-GELU."""

    def __init__(self, native: NativeAct, cfg: ApproxConfig) -> None:
        super().__init__()
        self.native = native
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.hidden_act == "sig":
            return quick_gelu_sig(x)
        if self.native == "gelu":
            return gelu_mpc(x, self.cfg) if self.cfg.emulate_mpc else nn.functional.gelu(x)
        if self.cfg.emulate_mpc:
            return quick_gelu_mpc(x, self.cfg)
        return x * torch.sigmoid(1.702 * x)

    def extra_repr(self) -> str:
        return f"native={self.native}, {self.cfg.label}"


class ApproxLayerNorm(nn.Module):
    """LayerNorm through ``layer_norm_mpc``, sharing the original module's parameters."""

    def __init__(self, ln: nn.LayerNorm, cfg: ApproxConfig) -> None:
        super().__init__()
        if len(ln.normalized_shape) != 1:
            raise ValueError(f"only last-dim LayerNorm is supported, got {ln.normalized_shape}")
        self.weight = ln.weight
        self.bias = ln.bias
        self.eps = ln.eps
        self.normalized_shape = ln.normalized_shape
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_mpc(x, self.weight, self.bias, self.eps, self.cfg)


def approx_softmax(scores: torch.Tensor, additive_mask: torch.Tensor | None,
                   cfg: ApproxConfig) -> torch.Tensor:
    """Softmax over the last dim of attention scores under ``cfg``.

    ``additive_mask`` is transformers' eager mask (0 where attended, a very negative number
    where masked); it is public, so turning it into 0/1 ``keep`` bits leaks nothing.
    """
    keep = None
    if additive_mask is not None:
        keep = (additive_mask > -1e4).expand_as(scores)
    if cfg.softmax_act == "quant":
        return softmax_quant(scores, -1, keep, cfg)
    if cfg.emulate_mpc:
        return softmax_mpc(scores, -1, keep, cfg)
    if additive_mask is not None:
        scores = scores + additive_mask
    return torch.softmax(scores, dim=-1)


def approx_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             scaling: float | None = None, dropout: float = 0.0,
                             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager scaled-dot-product attention with the approximate softmax (transformers' signature)."""
    cfg = getattr(module, _CFG_ATTR, None)
    if not isinstance(cfg, ApproxConfig):
        raise RuntimeError(
            f"attention module {type(module).__name__} uses attn_implementation={ATTN_NAME!r} but "
            "was not patched by secinfer.seclmm.patch.patch_model")
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    mask = attention_mask
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(
            ~mask, torch.finfo(scores.dtype).min)
    if mask is not None:
        mask = mask[..., : key.shape[-2]]
    weights = approx_softmax(scores, mask, cfg).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import AttentionInterface

    if AttentionInterface._global_mapping.get(ATTN_NAME) is not approx_attention_forward:
        AttentionInterface.register(ATTN_NAME, approx_attention_forward)
    if ATTN_NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)


def _set_attn(config: Any) -> None:
    config._attn_implementation = ATTN_NAME
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None:
            _set_attn(sub)


def patch_model(model: nn.Module, cfg: ApproxConfig) -> nn.Module:
    """Apply ``cfg`` to a transformers model in place and return it.

    Raises ``ValueError`` naming the module if an MLP activation is neither GELU nor
    quick-GELU, or if no attention or activation was found (an unsupported architecture).
    Patching an already patched model replaces its configuration.
    """
    if not isinstance(cfg, ApproxConfig):
        raise TypeError(f"cfg must be an ApproxConfig, got {type(cfg).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("patch_model expects a transformers PreTrainedModel (no .config found)")
    _register()
    n_act = n_attn = 0
    for name, mod in list(model.named_modules()):
        for attr in _ACT_ATTRS:
            act = getattr(mod, attr, None)
            if not isinstance(act, nn.Module):
                continue
            if isinstance(act, ApproxActivation):
                native = act.native
            else:
                native_or_none = _NATIVE_BY_CLASS.get(type(act).__name__)
                if native_or_none is None:
                    raise ValueError(
                        f"{name}.{attr} is {type(act).__name__}; only GELU and quick-GELU MLP "
                        "activations can be approximated (add it to _NATIVE_BY_CLASS in "
                        "secinfer/seclmm/patch.py)")
                native = native_or_none
            setattr(mod, attr, ApproxActivation(native, cfg))
            n_act += 1
        cls_name = type(mod).__name__
        if (cls_name.endswith("Attention") and hasattr(mod, "config")) or \
                cls_name.endswith("SelfAttention"):
            setattr(mod, _CFG_ATTR, cfg)
            n_attn += 1
        if cfg.emulate_mpc:
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.LayerNorm):
                    setattr(mod, child_name, ApproxLayerNorm(child, cfg))
                elif isinstance(child, ApproxLayerNorm):
                    child.cfg = cfg
        else:
            for child_name, child in list(mod.named_children()):
                if isinstance(child, ApproxLayerNorm):
                    ln = nn.LayerNorm(child.normalized_shape, eps=child.eps)
                    ln.weight, ln.bias = child.weight, child.bias
                    setattr(mod, child_name, ln)
    if n_act == 0 or n_attn == 0:
        raise ValueError(
            f"{type(model).__name__}: found {n_act} MLP activations and {n_attn} attention "
            "modules; patch_model supports BERT-family, ViT and CLIP models")
    _set_attn(config)
    return model


def patched_config(model: nn.Module) -> ApproxConfig | None:
    """The ``ApproxConfig`` a model was patched with, or None."""
    for mod in model.modules():
        cfg = getattr(mod, _CFG_ATTR, None)
        if isinstance(cfg, ApproxConfig):
            return cfg
    return None
