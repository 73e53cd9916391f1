"""Secure block ReLU agrees with the plaintext one (and with the knapsack's training module)."""

import torch

from secinfer.models.block_relu import BlockReLU
from secinfer.models.block_relu import block_relu as block_relu_plain
from secinfer.models.capture import capture
from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.mpc.block_relu import block_relu
from secinfer.net import run_in_memory

F_BITS = 12


def _prog(s, x, sizes, cfg):
    eng = MPCEngine(s, cfg)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    with s.op("brelu"):
        y = block_relu(eng, xs, sizes)
    return eng.reveal(y, to=0), s.report()


def _sizes(c):
    options = [[1, 1], [2, 2], [3, 3], [0, 1], [1, 0], [2, 3], [7, 7]]
    return [options[i % len(options)] for i in range(c)]


def test_secure_block_relu_matches_plaintext_sign_pattern():
    x = torch.randn(2, 14, 7, 9, dtype=torch.float64) * 3
    sizes = _sizes(14)
    ref = block_relu_plain(x, sizes)
    out, report = run_in_memory(3, _prog, x, sizes, MPCConfig(frac_bits=F_BITS))[0]
    assert (out - ref).abs().max() <= 2.0**-F_BITS
    # the training module (straight-through BlockReLU) has the same forward semantics
    mod = BlockReLU(torch.tensor(sizes, dtype=torch.int32))
    assert torch.allclose(mod(x), ref)


def test_block_relu_with_approximate_drelu_and_fewer_comparisons():
    x = torch.randn(1, 8, 12, 12, dtype=torch.float64)
    sizes = [[2, 2]] * 8
    cfg = MPCConfig(frac_bits=F_BITS, drelu_high_bits=40, drelu_low_bits=4)
    out, rep = run_in_memory(3, _prog, x, sizes, cfg)[0]
    ref = block_relu_plain(x, sizes)
    sums = torch.nn.functional.avg_pool2d(x, 2) * 4
    far = (sums.abs() > 2.0 ** (4 - F_BITS)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert (out - ref)[far].abs().max() <= 2.0**-F_BITS
    _, full = run_in_memory(3, _prog, x, [[1, 1]] * 8, MPCConfig(frac_bits=F_BITS))[0]
    assert rep["brelu"]["bytes_sent"] * 4 < full["brelu"]["bytes_sent"]


def test_capture_recognises_block_relu_modules():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), BlockReLU(
        torch.tensor([[1, 1], [2, 2], [0, 1]], dtype=torch.int32)))
    plan, _ = capture(model, (1, 6, 6))
    op = next(o for o in plan.ops if o.kind == "block_relu")
    assert op.params["block_sizes"] == [[1, 1], [2, 2], [0, 1]]
    assert op.params["drelus"] == 16 + 4
