"""The enclave split of corpus models through the captured plan (tee.from_plan): the float
program equals the model, and the int8 split over the in-memory transport agrees with it."""

import pytest
import torch

from secinfer.net import run_in_memory
from secinfer.tee import Device, Enclave, MonitorConfig, UnsupportedOp, calibrate, provision
from secinfer.tee.from_plan import capture_any

from .corpus import CORPUS, build

TEE_OK = sorted(set(CORPUS) - {"mlp_mixer"})


@pytest.mark.parametrize("name", TEE_OK)
def test_program_from_plan_equals_model(name):
    model, shape = build(name)
    prog = capture_any(model, shape)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x).reshape(3, -1)
    assert torch.allclose(prog.run(x).reshape(3, -1), ref, atol=1e-9)


def test_token_linear_is_refused_naming_the_layer():
    model, shape = build("mlp_mixer")
    with pytest.raises(UnsupportedOp, match="linear layer .* 3-d input"):
        capture_any(model, shape)


@pytest.mark.parametrize("name", ["bn_after_relu", "squeeze_excite", "shape_check"])
def test_int8_split_of_a_user_model_matches_its_quantized_plaintext(name):
    torch.set_num_threads(1)
    model, shape = build(name)
    g = torch.Generator().manual_seed(4)
    qm = calibrate(capture_any(model, shape), [torch.randn(64, *shape, generator=g)])
    bundle = provision(qm)
    x = torch.randn(8, *shape, generator=g)

    def party(s):
        if s.party_id == 0:
            enc = Enclave(bundle, MonitorConfig(2, 2))
            try:
                return enc.infer(s, 1, x)
            finally:
                enc.stop(s, 1)
        return Device(bundle.device_bundle(), None).serve(s, 0)

    out = run_in_memory(2, party, timeout=60)[0]
    expect = qm.forward(x)
    assert torch.equal(out, expect), (out - expect).abs().max()
    with torch.no_grad():
        ref = model.float()(x).reshape(8, -1)
    print(f"tee {name}: int8 split vs float model max logit error "
          f"{(out.reshape(8, -1) - ref).abs().max().item():.3g}")
