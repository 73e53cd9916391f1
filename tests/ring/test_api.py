"""The public surface of secinfer.ring: every exported name exists and is documented."""

from __future__ import annotations

import inspect

import torch

import secinfer.ring as ring
from secinfer.ring import FixedPoint


def test_exported_members() -> None:
    assert sorted(ring.__all__) == [
        "DEFAULT_FRAC_BITS",
        "FixedPoint",
        "MAX_TERMS",
        "RingMethod",
        "narrow_conv2d",
        "narrow_linear",
        "resolve_method",
        "ring_conv2d",
        "ring_linear",
        "ring_matmul",
        "ring_mul",
        "wrap",
    ]
    for name in ring.__all__:
        obj = getattr(ring, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_engine_facing_signatures() -> None:
    """The MPC engine calls these positionally/with these keywords; keep them stable."""
    conv = inspect.signature(ring.ring_conv2d)
    assert list(conv.parameters)[:6] == ["x", "w", "stride", "padding", "dilation", "groups"]
    assert [p.default for p in list(conv.parameters.values())[2:6]] == [1, 0, 1, 1]
    assert list(inspect.signature(ring.ring_matmul).parameters)[:2] == ["a", "b"]
    assert list(inspect.signature(ring.ring_linear).parameters)[:2] == ["x", "w"]


def test_decode_is_correctly_rounded_beyond_2_53() -> None:
    fp = FixedPoint(16)
    v = torch.randint(2**53, 2**62, (1000,), dtype=torch.int64)
    v = torch.cat([v, -v, torch.tensor([-(2**63), 2**63 - 1])])
    got = fp.decode(v).tolist()
    want = [float(int(i)) / 2**16 for i in v.tolist()]  # Python rounds int -> float exactly
    assert got == want
