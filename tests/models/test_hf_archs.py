"""One table per Hugging Face architecture (``secinfer.models.hf``), read by STIP's transform and
by the MPC captures alike: both accept the same parameters and refuse the same unknown ones."""

from __future__ import annotations

import pytest
import torch
from tests.stip import tiny

from secinfer.models.hf import ARCHS, spec_for
from secinfer.stip import transform_model
from secinfer.transformer import capture_bert, capture_clip, plain_encoder


def _hf_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1].double()


@pytest.mark.parametrize("arch", ["bert", "bert_cls"])
def test_the_mpc_capture_reads_both_bert_classes_by_role_as_transformers_runs_them(arch):
    model = tiny.BUILDERS[arch]()
    ids = torch.randint(0, 120, (2, 9))
    emb, enc = capture_bert(model)
    ours = plain_encoder(enc, emb(ids), torch.ones(2, 9, dtype=torch.int64))
    assert len(enc.layers) == 2 and enc.heads == 4
    assert float((ours - _hf_hidden(model, ids)).abs().max()) < 1e-5


def test_the_clip_capture_reads_both_towers_by_role():
    model = tiny.clip()
    user, w = capture_clip(model)
    sd = model.state_dict()
    assert torch.equal(w.vision_proj, sd["visual_projection.weight"].double())
    assert torch.equal(user.token, sd["text_model.embeddings.token_embedding.weight"].double())
    assert len(w.vision.layers) == len(w.text.layers) == 2
    # Q carries the folded 1/sqrt(d_head); K is copied as it is
    k0 = sd["vision_model.encoder.layers.0.self_attn.k_proj.weight"].double()
    assert torch.equal(w.vision.layers[0].qkv_w[40:80], k0)


@pytest.mark.parametrize("arch, capture", [("bert", capture_bert), ("clip", capture_clip)])
def test_a_parameter_the_table_does_not_know_is_refused_by_every_backend(arch, capture):
    model = tiny.BUILDERS[arch]()
    model.register_parameter("adapter_scale", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ValueError, match="'adapter_scale'.*models/hf.py"):
        capture(model)
    with pytest.raises(ValueError, match="'adapter_scale'.*models/hf.py"):
        transform_model(model)


def test_a_capture_refuses_another_layout_naming_what_it_takes():
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not a bert layout.*BertModel"):
        capture_bert(tiny.gpt2())
    with pytest.raises(ValueError, match="BertModel is not a clip layout.*CLIPModel"):
        capture_clip(tiny.bert_encoder())


@pytest.mark.parametrize("arch", sorted(tiny.BUILDERS))
def test_every_parameter_of_every_class_has_exactly_one_rule_and_roles_are_unique(arch):
    model = tiny.BUILDERS[arch]()
    spec = spec_for(type(model).__name__)
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    roles = spec.roles(state)
    named = [spec.match(k).role for k in state if spec.match(k).role is not None]
    assert len(roles) == len(named)  # no two parameters fill the same role
    if spec.layout in ("bert", "clip"):
        assert roles, "the captures read these layouts by role"


def test_every_class_names_a_layout_and_a_task():
    assert {s.layout for s in ARCHS.values()} == {"bert", "vit", "clip", "gpt2", "llama"}
    assert all(s.task in ("encoder", "classify", "causal_lm", "clip") for s in ARCHS.values())
