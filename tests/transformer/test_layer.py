"""Secure encoder layers vs the float64 plaintext reference, on fresh random weights."""

import pytest
import torch

from secinfer.mpc import MPCEngine
from secinfer.net import run_in_memory, run_tls_threads
from secinfer.transformer import (
    EncoderDims,
    SecureTransformerConfig,
    encoder_forward,
    mean_pool,
    plain_encoder,
    random_encoder,
    sentence_embedding_program,
    share_encoder,
)


def _layer_prog(s, enc, x, keep, cfg):
    torch.set_num_threads(1)
    eng = MPCEngine(s, cfg.mpc_config())
    model = share_encoder(eng, enc if eng.role == 0 else None, 0, EncoderDims.of(enc))
    xs = eng.share_input(x if eng.role == 1 else None, 1, tuple(x.shape))
    return eng.reveal(encoder_forward(eng, model, xs, keep, cfg), to=1)


def _inputs(b=2, s=9, h=32):
    x = torch.randn(b, s, h, dtype=torch.float64)
    keep = torch.ones(b, s, dtype=torch.int64)
    keep[1, 6:] = 0  # padding in the second sequence
    return x, keep


@pytest.mark.parametrize("hidden_act", ["gelu", "sig"])
@pytest.mark.parametrize("softmax_act", ["softmax", "quant"])
def test_secure_layer_matches_plaintext(hidden_act, softmax_act):
    enc = random_encoder(1, 32, 4, 64)
    x, keep = _inputs()
    cfg = SecureTransformerConfig(hidden_act=hidden_act, softmax_act=softmax_act)
    out = run_in_memory(3, _layer_prog, enc, x, keep, cfg, timeout=120.0)[1]
    ref = plain_encoder(enc, x, keep, hidden_act, softmax_act)
    err = (out - ref).abs()[keep.bool()]
    assert err.max() <= 1.5e-2, err.max()
    assert err.mean() <= 3e-3, err.mean()


def test_two_layers_over_tls_with_user_and_pooling():
    """4 parties over mutual TLS: the user shares embeddings, gets the pooled embedding."""
    enc = random_encoder(2, 32, 4, 64)
    x, keep = _inputs()
    dims = EncoderDims.of(enc)
    cfg = SecureTransformerConfig(drelu_high_bits=32)
    party_args = [(enc, None, None), (None, None, None), (None, None, None), (None, x, keep)]
    outs = run_tls_threads(4, sentence_embedding_program, dims, cfg, (2, 9),
                           party_args=party_args, timeout=120.0)
    assert outs[0] is None and outs[2] is None
    ref = mean_pool(plain_encoder(enc, x, keep), keep)
    cos = torch.nn.functional.cosine_similarity(outs[3], ref, dim=-1)
    assert (cos >= 0.999).all(), cos
    assert (outs[3].norm(dim=-1) - 1).abs().max() <= 5e-3


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_act"):
        SecureTransformerConfig(hidden_act="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        SecureTransformerConfig(drelu_high_bits=40)


def test_benchmark_program_reports_costs_and_output():
    """The benchmark's party program on a tiny random encoder: costs and a correct output."""
    from secinfer.transformer.programs import encoder_latency, random_input

    kw = {"n_layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "seq": 6, "weight_seed": 5,
          "input_seed": 6, "reps": 2, "drelu_high_bits": 32}
    outs = run_in_memory(3, encoder_latency, timeout=120.0, **kw)
    for o in outs:
        assert o["seconds"].shape == (2,) and int(o["rounds"]) > 0
    assert int(outs[0]["rounds"]) > 30
    assert int(outs[0]["bytes_sent"]) > 0 and int(outs[0]["setup_bytes"]) > 0
    enc = random_encoder(1, 16, 2, 32, torch.Generator().manual_seed(5))
    x = random_input(1, 6, 16, 6)
    ref = plain_encoder(enc, x, torch.ones(1, 6, dtype=torch.int64))
    assert (outs[1]["output"] - ref).abs().max() <= 1.5e-2
