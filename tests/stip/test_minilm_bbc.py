"""Real all-MiniLM-L6-v2 weights on a bounded BBC News subset: STIP gives the same embeddings
(1e-5 relative) and the same classification accuracy as plaintext."""

from __future__ import annotations

import pytest
import torch

from secinfer.stip import LocalLink, StipUser, build_cloud, transform_model
from secinfer.stip.bbc import embed_texts, head_accuracy, load_bbc_news, minilm_path

pytestmark = pytest.mark.slow


def test_minilm_bbc_subset_same_accuracy() -> None:
    from sklearn.model_selection import train_test_split
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True).eval()
    data = load_bbc_news(per_class=25)
    tr, te = train_test_split(range(len(data.texts)), test_size=0.3, stratify=data.labels,
                              random_state=0)
    cloud_state, cloud_cfg, key = transform_model(model)
    user = StipUser(key, LocalLink(build_cloud(key.model_class, cloud_cfg, cloud_state)))

    def plain(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    def stip(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return user.encode(ids, mask)[0]

    texts = [data.texts[i] for i in tr], [data.texts[i] for i in te]
    train_x = embed_texts(texts[0], tok, plain)
    test_plain = embed_texts(texts[1], tok, plain)
    test_stip = embed_texts(texts[1], tok, stip)
    err = float((test_stip - test_plain).abs().max() / test_plain.abs().max())
    assert err < 1e-5
    acc = head_accuracy(train_x, [data.labels[i] for i in tr],
                        {"plain": test_plain, "stip": test_stip}, [data.labels[i] for i in te])
    assert acc["stip"] == acc["plain"]
    assert acc["plain"] > 0.8  # the real model, not noise: 5 classes
