"""Patching BERT, ViT and CLIP (small random models) against their unpatched outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, ViTConfig, ViTModel

from secinfer.mpc.approx import ApproxConfig
from secinfer.seclmm.patch import ApproxActivation, ApproxLayerNorm, patch_model, patched_config

COMBOS = [(h, s) for h in ("gelu", "sig") for s in ("softmax", "quant")]


def _bert() -> BertModel:
    return BertModel(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96,
                                max_position_embeddings=32)).eval()


def _vit() -> ViTModel:
    return ViTModel(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=96, image_size=28, patch_size=7,
                              num_channels=1)).eval()


def _clip() -> CLIPModel:
    cfg = CLIPConfig(
        text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=40, max_position_embeddings=16,
                         eos_token_id=39, bos_token_id=38, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, image_size=28, patch_size=7, num_channels=1),
        projection_dim=16)
    return CLIPModel(cfg).eval()


def _bert_out(m: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]


@pytest.mark.parametrize("hidden_act, softmax_act", COMBOS)
def test_bert_all_combinations_with_padding(hidden_act: str, softmax_act: str) -> None:
    ref_model = _bert()
    model = copy.deepcopy(ref_model)
    ids = torch.randint(1, 100, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    ref = _bert_out(ref_model, ids, mask)
    for emulate in (False, True):
        cfg = ApproxConfig(hidden_act=hidden_act, softmax_act=softmax_act,  # type: ignore[arg-type]
                           emulate_mpc=emulate)
        patch_model(model, cfg)
        assert patched_config(model) == cfg
        out = _bert_out(model, ids, mask)
        # Exact paths agree to float rounding; approximations within what their bounds allow
        # after two layers (sig replaces GELU by quick-GELU, a 0.02 gap, so it moves most).
        tol = 1e-5 if (hidden_act, softmax_act, emulate) == ("gelu", "softmax", False) else \
            (0.2 if hidden_act == "sig" else 2e-2)
        assert (out - ref).abs().max().item() <= tol
        # Padding must not leak into the kept tokens: changing padded ids changes nothing.
        ids2 = ids.clone()
        ids2[~mask.bool()] = 7
        assert torch.allclose(_bert_out(model, ids2, mask), out, atol=1e-5)
    assert sum(isinstance(m, ApproxActivation) for m in model.modules()) == 2
    assert sum(isinstance(m, ApproxLayerNorm) for m in model.modules()) == 5


def test_vit_and_clip_run_patched() -> None:
    px = torch.randn(2, 1, 28, 28)
    vit = _vit()
    with torch.no_grad():
        ref = vit(pixel_values=px).last_hidden_state
        patch_model(vit, ApproxConfig(softmax_act="quant", emulate_mpc=True))
        out = vit(pixel_values=px).last_hidden_state
    assert (out - ref).abs().max().item() <= 2e-2

    clip = _clip()
    ids = torch.randint(1, 38, (4, 8))
    ids[:, -1] = 39
    with torch.no_grad():
        ref = clip(input_ids=ids, pixel_values=px).logits_per_image
        for h, s in COMBOS:
            patch_model(clip, ApproxConfig(hidden_act=h, softmax_act=s))  # type: ignore[arg-type]
            out = clip(input_ids=ids, pixel_values=px).logits_per_image
            assert out.shape == (2, 4) and torch.isfinite(out).all()
            # Random weights give logits of order 1; quick-GELU under sig moves them slightly.
            assert (out - ref).abs().max().item() <= 0.1
    acts = [m for m in clip.modules() if isinstance(m, ApproxActivation)]
    assert len(acts) == 4 and all(a.native == "quick_gelu" for a in acts)


def test_patch_rejects_unsupported() -> None:
    with pytest.raises(ValueError, match="PreTrainedModel"):
        patch_model(nn.Linear(2, 2), ApproxConfig())
    bert = BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=16, hidden_act="relu"))
    with pytest.raises(ValueError, match="ReLU"):
        patch_model(bert, ApproxConfig())
    with pytest.raises(TypeError, match="ApproxConfig"):
        patch_model(_bert(), "sig")  # type: ignore[arg-type]
