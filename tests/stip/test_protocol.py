"""The user <-> cloud wire protocol over real TLS links to the one serve loop, and bad requests."""

from __future__ import annotations

import threading

import pytest
import torch

from secinfer.net import local_cluster
from secinfer.stip import (
    OPS,
    CloudHandler,
    SessionLink,
    StipError,
    StipUser,
    build_cloud,
    dial_cloud,
    serve,
    transform_model,
)

from . import tiny


@pytest.mark.network
@torch.inference_mode()
def test_generation_over_a_session_keeps_the_cache_on_the_cloud(tmp_path) -> None:
    m = tiny.llama()
    cloud_state, cloud_cfg, key = transform_model(m)
    cloud = build_cloud(key.model_class, cloud_cfg, cloud_state)
    ids = torch.randint(3, 150, (2, 5))
    log: list[str] = []
    with local_cluster(roles=["owner", "cloud", "user"], workdir=tmp_path, timeout=60.0,
                       connect_timeout=10.0) as cluster:
        got: dict[str, int] = {}
        t = threading.Thread(target=lambda: got.update(ended=serve(
            cluster.topology, 1, cloud, max_sessions=1, log=log.append)), daemon=True)
        t.start()
        with dial_cloud(cluster.topology) as session:
            link = SessionLink(session, 1)
            user = StipUser(key, link)
            toks = user.generate(ids, 8)
            with pytest.raises(StipError, match="expected float32 embeddings"):
                link.call("lm_step", [torch.zeros(1, 1, 5), torch.ones(1, 9, dtype=torch.int64)])
            logits = user.last_logits(ids)  # the session goes on after a refused request
            link.close()
        t.join(timeout=30)
    assert not t.is_alive() and got == {"ended": 1}
    # lm_start + 7 lm_step + the final lm_start; the refused request is not counted
    assert any("session ended after 9 requests" in line for line in log), log
    ref = []
    out = m(input_ids=ids, use_cache=True)
    for _ in range(8):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        ref.append(tok)
        out = m(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
    assert torch.equal(toks, torch.cat(ref, dim=1))
    want = m(ids).logits[:, -1]
    assert float((logits - want).abs().max() / want.abs().max()) < 1e-5
    assert link.cloud_seconds > 0


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
