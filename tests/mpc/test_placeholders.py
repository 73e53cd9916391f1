"""The helper's placeholders: shapes only, no meta-tensor arithmetic, no compiler imports.

torch evaluates meta-device arithmetic (and ``torch.broadcast_shapes``) through Python
reference code that imports ``torch._dynamo`` and sympy on first use: 2-5 s that used to land
inside the helper's first request, while both compute parties waited.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from secinfer.models import zoo
from secinfer.models.block_relu import block_relu as block_relu_plain
from secinfer.models.block_spec import load_spec
from secinfer.models.bundle import compile_model
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.block_relu import block_relu
from secinfer.mpc.engine import encode
from secinfer.mpc.share import Share, broadcast_shape, cat, meta
from secinfer.net import run_in_memory

REPO = Path(__file__).resolve().parents[2]


def _pair(*shape: int) -> tuple[Share, Share]:
    real = Share(torch.arange(int(torch.Size(shape).numel())).reshape(shape), 12)
    return real, Share(meta(shape), 12)


@pytest.mark.parametrize("a, b", [((2, 3, 4), (4,)), ((1, 3, 1), (2, 1, 5)), ((0, 3), (1, 3)),
                                  ((), (2, 2))])
def test_broadcast_shape_is_torchs(a, b):
    assert broadcast_shape(a, b) == torch.broadcast_shapes(a, b)


def test_broadcast_shape_refuses_what_torch_refuses():
    with pytest.raises(ValueError, match="do not broadcast"):
        broadcast_shape((2, 3), (4, 3))


def test_placeholder_ops_give_the_shapes_of_real_ones():
    x, xp = _pair(2, 3, 5, 6)
    b, bp = _pair(3, 1, 1)
    cases = [
        (x + b, xp + bp), (x - b, xp - bp), (-x, -xp), (x.mul_int(3), xp.mul_int(3)),
        (x.sum(dim=(-1, -2), keepdim=True), xp.sum(dim=(-1, -2), keepdim=True)),
        (x.sum(dim=1), xp.sum(dim=1)), (x.sum(), xp.sum()),
        (x.pad((1, 2, 0, 3)), xp.pad((1, 2, 0, 3))),
        (cat([x, x], 1), cat([xp, xp], 1)), (cat([x, x], -1), cat([xp, xp], -1)),
    ]
    for real, ph in cases:
        assert ph.is_placeholder and ph.shape == real.shape and ph.frac_bits == real.frac_bits


def _brelu(s, x, sizes):
    eng = MPCEngine(s, MPCConfig(frac_bits=12))
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    y = block_relu(eng, xs, sizes)
    if eng.is_helper:
        return tuple(y.shape)
    other = s.exchange({1 - eng.role: y.data})[1 - eng.role]
    return y.data + other  # the ring elements, to compare bit for bit


@pytest.mark.parametrize("sizes", [
    [[2, 2], [3, 1], [28, 28], [1, 1]],       # every channel gated
    [[0, 1], [1, 0], [0, 1], [1, 0]],         # no comparison at all
    [[1, 0], [2, 3], [0, 1], [5, 4]],         # mixed, partial border patches
])
def test_block_relu_is_exactly_the_gated_input(sizes):
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64) * 3
    outs = run_in_memory(3, _brelu, x, sizes)
    gate = block_relu_plain(x, sizes) != 0
    keep = torch.tensor([s == [0, 1] for s in sizes]).reshape(1, -1, 1, 1)
    want = encode(x, 12) * (gate | keep)
    assert torch.equal(outs[0], want) and torch.equal(outs[1], want)
    assert outs[2] == tuple(x.shape)


_NO_COMPILER = textwrap.dedent("""
    import sys
    from secinfer.models.bundle import load_bundle
    from secinfer.models.secure import SecureModel
    from secinfer.mpc import MPCConfig, MPCEngine
    from secinfer.net import run_in_memory
    import torch

    def prog(s, root):
        plan, shares, _ = load_bundle(f"{root}/party{s.party_id}", expect_party=s.party_id)
        eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits))
        model = SecureModel(eng, plan, shares)
        x = torch.zeros(1, 1, 28, 28) if s.party_id == 0 else None
        model.forward(eng.share_input(x, 0, (1, 1, 28, 28)))

    run_in_memory(3, prog, sys.argv[1], timeout=120.0)
    print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
""")


def test_secure_inference_imports_no_compiler_machinery(tmp_path):
    """A whole block-ReLU ResNet inference, all three parties in one fresh process."""
    spec = load_spec(zoo.asset_path("fmnist_resnet").with_name("fmnist_resnet_spec6.json"))
    compile_model(zoo.pretrained("fmnist_resnet"), (1, 28, 28), tmp_path / "b", relu_spec=spec)
    env = {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _NO_COMPILER, str(tmp_path / "b")], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
