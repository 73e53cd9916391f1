"""Linear ops on shares vs float64 PyTorch, over both transports, on fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F

from secinfer.mpc import MPCConfig, MPCEngine, Share

F_BITS = 12
ULP = 2.0**-F_BITS


def _share_from_p0(eng, x, shape):
    return eng.share_input(x if eng.role == 0 else None, owner=0, shape=shape)


def _prog_matmul(s, x, y):
    eng = MPCEngine(s, MPCConfig(frac_bits=F_BITS))
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    ys = eng.share_input(y if eng.role == 1 else None, 1, tuple(y.shape))
    return eng.reveal(eng.matmul(xs, ys), to=0)


@pytest.mark.parametrize("shape", [((5, 7), (7, 3)), ((2, 4, 6), (6, 5)), ((3, 1, 8), (3, 8, 2))])
def test_matmul(run3, shape):
    x, y = torch.randn(shape[0], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    out = run3(_prog_matmul, x, y)[0]
    k = shape[0][-1]
    assert (out - x @ y).abs().max() <= (k + 2) * ULP * 4


def _prog_conv(s, x, w, b, kw):
    eng = MPCEngine(s, MPCConfig(frac_bits=F_BITS))
    xs = eng.share_input(x if eng.role == 1 else None, 1, tuple(x.shape))
    ws = eng.share_input(w if eng.role == 0 else None, 0, tuple(w.shape))
    bs = eng.share_input(b if eng.role == 0 else None, 0, tuple(b.shape))
    pw = eng.prepare_weight(ws)
    return eng.reveal(eng.conv2d(xs, pw, bs, **kw), to=1)


@pytest.mark.parametrize("kw,cin,cout", [
    ({"stride": 1, "padding": 1}, 3, 4),
    ({"stride": 2, "padding": 0, "dilation": 2}, 4, 6),
    ({"stride": 1, "padding": 1, "groups": 4}, 4, 4),   # depthwise
    ({"stride": (2, 1), "padding": (1, 0), "groups": 2}, 4, 6),
])
def test_conv2d(run3, kw, cin, cout):
    groups = kw.get("groups", 1)
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64)
    w = torch.randn(cout, cin // groups, 3, 3, dtype=torch.float64) * 0.3
    b = torch.randn(cout, dtype=torch.float64)
    out = run3(_prog_conv, x, w, b, kw)[1]
    ref = F.conv2d(x, w, b, **kw)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 40 * ULP


def _prog_local(s, x, y, c):
    eng = MPCEngine(s, MPCConfig(frac_bits=F_BITS))
    xs, ys = _share_from_p0(eng, x, tuple(x.shape)), _share_from_p0(eng, y, tuple(y.shape))
    outs = {
        "add": xs + ys, "sub": xs - ys, "neg": -xs,
        "mulpub": eng.mul_public(xs, c), "addpub": eng.add_public(xs, c),
        "mul": eng.mul(xs, ys), "sum": xs.sum(1), "perm": xs.permute(1, 0),
        "pad": xs.pad((1, 2)),
    }
    return {k: eng.reveal(v, to=0) for k, v in outs.items()}


def test_elementwise_and_local_ops(run3):
    x, y = torch.randn(6, 5, dtype=torch.float64) * 3, torch.randn(6, 5, dtype=torch.float64)
    c = torch.randn(6, 5, dtype=torch.float64)
    r = run3(_prog_local, x, y, c)[0]
    ref = {"add": x + y, "sub": x - y, "neg": -x, "mulpub": x * c, "addpub": x + c,
           "mul": x * y, "sum": x.sum(1), "perm": x.T, "pad": F.pad(x, (1, 2))}
    for k, v in ref.items():
        assert (r[k] - v).abs().max() <= 8 * ULP, k


def test_linear_with_bias_known_cost():
    from secinfer.net import run_in_memory

    x, w, b = torch.randn(4, 10), torch.randn(3, 10), torch.randn(3)

    def prog(s):
        eng = MPCEngine(s, MPCConfig(frac_bits=F_BITS))
        xs = eng.share_input(x if eng.role == 0 else None, 0, (4, 10))
        ws = eng.share_input(w if eng.role == 1 else None, 1, (3, 10))
        bs = eng.share_input(b if eng.role == 1 else None, 1, (3,))
        pw = eng.prepare_weight(ws)
        with s.op("linear"):
            y = eng.linear(xs, pw, bs)
        return eng.reveal(y, to=0), s.report()

    (out, r0), (_, r1), (_, r2) = run_in_memory(3, prog)
    assert (out - (x.double() @ w.double().T + b.double())).abs().max() < 20 * ULP
    # documented cost of a prepared linear: each compute party sends 8 * |x| bytes, the helper
    # sends 8 * |y| bytes to P1; one round for P0 and P1
    assert r0["linear"]["bytes_sent"] == 8 * 40 and r1["linear"]["bytes_sent"] == 8 * 40
    assert r2["linear"]["bytes_sent"] == 8 * 12 and r2["linear"]["per_peer_sent"] == {"1": 96}
    assert r0["linear"]["rounds"] == 1 and r1["linear"]["rounds"] == 1


def test_matmul_known_cost():
    from secinfer.net import run_in_memory

    def prog(s):
        eng = MPCEngine(s, MPCConfig())
        a = eng.share_input(torch.ones(4, 5) if eng.role == 0 else None, 0, (4, 5))
        b = eng.share_input(torch.ones(5, 6) if eng.role == 0 else None, 0, (5, 6))
        with s.op("mm"):
            eng.matmul(a, b)
        return s.report()["mm"]

    r0, r1, r2 = run_in_memory(3, prog)
    assert r0["bytes_sent"] == r1["bytes_sent"] == 8 * (20 + 30)
    assert r2["bytes_sent"] == 8 * 24
    assert r0["rounds"] == r1["rounds"] == 1 and r2["rounds"] == 0


def test_share_type_guards_scale():
    a = Share(torch.zeros(2, dtype=torch.int64), 12)
    with pytest.raises(ValueError, match="scales differ"):
        _ = a + Share(torch.zeros(2, dtype=torch.int64), 24)


def test_encode_rejects_nan_and_overflow():
    from secinfer.mpc import encode

    with pytest.raises(ValueError, match="NaN"):
        encode(torch.tensor([float("nan")]), 12)
    with pytest.raises(ValueError, match="exceeds"):
        encode(torch.tensor([2.0**55]), 12)


def test_conv_known_cost():
    from secinfer.net import run_in_memory

    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(5, 3, 3, 3)

    def prog(s):
        eng = MPCEngine(s, MPCConfig())
        xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
        ws = eng.share_input(w if eng.role == 1 else None, 1, tuple(w.shape))
        with s.op("prep"):
            pw = eng.prepare_weight(ws)
        with s.op("conv"):
            eng.conv2d(xs, pw, stride=1, padding=1)
        return s.report()

    r0, r1, r2 = run_in_memory(3, prog)
    # preparation opens W - B once: 8 |W| bytes each way, one round
    assert r0["prep"]["bytes_sent"] == r1["prep"]["bytes_sent"] == 8 * w.numel()
    assert r0["prep"]["rounds"] == 1
    # per inference: 8 |x| bytes from each compute party, 8 |y| from the helper to P1
    assert r0["conv"]["bytes_sent"] == r1["conv"]["bytes_sent"] == 8 * x.numel()
    assert r2["conv"]["bytes_sent"] == 8 * 2 * 5 * 8 * 8
    assert r0["conv"]["rounds"] == r1["conv"]["rounds"] == 1
