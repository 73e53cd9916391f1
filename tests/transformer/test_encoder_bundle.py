"""compile_encoder_parts: the two server shares reconstruct the encoded weights; helper has none."""

from pathlib import Path

import torch

from secinfer.mpc.engine import encode
from secinfer.transformer.bundle import compile_encoder_parts, load_encoder_shares
from secinfer.transformer.weights import Embeddings, random_encoder


def test_shares_reconstruct(tmp_path: Path) -> None:
    enc = random_encoder(1, 8, 2, 16)
    g = torch.Generator().manual_seed(0)
    emb = Embeddings(torch.randn(20, 8, generator=g, dtype=torch.float64),
                     torch.randn(64, 8, generator=g, dtype=torch.float64),
                     torch.randn(2, 8, generator=g, dtype=torch.float64),
                     torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64),
                     1e-12)
    dirs = compile_encoder_parts(emb, enc, tmp_path, max_length=32)
    d0, s0 = load_encoder_shares(dirs[0])
    _, s1 = load_encoder_shares(dirs[1])
    d2, s2 = load_encoder_shares(dirs[2])
    assert s0 is not None and s1 is not None and s2 is None and d0 == d2
    w = enc.layers[0].qkv_w
    assert torch.equal(s0["0.qkv_w"] + s1["0.qkv_w"], encode(w, 16))
    assert not torch.equal(s1["0.qkv_w"], encode(w, 16))
