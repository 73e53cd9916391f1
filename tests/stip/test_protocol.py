"""The P3 <-> P2 wire protocol over the runtime's in-memory transport, and bad requests."""

from __future__ import annotations

import pytest
import torch

from secinfer.net import run_in_memory
from secinfer.stip import (
    OPS,
    CloudHandler,
    SessionLink,
    StipError,
    StipUser,
    build_cloud,
    serve_session,
    transform_model,
)

from . import tiny


def _program(session, role, cloud_state, cloud_cfg, key, ids):
    if session.party_id == 0:  # the cloud
        cloud = build_cloud(key.model_class, cloud_cfg, cloud_state)
        return serve_session(session, 1, cloud, idle_timeout=60.0)
    link = SessionLink(session, 0)
    user = StipUser(key, link)
    toks = user.generate(ids, 8)
    with pytest.raises(StipError, match="expected float32 embeddings"):
        link.call("lm_step", [torch.zeros(1, 1, 5), torch.ones(1, 9, dtype=torch.int64)])
    logits = user.last_logits(ids)  # the session goes on after a refused request
    link.close()
    return toks, logits, link.cloud_seconds


@torch.inference_mode()
def test_generation_over_a_session_keeps_the_cache_on_the_cloud() -> None:
    m = tiny.llama()
    cloud_state, cloud_cfg, key = transform_model(m)
    ids = torch.randint(3, 150, (2, 5))
    served, (toks, logits, secs) = run_in_memory(
        2, _program, None, cloud_state, cloud_cfg, key, ids, timeout=60.0)
    assert served == 9  # lm_start + 7 lm_step + the final lm_start
    ref = []
    out = m(input_ids=ids, use_cache=True)
    for _ in range(8):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        ref.append(tok)
        out = m(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    assert torch.equal(toks, torch.cat(ref, dim=1))
    got = logits
    want = m(ids).logits[:, -1]
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert secs > 0


def test_handler_refuses_bad_requests_with_named_problems() -> None:
    m = tiny.gpt2()
    cloud_state, cloud_cfg, key = transform_model(m)
    h = CloudHandler(build_cloud(key.model_class, cloud_cfg, cloud_state))
    x = torch.randn(1, 3, 48)
    one = torch.ones(1, 3, dtype=torch.int64)
    with pytest.raises(StipError, match="lm_step before lm_start"):
        h.handle(OPS["lm_step"], [x[:, :1], one[:, :1]])
    with pytest.raises(StipError, match="not served by a causal_lm model"):
        h.handle(OPS["encode"], [x, one])
    with pytest.raises(StipError, match="unknown op code 42"):
        h.handle(42, [x, one])
    with pytest.raises(StipError, match="takes 2 tensors"):
        h.handle(OPS["lm_start"], [x])
    with pytest.raises(StipError, match=r"shape \(batch, seq>0, 48\)"):
        h.handle(OPS["lm_start"], [torch.randn(1, 3, 47), one])
    with pytest.raises(StipError, match="attention mask of shape"):
        h.handle(OPS["lm_start"], [x, torch.ones(1, 4, dtype=torch.int64)])
    h.handle(OPS["lm_start"], [x, one])
    with pytest.raises(StipError, match=r"shape \(1, 4\)"):
        h.handle(OPS["lm_step"], [x[:, :1], one])


def test_user_rejects_bad_inputs_locally() -> None:
    m = tiny.vit()
    cloud_state, cloud_cfg, key = transform_model(m)
    user = StipUser(key, None)  # type: ignore[arg-type]  # never reaches the link
    with pytest.raises(ValueError, match="images must be 3x16x16"):
        user.embed_image(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="does not take token ids"):
        user.embed_tokens(torch.zeros(1, 3, dtype=torch.int64))
    m2 = tiny.gpt2()
    _, _, key2 = transform_model(m2)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 150\)"):
        StipUser(key2, None).embed_tokens(torch.tensor([[3, 150]]))  # type: ignore[arg-type]
