"""Bring your own model: 12 architectures written as their authors write them compile for mpc
without edits, and their secure logits agree with the PyTorch model's."""

import pytest
import torch

from secinfer.models.capture import capture

from ._secure import secure_vs_plain
from .corpus import CORPUS, build


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_model_secure_matches_pytorch(name):
    torch.set_num_threads(1)
    model, shape = build(name)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    plan, weights = capture(model, shape, frac_bits=16)
    with torch.no_grad():
        ref = model.double()(x.double()).reshape(2, -1)
    out, plain = secure_vs_plain(plan, weights, x)
    assert torch.allclose(plain, ref, atol=1e-9)  # the plan computes the model
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item() + 1.0
    print(f"{name}: {len(plan.ops)} ops, max logit error {err:.2e} (logit scale {scale:.2f})")
    # fixed point at f=16 plus the smooth activations' approximations (<= 4e-3 each)
    assert err <= 0.02 * scale, name
    assert torch.equal(out.argmax(-1), ref.argmax(-1)), name
