"""The Galois ring GR(2^k, d) = Z_{2^k}[X] / (f(X)) on int64 tensors, for sound checks over Z_2^k.

Why: a malicious-secure engine verifies its Z_{2^64} computation with random linear checks:
distributed zero-knowledge proofs (Boyle, Gilboa, Ishai and Nof, "Efficient fully secure
computation via distributed zero-knowledge proofs", ASIACRYPT 2020), which over Z_{2^k} need
their challenges from a Galois-ring extension. Over Z_{2^64} itself such a check is weak because
the ring has zero divisors: an error ``e = 2^63`` times a uniform challenge ``r`` vanishes
whenever ``r`` is even, i.e. with probability 1/2. Lifting the
challenges into a degree-``d`` Galois ring extension, as in Abspoel, Cramer, Damgard, Escudero
and Yuan, "Efficient information-theoretic secure multiparty computation over Z/p^kZ via
Galois rings" (TCC 2019), brings the error down to ``D / 2^d`` for checks of degree ``D``:
2^-48 for a linear check at the default ``d = 48``, and below 2^-40 up to degree 256.

The ring. ``f`` is monic of degree ``d`` with 0/1 coefficients and irreducible over GF(2), so
``GR / (2) = GF(2)[X] / (f) = GF(2^d)`` is a field and GR is a local ring whose maximal ideal
is ``(2)``: every element is ``2^v u`` with ``u`` a unit, and ``a`` is a unit iff ``a mod 2``
is non-zero. An element is an int64 tensor of shape ``[..., d]``; the last dim holds the
coefficients of ``X^0 .. X^(d-1)``, each in Z_{2^k} (for ``k = 64`` the int64 wrap-around
itself, for ``k < 64`` the representative in ``[0, 2^k)``).

Exceptional sets. The ``2^d`` polynomials with 0/1 coefficients reduce mod 2 onto the
``2^d`` distinct elements of GF(2^d), so two distinct ones differ by a unit: they form an
exceptional set, the largest possible one (any two elements with equal reduction mod 2 differ
by a non-unit).

The soundness fact (Schwartz-Zippel over an exceptional set). Let ``P`` be a non-zero
polynomial of total degree ``D`` over GR(2^k, d) and ``r`` uniform in the exceptional set (per
variable). Let ``2^e`` (``e < k``) be the largest power of 2 dividing every coefficient, and
write ``P = 2^e P'``; some coefficient of ``P'`` is then a unit. ``P(r) = 0`` means
``P'(r) = 0 mod 2^(k - e)``, hence ``P'(r) = 0 mod 2``. ``P' mod 2`` is a non-zero polynomial of
degree at most ``D`` over the field GF(2^d), and ``r mod 2`` is uniform in GF(2^d), so the
usual Schwartz-Zippel lemma gives ``Pr[P(r) = 0] <= D / 2^d``. The same argument holds for
``r`` uniform in the whole ring (its reduction mod 2 is uniform too). For ``d = 1`` this is
Z_{2^k} and the bound is the useless ``D / 2``, the 1/2 above.

Nothing happens at import: the default ``f`` for ``d = 48`` is a constant (checked at
construction and by the tests); for other degrees the lowest-weight irreducible tri- or
pentanomial is searched for at construction (milliseconds to a second).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DEGREE",
    "F48",
    "GaloisRing",
    "RandomSource",
    "find_irreducible",
    "format_poly",
    "is_irreducible",
]

DEFAULT_DEGREE = 48
# X^48 + X^5 + X^3 + X^2 + 1. Swan's theorem rules out irreducible trinomials in degrees divisible
# by 8, so five terms is the lowest weight; it is what find_irreducible(48) returns (tested).
F48 = (1 << 48) | (1 << 5) | (1 << 3) | (1 << 2) | 1


class RandomSource(Protocol):
    """Anything drawing uniform int64 tensors, e.g. ``secinfer.mpc.prg.PRG`` (not imported:
    the ring layer sits below mpc)."""

    def int64(self, shape: tuple[int, ...]) -> Tensor: ...


# -- GF(2)[X] with Python ints as bit-polynomials (bit i = coefficient of X^i) --------------


def _clmul(a: int, b: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def _pmod(a: int, m: int) -> int:
    dm = m.bit_length()
    while a.bit_length() >= dm:
        a ^= m << (a.bit_length() - dm)
    return a


def _pgcd(a: int, b: int) -> int:
    while b:
        a, b = b, _pmod(a, b)
    return a


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        if n % p == 0:
            out.append(p)
            while n % p == 0:
                n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def is_irreducible(f: int) -> bool:
    """Whether the bit-polynomial ``f`` (bit i = coefficient of X^i) is irreducible over GF(2).

    Rabin's test for ``n = deg f``: ``X^(2^n) = X mod f``, and ``gcd(X^(2^(n/q)) - X, f) = 1``
    for every prime ``q | n``. The first holds iff every irreducible factor has degree dividing
    ``n``; the second excludes factors of degree below ``n``.
    """
    n = f.bit_length() - 1
    if n < 1:
        return False
    x = _pmod(0b10, f)
    wanted = {n // q for q in _prime_factors(n)}
    powers: dict[int, int] = {}
    y = x
    for i in range(1, n + 1):
        y = _pmod(_clmul(y, y), f)  # y = X^(2^i) mod f
        if i in wanted:
            powers[i] = y
    if y != x:
        return False
    return all(_pgcd(f, powers[m] ^ x) == 1 for m in wanted)


def find_irreducible(d: int) -> int:
    """The first irreducible among ``X^d + X^a + 1`` (``a`` ascending), then ``X^d + X^a + X^b +
    X^c + 1`` (``a > b > c``, lexicographic): low weight, and a small second-highest exponent
    so that reduction mod ``f`` folds in few steps. ``X + 1`` for ``d = 1``."""
    if d < 1:
        raise ValueError(f"degree must be >= 1, got {d}")
    if d == 1:
        return 0b11
    top = 1 << d
    for a in range(1, d):
        if is_irreducible(top | (1 << a) | 1):
            return top | (1 << a) | 1
    for a in range(3, d):
        for b in range(2, a):
            for c in range(1, b):
                f = top | (1 << a) | (1 << b) | (1 << c) | 1
                if is_irreducible(f):
                    return f
    # no known degree lacks an irreducible pentanomial, but nothing proves it
    raise ValueError(f"no irreducible trinomial or pentanomial of degree {d}; pass f explicitly")


def format_poly(f: int) -> str:
    """``f`` written out, highest power first: ``X^48 + X^9 + X^7 + X^4 + 1``."""
    terms = [("1" if i == 0 else "X" if i == 1 else f"X^{i}")
             for i in range(f.bit_length() - 1, -1, -1) if f >> i & 1]
    return " + ".join(terms) or "0"


# -- the ring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaloisRing:
    """GR(2^modulus_bits, d) = Z_{2^modulus_bits}[X] / (f): see the module docstring.

    ``f`` is a bit-polynomial (bit i = coefficient of X^i), monic of degree ``d`` and
    irreducible over GF(2); ``0`` (the default) picks :data:`F48` for ``d = 48`` and
    :func:`find_irreducible` otherwise. Elements are int64 tensors ``[..., d]``; every
    operation broadcasts over the leading dims.
    """

    d: int = DEFAULT_DEGREE
    modulus_bits: int = 64
    f: int = 0

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError(f"degree d must be >= 1, got {self.d}")
        if not 1 <= self.modulus_bits <= 64:
            raise ValueError(f"modulus_bits must be in [1, 64], got {self.modulus_bits}")
        if self.f == 0:
            f = F48 if self.d == 48 else find_irreducible(self.d)
            object.__setattr__(self, "f", f)  # frozen: the one write, at construction
        if self.f < 0 or self.f.bit_length() != self.d + 1:
            raise ValueError(f"f = {format_poly(self.f)} is not monic of degree {self.d}")
        if not is_irreducible(self.f):
            raise ValueError(f"f = {format_poly(self.f)} is reducible over GF(2): "
                             "GR / (2) would not be a field, so units could not be recognised")

    def __str__(self) -> str:
        return f"GR(2^{self.modulus_bits}, {self.d})"  # f is in repr and format_poly(ring.f)

    @property
    def exceptional_size(self) -> int:
        """``2^d``, the size of the exceptional set (also the largest possible one)."""
        return 1 << self.d

    # -- checks and representatives

    def _wrap(self, t: Tensor) -> Tensor:
        if self.modulus_bits == 64:
            return t  # int64 arithmetic already wraps mod 2^64
        return t & ((1 << self.modulus_bits) - 1)

    def _check(self, a: Tensor, name: str = "a") -> Tensor:
        if not isinstance(a, Tensor):
            raise TypeError(f"{name}: elements of {self} are torch tensors, got {type(a).__name__}")
        if a.dtype != torch.int64:
            raise TypeError(f"{name}: elements of {self} are int64 tensors, got {a.dtype}")
        if a.dim() == 0 or a.shape[-1] != self.d:
            raise ValueError(f"{name}: elements of {self} have shape [..., {self.d}] (coefficients "
                             f"of X^0..X^{self.d - 1} in the last dim), got {tuple(a.shape)}")
        return a

    def _lead(self, a: Tensor, b: Tensor) -> torch.Size:
        self._check(a, "a")
        self._check(b, "b")
        try:
            return torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        except RuntimeError as err:
            raise ValueError(f"leading dims {tuple(a.shape[:-1])} and {tuple(b.shape[:-1])} "
                             "do not broadcast") from err

    def _base(self, s: Tensor | int, name: str) -> Tensor:
        if isinstance(s, int):
            s = s % (1 << 64)
            return torch.tensor(s - (1 << 64) if s >= 1 << 63 else s, dtype=torch.int64)
        if not isinstance(s, Tensor) or s.dtype != torch.int64:
            raise TypeError(f"{name}: base-ring values are int64 tensors or ints, got "
                            f"{getattr(s, 'dtype', type(s).__name__)}")
        return s

    # -- constants and embeddings

    def zero(self, shape: tuple[int, ...] = ()) -> Tensor:
        """The zero element, shape ``[*shape, d]``."""
        return torch.zeros((*shape, self.d), dtype=torch.int64)

    def one(self, shape: tuple[int, ...] = ()) -> Tensor:
        """The unit element 1, shape ``[*shape, d]``."""
        return self.lift(torch.ones(shape, dtype=torch.int64))

    def lift(self, x: Tensor | int) -> Tensor:
        """Base-ring values ``x`` (int64, any shape) as constant polynomials ``[*x.shape, d]``."""
        x = self._base(x, "x")
        out = torch.zeros((*x.shape, self.d), dtype=torch.int64)
        out[..., 0] = x
        return self._wrap(out)

    def exceptional(self, index: Tensor | int) -> Tensor:
        """Element number ``index`` of the exceptional set: coefficient i is bit i of ``index``.

        ``index`` is an int or int64 tensor in ``[0, 2^min(d, 63))``; distinct indices give
        elements whose difference is a unit. ``exceptional(torch.arange(n))`` is the first n.
        """
        idx = self._base(index, "index")
        width = min(self.d, 63)
        if idx.numel() and (idx.min().item() < 0 or idx.max().item() >= 1 << width):
            raise ValueError(f"exceptional indices must lie in [0, 2^{width}), got "
                             f"[{idx.min().item()}, {idx.max().item()}]")
        bits = (idx[..., None] >> torch.arange(width, dtype=torch.int64)) & 1
        if width < self.d:
            bits = torch.cat([bits, torch.zeros((*idx.shape, self.d - width),
                                                dtype=torch.int64)], dim=-1)
        return bits

    def random(self, source: RandomSource, shape: tuple[int, ...] = ()) -> Tensor:
        """Uniform elements of the ring, ``[*shape, d]``, from ``source.int64``."""
        return self._wrap(source.int64((*shape, self.d)))

    def random_exceptional(self, source: RandomSource, shape: tuple[int, ...] = ()) -> Tensor:
        """Uniform elements of the exceptional set (uniform 0/1 coefficients): the challenges
        for which the ``D / 2^d`` bound of the module docstring holds."""
        return source.int64((*shape, self.d)) & 1

    # -- arithmetic

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        """``a + b``."""
        self._lead(a, b)
        return self._wrap(a + b)

    def sub(self, a: Tensor, b: Tensor) -> Tensor:
        """``a - b``."""
        self._lead(a, b)
        return self._wrap(a - b)

    def neg(self, a: Tensor) -> Tensor:
        """``-a``."""
        return self._wrap(-self._check(a))

    def scale(self, a: Tensor, s: Tensor | int) -> Tensor:
        """``s * a`` for base-ring values ``s`` (int64, broadcast against ``a``'s leading dims)."""
        self._check(a)
        s = self._base(s, "s")
        try:
            torch.broadcast_shapes(a.shape[:-1], s.shape)
        except RuntimeError as err:
            raise ValueError(f"scalars of shape {tuple(s.shape)} do not broadcast against "
                             f"elements of leading shape {tuple(a.shape[:-1])}") from err
        return self._wrap(a * s[..., None])

    def reduce(self, c: Tensor) -> Tensor:
        """A coefficient tensor ``[..., n]`` of any length ``n`` reduced mod ``f``, ``[..., d]``."""
        if not isinstance(c, Tensor) or c.dtype != torch.int64 or c.dim() == 0:
            raise TypeError("reduce expects an int64 coefficient tensor [..., n]")
        d = self.d
        # X^d = -(f - X^d) = -sum X^i over the taps: fold the high part down onto them. Each
        # fold lowers the length by d - max(tap) >= 1; two folds for the default pentanomial.
        taps = [i for i in range(d) if self.f >> i & 1]
        reach = max(taps)
        while c.shape[-1] > d:
            high = c[..., d:]
            m = high.shape[-1]
            out = torch.zeros((*c.shape[:-1], max(d, reach + m)), dtype=torch.int64)
            out[..., :d] = c[..., :d]
            for i in taps:
                out[..., i:i + m] -= high
            c = out
        if c.shape[-1] < d:
            c = torch.cat([c, torch.zeros((*c.shape[:-1], d - c.shape[-1]),
                                          dtype=torch.int64)], dim=-1)
        return self._wrap(c)

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        """``a * b``: the polynomial product (d vectorised multiply-adds) reduced mod ``f``."""
        lead = self._lead(a, b)
        d = self.d
        prod = torch.zeros((*lead, 2 * d - 1), dtype=torch.int64)
        for i in range(d):
            prod[..., i:i + d] += a[..., i:i + 1] * b
        return self.reduce(prod)

    # -- units

    def is_zero(self, a: Tensor) -> Tensor:
        """Boolean ``[...]``: whether each element is 0."""
        return (self._wrap(self._check(a)) == 0).all(dim=-1)

    def is_unit(self, a: Tensor) -> Tensor:
        """Boolean ``[...]``: whether each element is a unit, i.e. non-zero mod 2 (GR / (2) is
        the field GF(2^d))."""
        return ((self._check(a) & 1) != 0).any(dim=-1)

    def inverse(self, a: Tensor) -> Tensor:
        """``a^-1`` for units ``a``; ``ValueError`` if any element is not a unit.

        First the inverse mod 2 as ``a^(2^d - 2)`` (Fermat in GF(2^d), vectorised, 2(d - 1)
        products), then Newton's iteration ``x <- x (2 - a x)``, which doubles the number of
        correct 2-adic digits each time: ``ceil(log2 k)`` steps, six for 2^64.
        """
        self._check(a)
        bad = ~self.is_unit(a)
        if bad.any():
            raise ValueError(f"inverse: {int(bad.sum())} of {bad.numel()} elements are not units "
                             f"of {self} (zero mod 2, e.g. 0 or a multiple of 2)")
        x = self.one(tuple(a.shape[:-1]))
        power = a
        for _ in range(self.d - 1):
            power = self.mul(power, power)  # a^(2^i)
            x = self.mul(x, power)  # a^(2^1 + ... + 2^i)
        for _ in range((self.modulus_bits - 1).bit_length()):
            two_minus_ax = self.neg(self.mul(a, x))
            two_minus_ax[..., 0] += 2
            x = self.mul(x, self._wrap(two_minus_ax))
        return x
