"""BBC data, split, zero-shot, probe, few-shot and fine-tuning (MiniLM, real weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secinfer.mpc.approx import ApproxConfig
from secinfer.seclmm.fewshot import few_shot, linear_probe
from secinfer.seclmm.finetune import FinetuneConfig, finetune_text
from secinfer.seclmm.patch import patch_model
from secinfer.seclmm.tasks import (
    BBC_PROMPT,
    load_bbc,
    load_minilm,
    stratified_split,
    stratified_subset,
)
from secinfer.seclmm.zeroshot import prompts_for, zeroshot_from_embeddings, zeroshot_text


def test_load_bbc_sorted_classes_and_split() -> None:
    small = load_bbc(limit_per_class=3)
    assert small.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert small.labels.tolist() == [k for k in range(5) for _ in range(3)]
    assert all(len(t) > 100 for t in small.texts)
    full = load_bbc()
    assert len(full.texts) == 2225
    train, test = stratified_split(full.labels)
    assert len(test) == 668 and len(train) == 1557 and not set(train) & set(test)
    frac = np.bincount(full.labels[test].numpy()) / np.bincount(full.labels.numpy())
    assert np.all(np.abs(frac - 0.3) < 0.01)
    sub = stratified_subset(full.labels, 4, torch.Generator().manual_seed(1))
    assert np.bincount(full.labels[sub].numpy()).tolist() == [4] * 5
    with pytest.raises(FileNotFoundError, match="not found"):
        load_bbc("/nonexistent/bbc")


def _clusters(n_per: int, k: int, d: int = 16, spread: float = 0.3
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    centers = torch.nn.functional.normalize(torch.randn(k, d), dim=-1)
    y = torch.arange(k).repeat_interleave(n_per)
    x = centers[y] + spread * torch.randn(len(y), d) / d ** 0.5
    return x, y, centers


def test_zeroshot_from_embeddings_matches_manual_argmax() -> None:
    x, y, centers = _clusters(30, 4)
    res = zeroshot_from_embeddings(x, centers, y)
    manual = (torch.nn.functional.normalize(x, dim=-1) @ centers.T).argmax(-1)
    assert torch.equal(res.predictions, manual)
    assert res.accuracy == pytest.approx(float((manual == y).float().mean()))
    assert res.accuracy > 0.9
    with pytest.raises(ValueError, match="label"):
        prompts_for(["a"], "no placeholder")
    with pytest.raises(ValueError, match="shapes"):
        zeroshot_from_embeddings(x, centers[:, :3], y)


def test_probe_and_few_shot_on_clusters() -> None:
    x, y, _ = _clusters(40, 6)
    xt, yt = x + 0.05 * torch.randn_like(x), y
    assert linear_probe(x, y, xt, yt) > 0.9
    for method in ("proto", "probe"):
        r = few_shot(x, y, xt, yt, n_way=None, k_shot=5, episodes=5, method=method)  # type: ignore[arg-type]
        assert r.n_way == 6 and r.mean > 0.85
    r = few_shot(x, y, xt, yt, n_way=3, k_shot=2, episodes=4,
                 generator=torch.Generator().manual_seed(3))
    assert r.n_way == 3 and 0.0 <= r.mean <= 1.0
    with pytest.raises(ValueError, match="n_way"):
        few_shot(x, y, xt, yt, n_way=10)
    with pytest.raises(ValueError, match="k_shot"):
        few_shot(x, y, xt, yt, k_shot=41)


@pytest.fixture(scope="module")
def bbc_small() -> tuple:
    return load_bbc(limit_per_class=4)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_and_patches(bbc_small) -> None:
    from sentence_transformers import SentenceTransformer

    enc = load_minilm(max_length=128)
    texts = [t[:300] for t in bbc_small.texts[::4]]  # short: no truncation difference
    ours = enc.encode(texts)
    st = SentenceTransformer(str(enc.model.name_or_path), device="cpu")
    ref = torch.as_tensor(st.encode(texts, normalize_embeddings=True))
    assert torch.nn.functional.cosine_similarity(ours, ref).min().item() > 0.9999

    plain = zeroshot_text(enc, bbc_small.texts, bbc_small.labels, bbc_small.classes, BBC_PROMPT)
    assert plain.accuracy >= 0.6  # 84% on the full set; 20 articles leave room for noise
    patch_model(enc.model, ApproxConfig(hidden_act="sig", softmax_act="quant",
                                        emulate_mpc=True))
    approx = enc.encode(texts)
    assert torch.nn.functional.cosine_similarity(approx, ours).min().item() > 0.95


@pytest.mark.slow
def test_finetune_updates_encoder_only(bbc_small) -> None:
    enc = load_minilm(max_length=32)
    patch_model(enc.model, ApproxConfig(hidden_act="sig"))
    emb_before = enc.model.embeddings.word_embeddings.weight.clone()
    w_before = enc.model.encoder.layer[0].intermediate.dense.weight.clone()
    data = bbc_small.subset(list(range(0, 20, 2)))
    rep = finetune_text(enc, data, BBC_PROMPT, FinetuneConfig(batch_size=5, lr=1e-4, seed=1))
    assert rep.steps == 2 and np.isfinite(rep.first_loss) and np.isfinite(rep.last_loss)
    assert torch.equal(enc.model.embeddings.word_embeddings.weight, emb_before)
    assert not torch.equal(enc.model.encoder.layer[0].intermediate.dense.weight, w_before)
    assert not enc.model.training
    assert not any(p.requires_grad for p in enc.model.parameters())
    with pytest.raises(ValueError, match="lr"):
        FinetuneConfig(lr=2.0)
