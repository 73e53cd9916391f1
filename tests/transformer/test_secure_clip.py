"""Secure CLIP on shares (4 parties) against plaintext ``transformers`` CLIP in float64.

Tolerances: cosine >= 0.999 between secure and plaintext normalised embeddings, max abs
error 0.01 per embedding coordinate and 4e-3 x exp(logit_scale) on logits (measured:
1 - cosine <= 3e-5, max abs error 3e-3 on embeddings, 9e-3 on logits at scale 14.3).
"""

from __future__ import annotations

import copy
import secrets
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from secinfer.mpc.approx import ApproxConfig
from secinfer.seclmm.patch import patch_model
from secinfer.seclmm.tinyclip import (
    FMNIST_CLASSES,
    ClipBundle,
    TinyClipSpec,
    load_clip,
    make_tiny_clip,
    train_clip,
)
from secinfer.seclmm.zeroshot import prompts_for
from secinfer.transformer import (
    SecureTransformerConfig,
    capture_clip,
    eos_positions,
    secure_clip,
    secure_clip_logits,
)
from tests._clip_tokenizer import write_bpe_tokenizer

COS_MIN = 0.999
EMB_ERR = 0.01
LOGIT_ERR = 4e-3  # times the model's logit scale exp(logit_scale)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@torch.no_grad()
def _plain(model: torch.nn.Module, tokenize, images: torch.Tensor, prompts: list[str]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' own float64 forward: (image embeds, text embeds, logits_per_image)."""
    m = copy.deepcopy(model).double().eval()
    ids, mask = tokenize(prompts)
    out = m(input_ids=ids, attention_mask=mask, pixel_values=images.double())
    return out.image_embeds, out.text_embeds, out.logits_per_image


def _logit_tol(model: torch.nn.Module) -> float:
    return LOGIT_ERR * float(model.logit_scale.detach().exp())  # type: ignore[operator]


def _check(res, ref_img: torch.Tensor, ref_txt: torch.Tensor, ref_logits: torch.Tensor,
           tol: float, cos_min: float = COS_MIN) -> None:
    ci = F.cosine_similarity(res.image_embeds, ref_img, -1)
    ct = F.cosine_similarity(res.text_embeds, ref_txt, -1)
    assert ci.min() >= cos_min, ci
    assert ct.min() >= cos_min, ct
    assert (res.image_embeds - ref_img).abs().max() <= EMB_ERR
    assert (res.text_embeds - ref_txt).abs().max() <= EMB_ERR
    assert res.logits.shape == ref_logits.shape
    assert (res.logits - ref_logits).abs().max() <= tol


def _random_clip() -> ClipBundle:
    return make_tiny_clip(FMNIST_CLASSES)  # weights from the OS CSPRNG


def _prompts() -> list[str]:
    # different lengths, so padding and per-prompt EOS positions are exercised
    return ["a photo of a ankle boot.", "a bag", "an image of the t-shirt.", "trouser"]


def test_secure_embeddings_match_transformers() -> None:
    bundle = _random_clip()
    images = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    prompts = _prompts()
    res = secure_clip(bundle, images, prompts)
    ref_img, ref_txt, ref_logits = _plain(bundle.model, bundle.tokenize, images, prompts)
    _check(res, ref_img, ref_txt, ref_logits, _logit_tol(bundle.model))
    assert res.bytes_inference > 0 and res.bytes_weights > 0 and res.rounds > 0
    # the user's logits alone, through the thin wrapper
    logits = secure_clip_logits(bundle, images[:1], prompts[:2])
    assert (logits - ref_logits[:1, :2]).abs().max() <= _logit_tol(bundle.model)


@pytest.mark.parametrize("hidden_act,softmax_act",
                         [("gelu", "softmax"), ("gelu", "quant"), ("sig", "softmax"),
                          ("sig", "quant")])
def test_four_combinations_match_patched_plaintext(hidden_act: str, softmax_act: str) -> None:
    bundle = _random_clip()
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    prompts = _prompts()[:3]
    cfg = SecureTransformerConfig(hidden_act=hidden_act,  # type: ignore[arg-type]
                                  softmax_act=softmax_act)  # type: ignore[arg-type]
    res = secure_clip(bundle, images, prompts, cfg)
    patched = patch_model(copy.deepcopy(bundle.model),
                          ApproxConfig(hidden_act=hidden_act,  # type: ignore[arg-type]
                                       softmax_act=softmax_act))  # type: ignore[arg-type]
    _check(res, *_plain(patched, bundle.tokenize, images, prompts), _logit_tol(bundle.model))


def test_zeroshot_fashion_mnist_on_shares_agrees_with_plaintext() -> None:
    from secinfer.data import load

    x, y = load("train", limit=3000)  # `make data` installs it: a missing set is a failure
    xt, yt = load("test")
    bundle = make_tiny_clip(FMNIST_CLASSES)
    train_clip(bundle, x, y, FMNIST_CLASSES, steps=60, batch_size=64, lr=2e-3)
    prompts = prompts_for(FMNIST_CLASSES, "a photo of a {label}.")
    tol = _logit_tol(bundle.model)
    # fresh random test images, most of them with a clear plaintext winner (a flip needs a
    # closer race than 2 tol) so that agreement means something, plus two of any margin
    pool = torch.tensor([secrets.randbelow(len(xt)) for _ in range(200)])
    pool_logits = _plain(bundle.model, bundle.tokenize, xt[pool], prompts)[2]
    top2 = pool_logits.topk(2, -1).values
    clear_pool = pool[(top2[:, 0] - top2[:, 1]) > 2 * tol]
    assert len(clear_pool) >= 8, f"the tiny CLIP has only {len(clear_pool)} clear winners"
    images = xt[torch.cat([clear_pool[:8], pool[:2]])]
    res = secure_clip(bundle, images, prompts)
    ref_img, ref_txt, ref_logits = _plain(bundle.model, bundle.tokenize, images, prompts)
    _check(res, ref_img, ref_txt, ref_logits, tol)
    plain_pred = ref_logits.argmax(-1)
    top2 = ref_logits.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tol
    assert clear.sum() >= 8
    assert torch.equal(res.logits.argmax(-1)[clear], plain_pred[clear])


def _real_format_folder(tmp_path: Path) -> Path:
    """A random CLIP saved with a byte-level BPE CLIPTokenizer (as a real checkpoint is)."""
    from transformers import CLIPModel

    tok = write_bpe_tokenizer(tmp_path)
    vocab = tok.get_vocab()
    spec = TinyClipSpec(image_size=8, patch_size=4, hidden=32, layers=2, heads=2,
                        intermediate=64, projection=16, num_channels=3)
    cfg = make_tiny_clip(["cat", "dog"], spec).model.config
    cfg.text_config.vocab_size = len(vocab)
    cfg.text_config.eos_token_id = vocab["<|endoftext|>"]
    cfg.text_config.bos_token_id = vocab["<|startoftext|>"]
    cfg.text_config.max_position_embeddings = 77
    folder = tmp_path / "real"
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_real_format_clip_folder_runs_on_shares_over_tls(tmp_path: Path) -> None:
    bundle = load_clip(_real_format_folder(tmp_path))
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    prompts = ["a photo of a cat", "dog"]
    ids, _ = bundle.tokenize(prompts)
    assert ids.shape[1] > 3  # padded with the eos id: the first eos is pooled
    res = secure_clip(bundle, images, prompts, tls=True)
    _check(res, *_plain(bundle.model, bundle.tokenize, images, prompts),
           _logit_tol(bundle.model))


def test_eos_positions_follow_transformers() -> None:
    ids = torch.tensor([[0, 5, 9, 1, 1], [0, 9, 1, 1, 1]])
    assert eos_positions(ids, 1).tolist() == [3, 2]         # first eos (pad == eos)
    assert eos_positions(ids, 2).tolist() == [2, 1]         # legacy configs: argmax of ids


def test_bad_inputs_are_named() -> None:
    bundle = make_tiny_clip(["cat", "dog"], TinyClipSpec(image_size=8, patch_size=4, hidden=16,
                                                         layers=1, heads=2, intermediate=32,
                                                         projection=8))
    with pytest.raises(ValueError, match=r"images must be \[N, 1, 8, 8\].*got \(2, 3, 8, 8\)"):
        secure_clip(bundle, torch.zeros(2, 3, 8, 8), ["a photo of a cat."])
    with pytest.raises(ValueError, match="at least one prompt"):
        secure_clip(bundle, torch.zeros(1, 1, 8, 8), [])
    user, _ = capture_clip(bundle.model)
    with pytest.raises(ValueError, match="exceeds"):
        user.embed_text(torch.zeros(1, 40, dtype=torch.int64),
                        torch.ones(1, 40, dtype=torch.int64))
