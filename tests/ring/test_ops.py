"""Ring ops equal the naive wrap-around int64 result exactly, for both methods."""

from __future__ import annotations

import pytest
import torch

from secinfer.ring import MAX_TERMS, resolve_method, ring_conv2d, ring_linear, ring_matmul, ring_mul
from secinfer.ring.kernels import auto_choice
from secinfer.ring.limbs import LIMB_BITS, bilinear_mod64, split

from ._reference import EXTREMES, conv2d_ref, matmul_ref, mul_ref, ring_random

METHODS = ["int64", "limbs"]


def test_split_reconstructs_with_balanced_limbs() -> None:
    x = torch.cat([ring_random(20000), torch.tensor(EXTREMES, dtype=torch.int64)])
    limbs = split(x)
    parts = [limbs.lo, limbs.mid, limbs.hi]
    for part, bits in zip(parts, LIMB_BITS, strict=True):
        assert part.min().item() >= -(2 ** (bits - 1))
        assert part.max().item() < 2 ** (bits - 1)
    lo, mid, hi = (p.to(torch.int64) for p in parts)
    assert torch.equal(lo + (mid << 22) + (hi << 42), x)
    assert torch.equal(limbs.lo_mid, limbs.lo + limbs.mid)


MATMUL_SHAPES = [
    ((1, 1), (1, 1)),
    ((5, 7), (7, 3)),
    ((6, 1), (1, 4)),  # K = 1
    ((0, 5), (5, 3)),  # empty rows
    ((4, 0), (0, 3)),  # K = 0
    ((3, 5), (5, 0)),  # empty columns
    ((2, 3, 4, 8), (8, 5)),  # batched left
    ((2, 1, 4, 8), (3, 8, 5)),  # broadcast batch dims
    ((8,), (8, 5)),  # vector @ matrix
    ((4, 8), (8,)),  # matrix @ vector
    ((8,), (8,)),  # dot product
    ((3, 8), (2, 8, 6)),  # matrix @ batch
    ((9, MAX_TERMS), (MAX_TERMS, 7)),  # largest single chunk
    ((9, MAX_TERMS + 1), (MAX_TERMS + 1, 7)),  # smallest chunked
    ((2, 16, 4096), (4096, 8)),  # large K, batched
    ((5, 3000), (3000,)),  # chunked with a vector
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=str)
def test_matmul_exact(method: str, sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    a, b = ring_random(*sa), ring_random(*sb)
    out = ring_matmul(a, b, method=method)  # type: ignore[arg-type]
    ref = matmul_ref(a, b)
    assert out.dtype == torch.int64
    assert out.shape == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("k", [MAX_TERMS, MAX_TERMS + 1, 3 * MAX_TERMS])
def test_limbs_exact_at_the_float64_bound(k: int) -> None:
    """Entries whose low and middle limbs are both most negative make every Karatsuba
    partial sum as large as allowed (K * (2^21 + 2^19)^2 <= 2^53 at K = MAX_TERMS)."""
    worst = (-(2**21) - (2**19 << 22) - (2**21 << 42) + 2**63) % 2**64 - 2**63
    limbs = split(torch.tensor([worst]))
    assert limbs.lo_mid.item() == -(2**21 + 2**19)
    a = torch.full((3, k), worst, dtype=torch.int64)
    b = torch.full((k, 2), worst, dtype=torch.int64)
    b[:, 1] = ring_random(k)
    assert torch.equal(ring_matmul(a, b, method="limbs"), matmul_ref(a, b))


def test_chunking_is_needed_beyond_the_bound() -> None:
    """Without chunking, K = 4 * MAX_TERMS + 1 odd Karatsuba products sum past 2^54 to a value
    that float64 cannot hold (it is 1 mod 8), so one unchunked pass must be wrong."""
    odd = (-(2**21) + 1 - (2**19 << 22) - (2**21 << 42) + 2**63) % 2**64 - 2**63
    k = 4 * MAX_TERMS + 1
    a = torch.full((2, k), odd, dtype=torch.int64)
    b = torch.full((k, 2), odd, dtype=torch.int64)
    ref = matmul_ref(a, b)
    assert not torch.equal(bilinear_mod64(torch.matmul, split(a), split(b)), ref)
    assert torch.equal(ring_matmul(a, b, method="limbs"), ref)


@pytest.mark.parametrize("method", METHODS)
def test_linear_exact(method: str) -> None:
    x, w = ring_random(2, 3, 40), ring_random(11, 40)
    out = ring_linear(x, w, method=method)  # type: ignore[arg-type]
    assert torch.equal(out, matmul_ref(x, w.t()))


def test_mul_exact_with_broadcast() -> None:
    a, b = ring_random(4, 1, 6), ring_random(5, 1)
    assert torch.equal(ring_mul(a, b), mul_ref(a, b))


# (x shape, w shape, stride, padding, dilation, groups, explicit pads for the reference)
CONV_CASES = [
    ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1, (1, 1, 1, 1)),
    ((1, 2, 9, 7), (3, 2, 5, 3), 2, 0, 1, 1, (0, 0, 0, 0)),
    ((2, 2, 10, 9), (4, 2, 3, 3), (2, 1), (1, 2), (2, 1), 1, (1, 1, 2, 2)),
    ((1, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2, (1, 1, 1, 1)),  # groups
    ((2, 5, 7, 7), (5, 1, 3, 3), 1, 1, 1, 5, (1, 1, 1, 1)),  # depthwise
    ((1, 3, 7, 7), (6, 1, 3, 3), 2, 1, 1, 3, (1, 1, 1, 1)),  # depthwise, multiplier 2
    ((2, 6, 5, 5), (4, 6, 1, 1), 1, 0, 1, 1, (0, 0, 0, 0)),  # 1x1
    ((1, 2, 9, 9), (3, 2, 4, 4), 1, "same", 2, 1, (3, 3, 3, 3)),
    ((1, 2, 9, 8), (3, 2, 4, 2), 1, "same", 1, 1, (1, 2, 0, 1)),  # even kernel: asymmetric
    ((1, 2, 6, 6), (3, 2, 3, 3), 1, "valid", 1, 1, (0, 0, 0, 0)),
    ((1, 160, 6, 6), (4, 160, 3, 3), 1, 1, 1, 1, (1, 1, 1, 1)),  # K=1440: channel chunks
    ((1, 300, 5, 5), (4, 150, 3, 3), 2, 1, 1, 2, (1, 1, 1, 1)),  # chunks inside groups
    ((1, 1, 40, 39), (2, 1, 37, 37), (2, 1), 1, 1, 1, (1, 1, 1, 1)),  # 1369 taps: row chunks
    ((0, 3, 6, 6), (4, 3, 3, 3), 1, 1, 1, 1, (1, 1, 1, 1)),  # empty batch
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}-s{c[2]}p{c[3]}d{c[4]}g{c[5]}"
)
def test_conv2d_exact(method: str, case: tuple) -> None:  # type: ignore[type-arg]
    xs, ws, stride, padding, dilation, groups, pads = case
    x, w = ring_random(*xs), ring_random(*ws)
    out = ring_conv2d(x, w, stride, padding, dilation, groups, method=method)
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    ref = conv2d_ref(x, w, pair(stride), pads, pair(dilation), groups)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("method", METHODS)
def test_conv2d_unbatched(method: str) -> None:
    x, w = ring_random(3, 7, 7), ring_random(2, 3, 3, 3)
    out = ring_conv2d(x, w, padding=1, method=method)  # type: ignore[arg-type]
    ref = conv2d_ref(x.unsqueeze(0), w, (1, 1), (1, 1, 1, 1), (1, 1), 1)[0]
    assert torch.equal(out, ref)


