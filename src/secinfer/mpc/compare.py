"""Secure comparisons: DReLU, ReLU, ReLU6, max / argmax over a dim, max pooling.

DReLU follows the bitwise private comparison of SecureNN (Wagh, Gupta, Chandran 2019), but
reads the sign from a masked opening instead of ShareConvert + ComputeMSB, which saves their
extra rounds:

1. helper: r = r0 + r1 (r0 from its seed with P0, r1 from its seed with P1); bit-shares mod p
   of the compared bits of r (P0's from the seed, P1's sent: ``k`` bytes per element);
2. P0, P1: open z = x + r (one round, 8 bytes per element each way);
3. with z public, the sign bit of x is ``z_k xor r_k xor borrow``, where
   ``borrow = [r' > z']`` compares the bits of z and r below k (k = 63 exactly, or lower with
   ignored high bits; ignored low bits are dropped from both). P0 and P1 evaluate SecureNN's
   PrivateCompare terms ``c_j = B_j - A_j + 1 + sum_{i>j} (A_i xor B_i)`` on the bit-shares,
   with the operands swapped (and z + 1 used) when a common random bit beta is 1, multiply
   each term by a common random non-zero s_j, add a common pad q_j (P0 adds it, P1 subtracts
   it), rotate the terms by a common random offset (at most one term is zero, so a uniform
   rotation hides its position as well as SecureNN's full permutation), and send them to the
   helper (``k + 1`` bytes per element each); beta, s_j, q_j and the offset come from the
   P0-P1 seed, which the helper never sees;
4. helper: gamma = [some term of t0 + t1 is 0] = borrow xor beta; it shares
   delta = gamma xor r_k (P0's share from the seed, P1's sent: 8 bytes per element);
5. P_i: sign = z_k xor beta xor delta, linear in delta's shares; DReLU = 1 - sign.

What each party receives, message by message (everything else it holds it derived from its
own seeds), and why the whole view is independent of x:

- P0 receives z1 = x1 + r1 (step 2). r1 comes from the helper-P1 seed, which P0 never sees,
  so z = z0 + z1 is uniform mod 2^64 whatever x is. P0 receives nothing else.
- P1 receives the bit-shares bits(r') - b0 (step 1), z0 = x0 + r0 (step 2) and delta - d0
  (step 4). b0, r0 and d0 are independent draws from the helper-P0 seed, which P1 never sees:
  the three messages are independent and uniform (over Z_p, Z_2^64, Z_2^64).
- The helper receives t0 = s c0 + q and t1 = s c1 - q, rotated (step 3). It knows r and both
  parties' bit-shares of r, so it can compute anything from (t0, t1) and those. The pad q
  makes t0 uniform on its own and leaves only t0 + t1 = s (c0 + c1), rotated: w terms, each
  a uniform non-zero value mod p except, when gamma = 1, one zero at a uniform position.
  gamma = borrow xor beta with beta a uniform bit the helper does not know, so the whole
  view is one uniform bit and uniform noise. Without the pad, t0_j / t1_j = c0_j / c1_j
  would cancel s_j and, with the bit-shares the helper dealt, give away z and hence x (the
  attack in ``tests/mpc/test_view.py``, which recovers 197-200 of 200 inputs without the pad
  and none with it).
- The user receives nothing from a DReLU.

Cost of the pad: no message; w draws mod p per element from the P0-P1 PRG.
Latency: three message hops (open z; terms to the helper; delta to P1). In the accounting's
per-party definition (see :mod:`secinfer.net.accounting`) that is 1 round at P0, whose result
share comes from its seed, and 2 at P1. ReLU adds one Beaver product (1 round each).

ReLU, ReLU6, max, argmax and max pooling are DReLUs and Beaver products (see
:meth:`.engine.MPCEngine.beaver`) of the DReLU's bit share with differences of shares. Every
sub-protocol draws fresh masks for every message, so each party's view of the composition is
the concatenation of independent uniform views; no value is opened to anyone. Padding of a
max pool is a public constant added by P0 and reveals only the (public) layer shape. The
view tests (``tests/mpc/test_view.py``) fix the receiver's seeds, vary the secret and test
the joint law of everything it receives, for every function here.

Threat model: semi-honest, non-colluding (see :mod:`.engine`); the helper colluding with
either compute party learns everything.
"""

