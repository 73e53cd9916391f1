"""Length hiding (``SecureTransformerConfig.hide_length``): the padding mask, the pooling
weights and CLIP's EOS one-hot reach the servers only as shares.

(a) with hiding on, texts of different true lengths padded to one length give the result of
    the UNPADDED text in float64 plaintext (tolerances below); (b) what each server receives
    (every ``Session.recv`` of P0, P1, P2 recorded) has the same message sequence, shapes and
    dtypes for two texts of different true lengths, and no message that is in the clear
    (identical in two runs on the same input, i.e. not masked by fresh randomness) differs
    between them; with hiding off the same check finds the public mask (the leak is real).

Tolerances: BERT, per-token encoder outputs at kept positions max abs 1.5e-2, mean 3e-3 (as
``test_layer.py``); pooled, normalised embeddings cosine >= 0.999 and max abs 5e-3 per
coordinate. CLIP: as ``test_secure_clip.py`` (cosine >= 0.999, 0.01 per embedding
coordinate, 4e-3 exp(logit_scale) on logits).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from secinfer.mpc import MPCEngine
from secinfer.net import run_in_memory
from secinfer.seclmm.tinyclip import FMNIST_CLASSES, make_tiny_clip
from secinfer.transformer import (
    EncoderDims,
    SecretPadding,
    SecureTransformerConfig,
    capture_clip,
    clip_program,
    encoder_forward,
    hidden_bias,
    mean_pool,
    pad_prompts,
    plain_encoder,
    random_encoder,
    secure_clip,
    sentence_embedding_program,
    share_encoder,
)

HIDE = SecureTransformerConfig(drelu_high_bits=32)
REVEAL = SecureTransformerConfig(drelu_high_bits=32, hide_length=False)
S = 10                      # the padded length, public
LENGTHS = (3, 8)            # true lengths of two texts


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _texts(h: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two embedded texts of true lengths LENGTHS padded to S; padding rows hold arbitrary
    embeddings (a real tokenizer's [PAD] rows), which must not change the result."""
    x = torch.randn(len(LENGTHS), S, h, dtype=torch.float64)
    keep = torch.zeros(len(LENGTHS), S, dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        keep[i, :n] = 1
    return x, keep


def _layer_prog(s, enc, x, keep, cfg):
    """P1 plays the user: it shares the embedding and the padding bias (no public mask)."""
    eng = MPCEngine(s, cfg.mpc_config())
    model = share_encoder(eng, enc if eng.role == 0 else None, 0, EncoderDims.of(enc))
    xs = eng.share_input(x if eng.role == 1 else None, 1, tuple(x.shape))
    bias = eng.share_input(hidden_bias(keep, cfg.nonlinear) if eng.role == 1 else None, 1,
                           tuple(keep.shape))
    return eng.reveal(encoder_forward(eng, model, xs, SecretPadding(bias), cfg), to=1)


@pytest.mark.parametrize("softmax_act", ["softmax", "quant"])
def test_secret_padding_tokens_match_unpadded_plaintext(softmax_act: str) -> None:
    enc = random_encoder(2, 32, 4, 64)
    x, keep = _texts()
    cfg = SecureTransformerConfig(softmax_act=softmax_act)  # type: ignore[arg-type]
    out = run_in_memory(3, _layer_prog, enc, x, keep, cfg, timeout=120.0)[1]
    for i, n in enumerate(LENGTHS):
        ref = plain_encoder(enc, x[i : i + 1, :n], torch.ones(1, n, dtype=torch.int64),
                            softmax_act=softmax_act)  # type: ignore[arg-type]
        err = (out[i : i + 1, :n] - ref).abs()
        assert err.max() <= 1.5e-2, (n, err.max())
        assert err.mean() <= 3e-3, (n, err.mean())


def _embed(enc, x, keep, cfg) -> list[Any]:
    party_args = [(enc, None, None), (None, None, None), (None, None, None), (None, x, keep)]
    return run_in_memory(4, sentence_embedding_program, EncoderDims.of(enc), cfg,
                         tuple(keep.shape), party_args=party_args, timeout=120.0)


@pytest.mark.parametrize("cfg", [HIDE, REVEAL], ids=["hide_length", "reveal_length"])
def test_sentence_embeddings_match_unpadded_plaintext(cfg) -> None:
    enc = random_encoder(2, 32, 4, 64)
    x, keep = _texts()
    outs = _embed(enc, x, keep, cfg)
    assert outs[0] is None and outs[1] is None and outs[2] is None
    for i, n in enumerate(LENGTHS):
        ref = mean_pool(plain_encoder(enc, x[i : i + 1, :n],
                                      torch.ones(1, n, dtype=torch.int64)),
                        torch.ones(1, n, dtype=torch.int64))[0]
        assert F.cosine_similarity(outs[3][i], ref, 0) >= 0.999
        assert (outs[3][i] - ref).abs().max() <= 5e-3, (n, (outs[3][i] - ref).abs().max())


# --------------------------------------------------------------------- the servers' view
View = dict[int, list[tuple[int, torch.Tensor]]]


def _recorded(program: Callable[..., Any]) -> Callable[..., Any]:
    """``program`` with every message received by P0, P1 and P2 appended to ``log``."""

    def prog(session, log: View, *args: Any, **kw: Any) -> Any:
        if session.party_id in (0, 1, 2):
            got = log.setdefault(session.party_id, [])
            orig = session.recv

            def recv(peer: int, timeout: float | None = None, tag: str = "",
                     expect=None) -> torch.Tensor:
                t = orig(peer, timeout, tag, expect)
                got.append((peer, t.clone()))
                return t

            session.recv = recv
        return program(session, *args, **kw)

    return prog


RUNS_A = 4  # runs on text A: a masked message of d bits repeats in all of them w.p. 2^-3d


def _leaks(runs_a: list[View], b: View) -> list[str]:
    """Differences between the views of text A (several runs) and text B that a server could
    see: another message sequence, shape or dtype, or a message in the clear (the same in
    every run on A, i.e. not masked by fresh randomness) whose content differs on B.

    Several runs, not two: some masked messages are short (a truncation by d = 4 or 5 bits of
    a per-row mean is one d-bit value), and two runs of one repeat by chance with probability
    2^-d: with two runs this detector reported a "leak" in one make test run here.
    """
    a1 = runs_a[0]
    found = []
    for pid in (0, 1, 2):
        if [(p, t.shape, t.dtype) for p, t in a1[pid]] != [(p, t.shape, t.dtype)
                                                           for p, t in b[pid]]:
            found.append(f"P{pid}: message sequence, shapes or dtypes differ")
            continue
        assert all(len(r[pid]) == len(a1[pid]) for r in runs_a)
        for k, (peer, ta) in enumerate(a1[pid]):
            tb = b[pid][k][1]
            if all(torch.equal(ta, r[pid][k][1]) for r in runs_a[1:]) and not torch.equal(ta, tb):
                found.append(f"P{pid} message {k} from party {peer}: {tuple(ta.shape)} "
                             f"{ta.dtype} in the clear, differs between the two lengths")
    return found


def _bert_view(enc, x, keep, cfg) -> View:
    log: View = {}
    party_args = [(enc, None, None), (None, None, None), (None, None, None), (None, x, keep)]
    run_in_memory(4, _recorded(sentence_embedding_program), log, EncoderDims.of(enc), cfg,
                  tuple(keep.shape), party_args=party_args, timeout=120.0)
    return log


def _one_text(x: torch.Tensor, keep: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[i : i + 1], keep[i : i + 1]


@pytest.mark.parametrize("cfg,leaks", [(HIDE, False), (REVEAL, True)],
                         ids=["hide_length", "reveal_length"])
def test_bert_server_view_does_not_depend_on_the_length(cfg, leaks) -> None:
    enc = random_encoder(1, 16, 2, 32)
    x, keep = _texts(16)
    a, b = _one_text(x, keep, 0), _one_text(x, keep, 1)  # 3 vs 8 tokens, both padded to S
    runs_a = [_bert_view(enc, *a, cfg) for _ in range(RUNS_A)]
    va1, vb = runs_a[0], _bert_view(enc, *b, cfg)
    assert all(len(va1[p]) >= 10 for p in (0, 1, 2))  # the recording saw the whole run
    found = _leaks(runs_a, vb)
    if not leaks:
        assert found == []
        # the helper never hears from the user when the length is hidden
        assert all(peer != 3 for peer, _ in va1[2])
    else:
        # the public [1, S] mask from the user (party 3) to each of P0, P1, P2 is caught
        for pid in (0, 1, 2):
            assert any(f.startswith(f"P{pid} ") and "from party 3: (1, 10)" in f
                       for f in found), found


# --------------------------------------------------------------------------------- CLIP
CLIP_PROMPTS = ["a bag", "a photo of a ankle boot on the floor."]


def _tiny_clip():
    return make_tiny_clip(FMNIST_CLASSES)  # weights from the OS CSPRNG


@torch.no_grad()
@pytest.mark.parametrize("hide", [True, False], ids=["hide_length", "reveal_length"])
def test_clip_matches_each_unpadded_prompt(hide: bool) -> None:
    bundle = _tiny_clip()
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    cfg = SecureTransformerConfig(hide_length=hide)
    assert SecureTransformerConfig().hide_length  # hiding is the default
    res = secure_clip(bundle, images, CLIP_PROMPTS, cfg)
    m = copy.deepcopy(bundle.model).double().eval()
    tol = 4e-3 * float(bundle.model.logit_scale.detach().exp())  # type: ignore[operator]
    assert res.text_embeds is not None and res.image_embeds is not None
    for j, prompt in enumerate(CLIP_PROMPTS):
        ids, mask = bundle.tokenize([prompt])  # this prompt alone: no padding at all
        ref = m(input_ids=ids, attention_mask=mask, pixel_values=images.double())
        assert F.cosine_similarity(res.text_embeds[j], ref.text_embeds[0], 0) >= 0.999
        assert (res.text_embeds[j] - ref.text_embeds[0]).abs().max() <= 0.01
        assert (res.logits[:, j] - ref.logits_per_image[:, 0]).abs().max() <= tol
    # hiding pads the prompts to the text tower's context length, else to the longest prompt
    user_side, _ = capture_clip(bundle.model)
    longest = bundle.tokenize(CLIP_PROMPTS)[0].shape[1]
    assert longest < user_side.position.shape[0]
    assert res.text_length == (user_side.position.shape[0] if hide else longest)


def _clip_view(dims, weights, patches, text, keep, eos, cfg) -> View:
    log: View = {}
    shapes = (int(patches.shape[0]), int(text.shape[0]), int(text.shape[1]))
    none = (None, None, None, None, None)
    party_args = [(weights, *none[1:]), none, none, (None, patches, text, keep, eos)]
    run_in_memory(4, _recorded(clip_program), log, dims, cfg, shapes, party_args=party_args,
                  timeout=120.0)
    return log


@pytest.mark.parametrize("cfg,leaks", [(HIDE, False), (REVEAL, True)],
                         ids=["hide_length", "reveal_length"])
def test_clip_server_view_does_not_depend_on_prompt_length(cfg, leaks) -> None:
    bundle = _tiny_clip()
    user_side, weights = capture_clip(bundle.model)
    patches = user_side.patches(torch.randn(1, 1, 28, 28, dtype=torch.float64))
    length = user_side.position.shape[0]
    sides = []
    for prompt in CLIP_PROMPTS:  # 3 vs 10 tokens, both padded to the context length
        ids, mask = bundle.tokenize([prompt])
        sides.append(pad_prompts(user_side, ids, mask, length))
    assert int(sides[0][2]) != int(sides[1][2])  # different EOS positions
    runs_a = [_clip_view(user_side.dims, weights, patches, *sides[0], cfg)
              for _ in range(RUNS_A)]
    va1 = runs_a[0]
    vb = _clip_view(user_side.dims, weights, patches, *sides[1], cfg)
    found = _leaks(runs_a, vb)
    if not leaks:
        assert found == []
        assert all(peer != 3 for peer, _ in va1[2])
    else:
        for pid in (0, 1, 2):  # the public [1, S, S] mask and the EOS position [1]
            mine = [f for f in found if f.startswith(f"P{pid} ") and "from party 3" in f]
            assert any(f"(1, {length}, {length}) " in f for f in mine), found
            assert any("from party 3: (1,) " in f for f in mine), found


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="hide_length must be a bool"):
        SecureTransformerConfig(hide_length=1)  # type: ignore[arg-type]
    from secinfer.mpc.config import NonlinearConfig

    small = NonlinearConfig(mask_offset=100.0)
    with pytest.raises(ValueError, match="hide_length adds"):
        SecureTransformerConfig(nonlinear=small)
    SecureTransformerConfig(nonlinear=small, hide_length=False)  # the public mask is fine
    bias = hidden_bias(torch.tensor([[1, 1, 0]]), NonlinearConfig())
    assert bias.tolist() == [[0.0, 0.0, -5000.0]]
