"""The owner's output policy on shares, and plan-sized frame limits (in memory: fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from secinfer.models import zoo
from secinfer.models.bundle import BundleError, OutputPolicy, compile_model, load_bundle
from secinfer.models.secure import SecureModel
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.engine import decode, encode
from secinfer.net import FrameError, Topology, run_in_memory
from secinfer.serve.limits import plan_sizes, serve_limits
from secinfer.serve.output import decode_policy_output, policy_output


def _policy_prog(s, logits, mode, k):
    engine = MPCEngine(s, MPCConfig())
    y = engine.share_input(logits if s.party_id == 0 else None, 0, tuple(logits.shape))
    out = policy_output(engine, y, OutputPolicy(mode, k))
    return None if engine.is_helper else out.data


def _reconstruct(logits, mode, k=None):
    shares = run_in_memory(3, _policy_prog, logits, mode, k)
    return shares[0], shares[1], shares[0] + shares[1]


def test_label_and_topk_on_shares_equal_plaintext():
    g = torch.Generator().manual_seed(5)  # test data only, not a secret
    logits = torch.randn(6, 10, generator=g, dtype=torch.float64) * 4
    s0, s1, label = _reconstruct(logits, "label")
    assert label.shape == (6,) and torch.equal(label, encode(logits, 12).argmax(1))
    # each share alone is uniform-looking, nowhere near the small index it hides
    assert bool((s0.abs() > 2**40).all()) and bool((s1.abs() > 2**40).all())
    _, _, top3 = _reconstruct(logits, "topk", 3)
    assert top3.shape == (6, 3)
    assert torch.equal(top3, encode(logits, 12).topk(3, dim=1).indices)
    _, _, full = _reconstruct(logits, "logits")
    assert torch.allclose(decode(full, 12), logits, atol=2**-12)


def test_topk_breaks_ties_towards_the_lower_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [-2.0, -2.0, -2.0, -2.0, -1.0]],
                          dtype=torch.float64)
    _, _, top = _reconstruct(logits, "topk", 4)
    assert top.tolist() == [[1, 2, 4, 0], [4, 0, 1, 2]]
    _, _, label = _reconstruct(logits, "label")
    assert label[1].item() == 4 and label[0].item() in (1, 2, 4)


def test_policy_is_validated_and_stored_in_every_bundle(tmp_path):
    for bad, msg in ((("top", None, None), "output mode must be one of"),
                     (("topk", None, None), "needs an integer k >= 1"),
                     (("label", 2, None), "only meaningful for output mode topk"),
                     (("label", None, 0), "quota must be a positive integer")):
        with pytest.raises(ValueError, match=msg):
            OutputPolicy(*bad)
    pol = OutputPolicy("topk", 2, quota=50)
    dirs = compile_model(zoo.build("lenet").eval(), (1, 28, 28), tmp_path / "b",
                         output_policy=pol)
    for i, d in enumerate(dirs):
        assert OutputPolicy.from_manifest(load_bundle(d, expect_party=i)[2]) == pol
    m = dirs[2] / "manifest.json"
    m.write_text(m.read_text().replace('"quota": 50', '"quota": -3'))
    with pytest.raises(BundleError, match="quota must be a positive integer"):
        load_bundle(dirs[2])


def test_decode_rejects_indices_out_of_range():
    with pytest.raises(ValueError, match="outside 0..9"):
        decode_policy_output(torch.tensor([3, 12]), OutputPolicy("label"), 12, 10)


def _plan_prog(s, root, batch, policy):
    plan, shares, _ = load_bundle(Path(root) / f"party{s.party_id}")
    engine = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits))
    model = SecureModel(engine, plan, shares)
    shape = (batch, *plan.input_shape)
    x = torch.zeros(shape) if s.party_id == 0 else None
    y = model.forward(engine.share_input(x, 0, shape))
    out = policy_output(engine, y, policy)
    return None if engine.is_helper else out.data


def test_plan_sized_server_frames_carry_an_inference_and_stop_a_larger_frame(tmp_path):
    compile_model(zoo.build("fmnist_cnn").eval(), (1, 28, 28), tmp_path / "b")
    plan = load_bundle(tmp_path / "b" / "party2")[0]
    sizes = plan_sizes(plan)
    assert sizes.output_shape == (10,) and sizes.input_numel == 784
    topo = Topology(parties=(), ca_cert=tmp_path / "ca.pem", max_batch=2)
    lim = serve_limits(plan, topo, sizes)
    assert lim.max_batch == 2 and lim.user_frame == max(8 * 2 * 784, 4096)
    assert lim.server_frame < 1 << 30  # sized from the plan: far below the old 64 GiB
    for policy in (OutputPolicy(), OutputPolicy("topk", 3)):
        out = run_in_memory(3, _plan_prog, str(tmp_path / "b"), 2, policy,
                            max_frame_bytes=lim.server_frame)
        assert out[0] is not None and out[0].shape[0] == 2
    with pytest.raises(FrameError, match="exceeds the frame limit max_frame_bytes = 4096"):
        run_in_memory(3, _plan_prog, str(tmp_path / "b"), 2, OutputPolicy(),
                      max_frame_bytes=4096, timeout=10)
    # an explicit [limits] max_frame_bytes replaces both plan bounds
    fixed = serve_limits(plan, Topology(parties=(), ca_cert=tmp_path / "ca.pem",
                                        max_frame_bytes=12345), sizes)
    assert (fixed.user_frame, fixed.server_frame) == (12345, 12345)
