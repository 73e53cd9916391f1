"""De-permuted STIP outputs equal plaintext (1e-5 relative, float32) for every architecture,
with random non-identity norm weights and biases; greedy generation is token-identical."""

from __future__ import annotations

import pytest
import torch

from secinfer.stip import (
    LocalLink,
    StipUser,
    build_cloud,
    load_cloud,
    load_key,
    transform_model,
    write_cloud,
    write_key,
)

from . import tiny

RTOL = 1e-5


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def stip(model: torch.nn.Module) -> StipUser:
    cloud_state, cloud_cfg, key = transform_model(model)
    return StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, cloud_state)))


@torch.inference_mode()
def test_bert_encoder_with_padding_and_token_types() -> None:
    m = tiny.bert_encoder()
    ids = torch.randint(0, 120, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    tt = torch.randint(0, 2, (3, 12))
    ref = m(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    hidden, pooled = stip(m).encode(ids, mask, tt)
    assert rel(hidden, ref.last_hidden_state) < RTOL
    assert rel(pooled, ref.pooler_output) < RTOL


@torch.inference_mode()
def test_bert_classifier() -> None:
    m = tiny.bert_classifier()
    ids = torch.randint(0, 120, (4, 10))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    assert rel(stip(m).classify(ids, mask), m(input_ids=ids, attention_mask=mask).logits) < RTOL


@torch.inference_mode()
def test_vit_classifier() -> None:
    m = tiny.vit()
    px = torch.randn(3, 3, 16, 16)
    assert rel(stip(m).classify(pixel_values=px), m(pixel_values=px).logits) < RTOL


@torch.inference_mode()
def test_clip_both_towers_and_scores() -> None:
    m = tiny.clip()
    ids = torch.randint(1, 98, (3, 9))
    ids[:, -1] = 99
    ids[1, 5] = 99  # an early EOS, padded after it
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    px = torch.randn(2, 3, 16, 16)
    ref = m(input_ids=ids, pixel_values=px, attention_mask=mask)
    u = stip(m)
    tf = u.text_features(ids, mask)
    imf = u.image_features(px)
    assert rel(tf, m.get_text_features(input_ids=ids, attention_mask=mask).pooler_output) < RTOL
    assert rel(imf, m.get_image_features(pixel_values=px).pooler_output) < RTOL
    assert rel(u.clip_logits(ids, px, mask), ref.logits_per_image) < RTOL


def plaintext_greedy(m: torch.nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding of the plaintext model from token ids, with its own KV cache (no EOS
    handling, so it runs exactly n steps like the STIP loop)."""
    out = m(input_ids=ids, use_cache=True)
    toks = []
    for _ in range(n):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(tok)
        out = m(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(toks, dim=1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@torch.inference_mode()
def test_decoder_logits_and_32_greedy_tokens(arch: str) -> None:
    m = tiny.BUILDERS[arch]()
    ids = torch.randint(3, 150, (2, 7))
    u = stip(m)
    assert rel(u.last_logits(ids), m(ids).logits[:, -1]) < RTOL
    ref = plaintext_greedy(m, ids, 32)
    got = u.generate(ids, 32)
    assert got.shape == (2, 32)
    assert torch.equal(got, ref)


@torch.inference_mode()
def test_through_files(tmp_path) -> None:
    """The written artifacts (safetensors + manifest) reproduce the in-memory result."""
    m = tiny.llama()
    cloud_state, cloud_cfg, key = transform_model(m)
    write_cloud(tmp_path / "cloud", key.model_class, cloud_state, cloud_cfg)
    write_key(tmp_path / "key", key)
    u = StipUser(load_key(tmp_path / "key"), LocalLink(load_cloud(tmp_path / "cloud")))
    ids = torch.randint(3, 150, (1, 5))
    assert rel(u.last_logits(ids), m(ids).logits[:, -1]) < RTOL