def test_auto_method() -> None:
    # on the CPU: what was measured (and cached) for this machine, per op kind
    choice = auto_choice("cpu")
    assert resolve_method("auto", torch.device("cpu")) == choice.matmul
    assert resolve_method("auto", torch.device("cpu"), "conv") == choice.conv
    assert resolve_method("auto", torch.device("cuda", 0)) == "limbs"
    assert resolve_method("limbs", torch.device("cpu")) == "limbs"
    a, b = ring_random(3, 9), ring_random(9, 2)
    assert torch.equal(ring_matmul(a, b), matmul_ref(a, b))


def test_errors_name_the_problem() -> None:
    a = ring_random(3, 4)
    with pytest.raises(TypeError, match="torch.int64"):
        ring_matmul(a, torch.ones(4, 2))
    with pytest.raises(ValueError, match="inner dimensions"):
        ring_matmul(a, ring_random(5, 2))
    with pytest.raises(ValueError, match="at least one dimension"):
        ring_matmul(a, torch.tensor(3))
    with pytest.raises(ValueError, match="ring method"):
        ring_matmul(a, ring_random(4, 2), method="float")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        ring_linear(a, ring_random(4))
    with pytest.raises(ValueError, match="last dimension"):
        ring_linear(a, ring_random(2, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        ring_mul(a, 3)  # type: ignore[arg-type]
    x = ring_random(1, 4, 6, 6)
    with pytest.raises(ValueError, match="channels"):
        ring_conv2d(x, ring_random(2, 3, 3, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        ring_conv2d(x, ring_random(3, 2, 3, 3), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        ring_conv2d(x, ring_random(2, 4, 7, 7))
    with pytest.raises(ValueError, match="stride 1"):
        ring_conv2d(x, ring_random(2, 4, 3, 3), stride=2, padding="same")
    with pytest.raises(ValueError, match="stride"):
        ring_conv2d(x, ring_random(2, 4, 3, 3), stride=0)
    with pytest.raises(ValueError, match="padding"):
        ring_conv2d(x, ring_random(2, 4, 3, 3), padding="full")
    with pytest.raises(ValueError, match="4-D"):
        ring_conv2d(x, ring_random(2, 4, 3))
