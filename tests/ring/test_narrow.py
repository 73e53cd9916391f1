"""Z_{2^k} for k < 64 (ring/narrow.py): exact against int64 arithmetic reduced mod 2^k on
fresh random inputs over the whole ring, the chunked wide path included, and clear errors."""

from __future__ import annotations

import pytest
import torch

from secinfer.ring.narrow import narrow_conv2d, narrow_linear, wrap


def _ring(shape, bits):
    half = 1 << (bits - 1)
    x = torch.randint(-half, half, shape, dtype=torch.int64)
    x.view(-1)[:2] = torch.tensor([-half, half - 1])  # both ends of the ring
    return x


def _int8(shape):
    w = torch.randint(-128, 128, shape, dtype=torch.int64)
    w.view(-1)[:2] = torch.tensor([-128, 127])
    return w.to(torch.int8)


def test_wrap_known_answers():
    t = torch.tensor([0, 1, -1, 2**31, -(2**31) - 1, 2**32 + 5, 2**63 - 1, -(2**63)])
    assert wrap(t, 32).tolist() == [0, 1, -1, -(2**31), 2**31 - 1, 5, -1, 0]
    assert wrap(t, 8).tolist() == [0, 1, -1, 0, -1, 5, -1, 0]
    assert torch.equal(wrap(t, 64), t)


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("k", [37, 70_000])  # one float64 call; chunked over features
def test_narrow_linear_is_exact(bits, k):
    x, w = _ring((3, k), bits), _int8((5, k))
    want = wrap(x @ w.to(torch.int64).t(), bits)  # int64 wraps mod 2^64, which 2^bits divides
    assert torch.equal(narrow_linear(x, w, bits), want)
    assert torch.equal(narrow_linear(x.to(torch.int32), w, bits), want)


@pytest.mark.parametrize("groups, cin, k", [(1, 3, 3), (1, 4200, 3), (6, 6, 3), (2, 4, 1)])
def test_narrow_conv2d_is_exact(groups, cin, k):
    bits = 32
    x = _ring((2, cin, 7, 6), bits)
    w = _int8((6, cin // groups, k, k))
    for stride, pad, dil in ((1, 0, 1), (2, 1, 1), (1, 2, 2)):
        want = wrap(torch.nn.functional.conv2d(x, w.to(torch.int64), None, stride, pad, dil,
                                               groups), bits)
        got = narrow_conv2d(x, w, bits, stride, pad, dil, groups)
        assert got.dtype == torch.int64 and torch.equal(got, want)


def test_errors_name_the_problem():
    x = _ring((1, 4), 32)
    with pytest.raises(TypeError, match="int8"):
        narrow_linear(x, torch.ones(2, 4, dtype=torch.int64), 32)
    with pytest.raises(TypeError, match="int32 or int64"):
        narrow_linear(x.double(), _int8((2, 4)), 32)
    with pytest.raises(ValueError, match="at most 46 bits"):
        narrow_linear(x, _int8((2, 4)), 48)
    with pytest.raises(ValueError, match=r"\[2, 64\]"):
        wrap(x, 65)
    with pytest.raises(ValueError, match="x \\(\\.\\.\\., 5\\)"):
        narrow_linear(x, _int8((2, 5)), 32)
    wide = _int8((4, 2000, 5, 5))  # grouped and wider than one exact float64 call
    with pytest.raises(ValueError, match="grouped convolution with fan-in 50000"):
        narrow_conv2d(_ring((1, 4000, 5, 5), 32), wide, 32, groups=2)