from __future__ import annotations

import torch

from .config import HELPER, P0, P1
from .engine import MPCEngine
from .share import Share, cat

__all__ = ["drelu", "relu", "relu6", "max_along", "argmax_along", "maxpool2d",
           "drelu_bytes", "check_drelu_window"]

_CHUNK = 1 << 13  # elements per chunk: keeps the (chunk, bits) temporaries in cache


def _bits(v: torch.Tensor, width: int) -> torch.Tensor:
    """Little-endian bits [..., width] (uint8) of int64 values, unpacked bytewise (only the
    bytes that hold them: a 33-bit window unpacks 5 bytes, not 8)."""
    nb = (width + 7) // 8
    by = v.contiguous().view(torch.uint8).reshape(*v.shape, 8)[..., :nb]
    bits = (by.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(*v.shape, 8 * nb)[..., :width]


def _mask(bits: int) -> torch.Tensor:
    # a 0-d tensor: int64 `& python_int` is ~25x slower than `& tensor` in torch 2.13
    return torch.tensor((1 << bits) - 1, dtype=torch.int64)


def drelu_bytes(n: int, compare_bits: int) -> dict[str, int]:
    """Documented cost of :func:`drelu` on ``n`` elements (checked by the known-answer test)."""
    w = compare_bits + 1
    return {"p0_sent": 8 * n + w * n, "p1_sent": 8 * n + w * n,
            "helper_sent": compare_bits * n + 8 * n, "p0_rounds": 1, "p1_rounds": 2}


def check_drelu_window(engine: MPCEngine, max_abs: float, min_abs: float = 0.0) -> None:
    """Raise if the approximate DReLU window does not cover data of magnitude up to ``max_abs``."""
    lo, hi = engine.config.drelu_valid_range()
    if max_abs >= hi:
        raise ValueError(f"data magnitude {max_abs:.3g} exceeds the approximate DReLU window "
                         f"{hi:.3g}: lower drelu_high_bits")
    if min_abs and min_abs < lo:
        raise ValueError(f"values below {lo:.3g} may get the wrong sign: lower drelu_low_bits")


def drelu(engine: MPCEngine, x: Share) -> Share:
    """Shares (scale 0) of 1[x >= 0]. Ties at exactly 0 give 1.

    Its traffic is charged to a nested op ``drelu`` so that cost reports separate comparison
    traffic from the products around it.
    """
    with engine.session.op("drelu"):
        return _drelu(engine, x)


def _drelu(engine: MPCEngine, x: Share) -> Share:
    cfg = engine.config
    k, low = cfg.sign_bit, cfg.drelu_low_bits
    nbits = cfg.compare_bits
    w = nbits + 1
    p = cfg.prime
    shape = x.shape
    n = x.numel()
    s = engine.session
    if engine.is_helper:
        r = engine.prg_h0.int64((n,)) + engine.prg_h1.int64((n,))
        rp = (r >> low) & _mask(nbits)
        share1 = torch.empty((n, nbits), dtype=torch.uint8)
        for lo_i in range(0, n, _CHUNK):  # same chunking as P0's draws of its bit-shares
            sl = slice(lo_i, min(n, lo_i + _CHUNK))
            share0 = _mod_small(engine.prg_h0, (sl.stop - sl.start, nbits), p)
            share1[sl] = torch.remainder(_bits(rp[sl], nbits).to(torch.int32) - share0, p)
        s.send(P1, share1, "drelu.bits")
        del share1
        terms_like = ((n, w), torch.uint8)
        t0 = s.recv(P0, tag="drelu.terms", expect=terms_like)
        t1 = s.recv(P1, tag="drelu.terms", expect=terms_like)
        gamma = torch.empty(n, dtype=torch.int64)
        for lo_i in range(0, n, _CHUNK):
            sl = slice(lo_i, min(n, lo_i + _CHUNK))
            tot = torch.remainder(t0[sl].to(torch.int16) + t1[sl].to(torch.int16), p)
            gamma[sl] = (tot == 0).any(dim=1).to(torch.int64)
        delta = gamma ^ ((r >> k) & _mask(1))
        d0 = engine.prg_h0.int64((n,))
        s.send(P1, delta - d0, "drelu.delta")
        return engine.placeholder(shape, 0)

    is0 = engine.role == P0
    r_i = engine.prg_h.int64((n,))
    z_i = x.data.reshape(-1) + r_i
    s.send(engine.other, z_i, "drelu.open")
    rb_all = torch.empty(0) if is0 else s.recv(HELPER, tag="drelu.bits",
                                                 expect=((n, nbits), torch.uint8))
    z = z_i + s.recv(engine.other, tag="drelu.open", expect=((n,), torch.int64))
    beta = engine.prg_01.bits((n,))
    zp = (z >> low) & _mask(nbits)
    terms = torch.empty((n, w), dtype=torch.uint8)
    cols = torch.arange(w, dtype=torch.int64)
    # cache-sized chunks; every PRG is drawn in the same order at both parties and the helper
    for lo_i in range(0, n, _CHUNK):
        sl = slice(lo_i, min(n, lo_i + _CHUNK))
        m = sl.stop - sl.start
        rb = (_mod_small(engine.prg_h, (m, nbits), p) if is0 else rb_all[sl]).to(torch.int16)
        mult = _mod_small(engine.prg_01, (m, w), p - 1) + 1
        shift = _mod_small(engine.prg_01, (m, 1), w).to(torch.int64)
        b = beta[sl].unsqueeze(1).to(torch.int16)
        # public operand bits u: z' (beta = 0) or z' + 1 (beta = 1), over w positions
        u = _bits(zp[sl] + beta[sl], w).to(torch.int16)
        r_sh = torch.nn.functional.pad(rb, (0, 1))  # r' has a 0 in the top position
        sgn = 2 * b - 1  # c_j = sgn * (r_j - u_j) + 1 + sum_{i>j} (u_i xor r_i)
        xor = r_sh * (1 - 2 * u) + (u if is0 else 0)
        suffix = torch.flip(torch.cumsum(torch.flip(xor, [1]), 1, dtype=torch.int16), [1]) - xor
        c = sgn * r_sh + suffix + ((1 - sgn * u) if is0 else 0)
        # a pad common to P0 and P1 (P0 adds it, P1 subtracts it): without it the helper
        # would get both s_j c0_j and s_j c1_j, whose ratio c0_j / c1_j no longer depends
        # on s_j and, with the bit-shares the helper dealt, gives away z (and x)
        pad = _mod_small(engine.prg_01, (m, w), p)
        c = torch.remainder(c.to(torch.int32) * mult + (pad if is0 else -pad), p)
        # one uniform rotation per element hides where the (at most one) zero term sits; the
        # other terms are uniform non-zero after the random multipliers
        idx = cols + shift
        idx -= w * (idx >= w)
        terms[sl] = torch.gather(c.to(torch.uint8), 1, idx)
    s.send(HELPER, terms, "drelu.terms")
    delta_i = engine.prg_h.int64((n,)) if is0 else s.recv(HELPER, tag="drelu.delta",
                                                           expect=((n,), torch.int64))
    v = ((z >> k) & _mask(1)) ^ beta                                           # public to P0 and P1
    sign_i = delta_i * (1 - 2 * v) + (v if is0 else 0)
    d = (int(is0) - sign_i).reshape(shape)
    return Share(d, 0)


def _mod_small(prg, shape: tuple[int, ...], m: int) -> torch.Tensor:
    """Uniform values in [0, m) as int32: Lemire's multiply-shift ``floor(m x / 2^64)`` on
    64-bit draws ``x``, with no division on the hot path.

    The statistical distance from uniform is below m / 2^64 per value (a 32-bit draw would
    leave m / 2^32, about 2^-26 for p = 67: over the millions of pads of one inference the
    helper's view would drift measurably from uniform). Without 128-bit integers, for
    ``x = hi 2^32 + lo``: ``floor(m x / 2^64) = floor((m hi + floor(m lo / 2^32)) / 2^32)``,
    each product below 2^40 for m < 2^8.
    """
    if not 0 < m < 1 << 8:
        raise ValueError(f"_mod_small takes a modulus in [1, 256), not {m}")
    n = 1
    for d in shape:
        n *= d
    raw = prg.bytes(8 * n).view(torch.int64)
    lo, hi = raw & _mask(32), (raw >> 32) & _mask(32)
    return ((m * hi + ((m * lo) >> 32)) >> 32).to(torch.int32).reshape(shape)


def relu(engine: MPCEngine, x: Share) -> Share:
    """max(x, 0) = x * DReLU(x): DReLU (3 rounds) plus one Beaver product (1 round)."""
    return engine.beaver(x, drelu(engine, x), torch.mul)


def relu6(engine: MPCEngine, x: Share) -> Share:
    """min(max(x, 0), 6) = ReLU(x) - ReLU(x - 6), both DReLUs in one batched call."""
    both = cat([x.unsqueeze(0), engine.add_public(x, -6.0).unsqueeze(0)], 0)
    r = relu(engine, both)
    return r[0] - r[1]


def _select(engine: MPCEngine, d: Share, a: Share, b: Share) -> Share:
    """b + d * (a - b) for a bit share d (scale 0)."""
    return b + engine.beaver(d, a - b, torch.mul)


def max_along(engine: MPCEngine, x: Share, dim: int = -1, with_index: bool = False):
    """Max over ``dim`` by a tournament: ceil(log2 n) levels of one DReLU + one product each."""
    x = x.transpose(dim, -1) if dim not in (-1, x.data.dim() - 1) else x
    n = x.shape[-1]
    idx = None
    if with_index:
        ar = torch.arange(n, dtype=torch.float64).expand(*x.shape)
        idx = engine.public_const(ar, 0) if not engine.is_helper else engine.placeholder(
            x.shape, 0)
    vals = x
    while vals.shape[-1] > 1:
        m = vals.shape[-1] // 2
        a, b = vals[..., :m], vals[..., m : 2 * m]
        rest = vals[..., 2 * m :]
        d = drelu(engine, a - b)
        if idx is not None:
            ia, ib = idx[..., :m], idx[..., m : 2 * m]
            diff = cat([(a - b), (ia - ib).with_frac(a.frac_bits)], -1)
            dd = cat([d, d], -1)
            sel = engine.beaver(dd, diff, torch.mul).with_frac(a.frac_bits)
            vals = cat([b + sel[..., :m], rest], -1)
            idx = cat([ib + sel[..., m:].with_frac(0), idx[..., 2 * m :]], -1)
        else:
            vals = cat([_select(engine, d, a, b), rest], -1)
    out = vals.reshape(*vals.shape[:-1])
    if with_index:
        assert idx is not None
        return out, idx.reshape(*idx.shape[:-1])
    return out


def argmax_along(engine: MPCEngine, x: Share, dim: int = -1) -> Share:
    """Shares (scale 0) of the index of the maximum along ``dim``."""
    return max_along(engine, x, dim, with_index=True)[1]


def maxpool2d(engine: MPCEngine, x: Share, kernel: int | tuple[int, int],
              stride: int | tuple[int, int] | None = None,
              padding: int | tuple[int, int] = 0) -> Share:
    """Max pooling with any kernel, stride and padding (padding acts as -inf)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    stride = stride if stride is not None else (kh, kw)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if ph or pw:
        big = -(2.0 ** (62 - 2 * engine.f))
        pad_val = torch.full((1,), big, dtype=torch.float64)
        xp = x.pad((pw, pw, ph, ph))
        if engine.role == P0:
            mask = torch.ones(x.shape, dtype=torch.int64)
            mask = torch.nn.functional.pad(mask, (pw, pw, ph, ph))
            from .engine import encode

            xp = Share(xp.data + (1 - mask) * encode(pad_val, x.frac_bits), x.frac_bits)
        x = xp
    win = x.unfold(2, kh, sh).unfold(3, kw, sw)  # N, C, OH, OW, kh, kw
    win = win.reshape(*win.shape[:4], kh * kw)
    return max_along(engine, win, -1)

