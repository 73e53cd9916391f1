"""GR(2^k, d) arithmetic against slow Python-int references; irreducibility; soundness bound."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from secinfer.mpc.prg import PRG
from secinfer.ring.galois import (
    F48,
    GaloisRing,
    find_irreducible,
    format_poly,
    is_irreducible,
)

GR = GaloisRing()  # the default GR(2^64, 48)


@pytest.fixture
def prg() -> PRG:
    return PRG(bytes(16))  # deterministic test inputs


# -- independent references (Python ints, written separately from the module) ----------------


def poly_bits(*exps: int) -> int:
    return sum(1 << e for e in exps)


def gf2_divmod(a: int, b: int) -> tuple[int, int]:
    q = 0
    while a and a.bit_length() >= b.bit_length():
        shift = a.bit_length() - b.bit_length()
        q |= 1 << shift
        a ^= b << shift
    return q, a


def gf2_mul(a: int, b: int) -> int:
    out = 0
    for i in range(b.bit_length()):
        if b >> i & 1:
            out ^= a << i
    return out


def irreducible_by_trial_division(f: int) -> bool:
    n = f.bit_length() - 1
    if n < 1:
        return False
    return all(gf2_divmod(f, g)[1] != 0 for g in range(2, 1 << (n // 2 + 1)))


def irreducible_by_berlekamp(f: int) -> bool:
    """Berlekamp: f is irreducible iff squarefree and Q - I has nullity 1 (Q: x -> x^2)."""
    n = f.bit_length() - 1
    deriv = sum(1 << (i - 1) for i in range(1, n + 1, 2) if f >> i & 1)
    a, b = f, deriv
    while b:
        a, b = b, gf2_divmod(a, b)[1]
    if a != 1:
        return False
    rows = [gf2_divmod(1 << (2 * i), f)[1] ^ (1 << i) for i in range(n)]
    rank = 0
    for bit in range(n):
        pivot = next((r for r in rows if r >> bit & 1), None)
        if pivot is None:
            continue
        rows.remove(pivot)
        rows = [r ^ pivot if r >> bit & 1 else r for r in rows]
        rank += 1
    return n - rank == 1


def ref_mul(a: list[int], b: list[int], f: int, k: int) -> list[int]:
    """Schoolbook product, then long division by the monic f, all mod 2^k (unsigned)."""
    d = len(a)
    c = [0] * (2 * d - 1)
    for i, j in itertools.product(range(d), range(d)):
        c[i + j] += a[i] * b[j]
    for top in range(2 * d - 2, d - 1, -1):
        t, c[top] = c[top], 0
        for i in range(d):
            if f >> i & 1:
                c[top - d + i] -= t
    return [x % (1 << k) for x in c[:d]]


def unsigned(t: torch.Tensor, k: int = 64) -> list[list[int]]:
    return [[x % (1 << k) for x in row] for row in t.reshape(-1, t.shape[-1]).tolist()]


def unit_elements(ring: GaloisRing, prg: PRG, n: int) -> torch.Tensor:
    a = ring.random(prg, (n,))
    a[:, 0] |= 1  # an odd constant term is non-zero mod 2, hence a unit
    return a


# -- irreducibility ----------------------------------------------------------------------------


@pytest.mark.parametrize(("f", "expect"), [
    (poly_bits(2, 1, 0), True),  # X^2 + X + 1
    (poly_bits(2, 0), False),  # X^2 + 1 = (X + 1)^2
    (poly_bits(4, 1, 0), True),  # X^4 + X + 1
    (poly_bits(4, 2, 0), False),  # X^4 + X^2 + 1 = (X^2 + X + 1)^2
    (poly_bits(8, 4, 3, 1, 0), True),  # the AES polynomial
    (poly_bits(1, 0), True),
    (poly_bits(1), True),
    (1, False),
    (0, False),
])
def test_known_irreducibles(f: int, expect: bool) -> None:
    assert is_irreducible(f) is expect


def test_rabin_needs_its_gcd_condition() -> None:
    # two distinct irreducible cubics: X^64 = X mod their product (3 | 6), yet it is reducible
    f = gf2_mul(poly_bits(3, 1, 0), poly_bits(3, 2, 0))
    assert gf2_divmod(1 << 64, f)[1] == 0b10
    assert not is_irreducible(f)


def test_irreducibility_matches_trial_division_up_to_degree_10() -> None:
    counts = [0] * 11
    for f in range(2, 1 << 11):
        got = is_irreducible(f)
        assert got == irreducible_by_trial_division(f), format_poly(f)
        counts[f.bit_length() - 1] += got
    # Gauss: (1/n) sum_{m | n} mu(m) 2^(n/m)
    assert counts[1:] == [2, 1, 2, 3, 6, 9, 18, 30, 56, 99]


def test_default_modulus_for_48() -> None:
    assert find_irreducible(48) == F48 == GR.f
    assert format_poly(F48) == "X^48 + X^5 + X^3 + X^2 + 1"
    assert irreducible_by_berlekamp(F48)
    assert not any(is_irreducible(poly_bits(48, a, 0)) for a in range(1, 48))  # Swan


@pytest.mark.parametrize("d", [1, 2, 3, 7, 8, 13, 16, 32, 63, 64])
def test_search_other_degrees(d: int) -> None:
    f = find_irreducible(d)
    assert f.bit_length() == d + 1 and bin(f).count("1") <= 5
    assert irreducible_by_berlekamp(f)
    assert GaloisRing(d).f == f


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="reducible"):
        GaloisRing(4, f=poly_bits(4, 2, 0))
    with pytest.raises(ValueError, match="monic of degree 4"):
        GaloisRing(4, f=poly_bits(5, 2, 0))
    with pytest.raises(ValueError, match="degree"):
        GaloisRing(0)
    with pytest.raises(ValueError, match="modulus_bits"):
        GaloisRing(8, modulus_bits=65)
    assert GaloisRing() == GaloisRing(48, 64, F48)
    assert hash(GaloisRing()) == hash(GaloisRing(48, 64, F48))
    with pytest.raises(dataclasses.FrozenInstanceError):
        GR.f = 3  # type: ignore[misc]


# -- arithmetic ---------------------------------------------------------------------------------


RINGS = [GR, GaloisRing(8), GaloisRing(5, modulus_bits=8), GaloisRing(1)]


@pytest.mark.parametrize("ring", RINGS, ids=str)
def test_ring_axioms(ring: GaloisRing, prg: PRG) -> None:
    a, b, c = (ring.random(prg, (40,)) for _ in range(3))
    mul, add = ring.mul, ring.add
    assert torch.equal(mul(mul(a, b), c), mul(a, mul(b, c)))
    assert torch.equal(mul(a, b), mul(b, a))
    assert torch.equal(mul(a, add(b, c)), add(mul(a, b), mul(a, c)))
    assert torch.equal(add(add(a, b), c), add(a, add(b, c)))
    assert torch.equal(add(a, b), add(b, a))
    assert torch.equal(mul(a, ring.one()), ring.reduce(a))
    assert torch.equal(add(a, ring.zero()), ring.reduce(a))
    assert ring.is_zero(add(a, ring.neg(a))).all()
    assert torch.equal(ring.sub(a, b), add(a, ring.neg(b)))


@pytest.mark.parametrize("ring", RINGS, ids=str)
def test_mul_matches_slow_reference(ring: GaloisRing, prg: PRG) -> None:
    k = ring.modulus_bits
    a, b = ring.random(prg, (12,)), ring.random(prg, (12,))
    a[0] = -1  # all coefficients 2^64 - 1
    b[0] = torch.iinfo(torch.int64).min
    got = unsigned(ring.mul(a, b), k)
    for x, y, z in zip(unsigned(a, k), unsigned(b, k), got, strict=True):
        assert z == ref_mul(x, y, ring.f, k)


def test_mul_by_hand() -> None:
    # GR(2^64, 2), f = X^2 + X + 1: (3 + 5X)(7 + 2X) = 21 + 41X + 10X^2, X^2 = -X - 1
    ring = GaloisRing(2)
    a, b = torch.tensor([3, 5]), torch.tensor([7, 2])
    assert ring.mul(a, b).tolist() == [11, 31]


def test_x_to_the_d_reduces_to_the_low_part_of_f() -> None:
    d = GR.d
    x_top, x = GR.exceptional(1 << (d - 1)), GR.exceptional(2)
    low = [(F48 >> i) & 1 for i in range(d)]
    assert GR.mul(x_top, x).tolist() == [-c for c in low]  # X^d = -(f - X^d)
    assert (GR.mul(x_top, x) & 1).tolist() == low  # = f - X^d mod 2
    assert GR.reduce(torch.tensor([0] * d + [1])).tolist() == [-c for c in low]


def test_reduce_long_inputs(prg: PRG) -> None:
    c = prg.int64((5, 3 * GR.d))
    powers = [[1] + [0] * (GR.d - 1)]  # X^i mod f, by repeated products with X
    for _ in range(1, 3 * GR.d):
        powers.append(ref_mul(powers[-1], [0, 1] + [0] * (GR.d - 2), F48, 64))
    for row, got in zip(unsigned(c), unsigned(GR.reduce(c)), strict=True):
        want = [sum(coef * p[j] for coef, p in zip(row, powers, strict=True)) % (1 << 64)
                for j in range(GR.d)]
        assert got == want


def test_scale_and_lift(prg: PRG) -> None:
    a, s = GR.random(prg, (6, 3)), prg.int64((6, 3))
    assert torch.equal(GR.scale(a, s), GR.mul(a, GR.lift(s)))
    assert torch.equal(GR.scale(a, s[0]), GR.mul(a, GR.lift(s[0])))  # broadcast
    assert torch.equal(GR.scale(a, 2), GR.add(a, a))
    assert GR.lift(torch.tensor([5, -1])).tolist() == [[5] + [0] * 47, [-1] + [0] * 47]


# -- units, inverses, exceptional sets ----------------------------------------------------------


@pytest.mark.parametrize("ring", [GR, GaloisRing(8), GaloisRing(5, modulus_bits=8)], ids=str)
def test_inverse(ring: GaloisRing, prg: PRG) -> None:
    a = unit_elements(ring, prg, 16)
    a[1] = ring.exceptional(1 << (ring.d - 1))  # X^(d-1): a unit with even constant term
    assert ring.is_unit(a).all()
    inv = ring.inverse(a)
    assert torch.equal(ring.mul(a, inv), ring.one((16,)))
    k = ring.modulus_bits
    for x, y in zip(unsigned(a, k), unsigned(inv, k), strict=True):
        assert ref_mul(x, y, ring.f, k) == [1] + [0] * (ring.d - 1)


def test_inverse_of_every_field_element_d8() -> None:
    ring = GaloisRing(8)
    e = ring.exceptional(torch.arange(1, 256))
    assert torch.equal(ring.mul(e, ring.inverse(e)), ring.one((255,)))


def test_non_units_are_refused(prg: PRG) -> None:
    a = GR.random(prg, (4,))
    two_a = GR.scale(a, 2)
    assert not GR.is_unit(two_a).any() and not GR.is_unit(GR.zero()).any()
    with pytest.raises(ValueError, match="4 of 4 elements are not units"):
        GR.inverse(two_a)
    mixed = torch.stack([GR.one(), GR.zero()])
    with pytest.raises(ValueError, match="1 of 2 elements are not units"):
        GR.inverse(mixed)
    assert GR.is_zero(GR.zero((3,))).all() and not GR.is_zero(GR.one()).any()


def test_exceptional_differences_are_units(prg: PRG) -> None:
    ring = GaloisRing(8)
    e = ring.exceptional(torch.arange(256))
    assert torch.unique(e, dim=0).shape[0] == 256 and ((e == 0) | (e == 1)).all()
    diff = ring.sub(e[:, None], e[None, :])
    assert torch.equal(ring.is_unit(diff), ~torch.eye(256, dtype=torch.bool))
    idx = torch.unique(prg.uniform_bits((64,), 48))
    big = GR.exceptional(idx)
    diff48 = GR.sub(big[:, None], big[None, :])
    assert torch.equal(GR.is_unit(diff48), ~torch.eye(idx.numel(), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 2\^8\)"):
        ring.exceptional(256)


def test_random_exceptional(prg: PRG) -> None:
    r = GR.random_exceptional(prg, (1000,))
    assert r.shape == (1000, 48) and ((r == 0) | (r == 1)).all()
    assert 0.45 < r.float().mean().item() < 0.55
    assert GR.random(prg, (2, 3)).shape == (2, 3, 48)
    assert GaloisRing(5, modulus_bits=8).random(prg, (100,)).max().item() < 256


# -- the soundness bound ------------------------------------------------------------------------


def evaluate(ring: GaloisRing, coeffs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    acc = ring.zero(tuple(y.shape[:-1]))
    for c in reversed(coeffs):  # Horner
        acc = ring.add(ring.mul(acc, y), c)
    return acc


@pytest.mark.parametrize("e", [0, 17, 63])
def test_schwartz_zippel_on_the_exceptional_set(e: int, prg: PRG) -> None:
    ring = GaloisRing(8)
    challenges = ring.exceptional(torch.arange(256))
    worst = 0
    for _ in range(30):
        coeffs = [ring.scale(ring.random(prg), 1 << e) for _ in range(3)]
        if all(ring.is_zero(c) for c in coeffs):
            continue
        worst = max(worst, int(ring.is_zero(evaluate(ring, coeffs, challenges)).sum()))
    assert worst <= 2  # degree 2: at most 2 of the 2^8 challenges are roots
    # the bound is tight: 2^63 (Y - r1)(Y - r2) vanishes exactly on r1 and r2
    r1, r2 = challenges[37], challenges[200]
    tight = [ring.mul(r1, r2), ring.neg(ring.add(r1, r2)), ring.one()]
    tight = [ring.scale(c, 1 << e) for c in tight]
    roots = ring.is_zero(evaluate(ring, tight, challenges)).nonzero().flatten().tolist()
    assert roots == [37, 200]


def test_z2_64_linear_check_passes_half_the_time() -> None:
    # the contrast: over Z_2^64 an error 2^63 survives every even challenge
    error = torch.tensor(-(2**63), dtype=torch.int64)
    r = torch.arange(256, dtype=torch.int64)
    assert int((error * r == 0).sum()) == 128
    # in GR(2^64, 8) the same error times an exceptional challenge vanishes only at 0
    ring = GaloisRing(8)
    hits = ring.is_zero(ring.scale(ring.exceptional(r), error))
    assert hits.nonzero().flatten().tolist() == [0]


# -- shapes and types -----------------------------------------------------------------------------


def test_wrong_shapes_and_types() -> None:
    a = GR.one((3,))
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 48\].*\(3, 47\)"):
        GR.mul(a, torch.zeros((3, 47), dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        GR.is_unit(torch.tensor(1))
    with pytest.raises(TypeError, match="int64"):
        GR.add(a, a.float())
    with pytest.raises(ValueError, match="do not broadcast"):
        GR.mul(a, GR.one((4,)))
    with pytest.raises(ValueError, match="do not broadcast"):
        GR.scale(a, torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        GR.scale(a, torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="tensors"):
        GR.neg([1] * 48)  # type: ignore[arg-type]
