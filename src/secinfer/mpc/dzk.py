"""Distributed zero-knowledge check of the products the helper dealt (Beaver triples).

Threat: a malicious helper deals a triple whose product share is off, ``c != op(a, b)``; every
product made with it is then off by the same error and nothing in the semi-honest engine
notices. This check catches it. It is one layer of the malicious-with-abort design of
``docs/integrity.md``: it covers the helper's product corrections only, not the comparison
help, truncation corrections, or a deviating P0 or P1.

Follows the inner-product folding of the fully linear proofs of Boneh, Boyle, Corrigan-Gibbs,
Gilboa and Ishai (CRYPTO 2019), with the prover's secrets additively shared between the two
verifiers, and its challenges lifted into the Galois ring GR(2^64, d) (:mod:`secinfer.ring.
galois`) because over Z_2^64 a random check misses an error of 2^63 with probability 1/2.

Parties: the helper is the prover (it knows a, b and c: it drew them from its seeds); P0 and
P1 are the verifiers, holding additive shares (a0, b0, c0) and (a1, b1, c1). Public coins come
from the P0-P1 PRG, which the helper never sees; P0 and P1 both send the helper each coin seed
after the helper has committed to the message it covers, and the helper aborts if the two
differ (:func:`coin_prg` says why one sender is not enough).

1. Compression. Every triple becomes one inner-product claim ``<u, v> = t`` over GR: for an
   elementwise product, ``u = rho * a``, ``v = b``, ``t = <rho, c>`` with rho uniform
   exceptional; for a matrix product, ``u = a^T alpha``, ``v = b beta``, ``t = alpha^T c beta``.
   The claims of all triples are concatenated into one vector pair. A wrong triple makes
   ``<u, v> - t`` a non-zero polynomial of degree <= 2 in the coins: it vanishes with
   probability <= 2 / 2^d.
2. Padding for zero knowledge. One uniform pair (u*, v*) is appended, its shares from the
   helper's seeds; the helper sends P1 its share of t* = u* v* (one GR element).
3. Folding, while the vectors are longer than 1 (padded to even length with zeros): with
   halves L, R, the helper computes g(X) = <U(X), V(X)> for U(X) = u_L + X (u_R - u_L) and the
   same V; it sends P1 its share of g's three coefficients (P0's share is a seed draw). The
   verifiers record g(0) + g(1) - t, draw r, and continue with U(r), V(r), t = g(r). A false
   claim stays false unless r is a root of the non-zero degree-2 difference between the true
   g and the sent one: probability <= 2 / 2^d per fold.
4. Final. P0 and P1 exchange their shares of the recorded differences and of the last u, v, t,
   and accept iff every difference is 0 and u v = t.

Soundness: a helper with any wrong triple passes with probability at most
(2 + 2 ceil(log2(n + 1))) / 2^d over n claimed elements: below 2^-41 for d = 48 and n < 2^30.

Cost: ceil(log2(n + 1)) + 1 rounds; the helper sends 3 GR elements per fold and 1 more
(8 d bytes each), P0 and P1 each send it a 16-byte coin seed per fold, and exchange
3 + folds GR elements. Compute: O(n d^2) word operations at the helper, O(n d^2) at each
verifier (the folds), plus O(d) products of the triples' shapes for the compression.

What each party receives, and why it learns nothing:

- The helper: the coins. They are public randomness chosen after its messages.
- P1: the helper's shares of t* and of each g. P0's shares are draws from the helper-P0 seed,
  which P1 never sees, so each message is uniform. Also P0's final shares: the differences
  are 0 in an honest run; the last u (and v) is ``w u* + (a combination of the secrets)``
  where w is a product of factors r and 1 - r, both units for an exceptional r outside {0, 1},
  so it is uniform. t is then u v.
- P0: P1's final shares, by the same argument. Nothing from the helper (its shares are seed
  draws).

A malicious verifier can make the check fail (an abort), not learn more: its own shares enter
only what it opens itself, and the coins the helper folds with are the ones the honest
verifier uses too. A malicious helper is the case the check is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import IntegrityError
from ..ring.galois import GaloisRing
from ..ring.ops import ring_matmul
from .config import HELPER, P0, P1
from .prg import PRG

__all__ = ["Claim", "Conv2d", "Elementwise", "Form", "MatMul", "check_claims", "coin_prg",
           "conv_form", "soundness_error", "triple_claim"]


@dataclass
class Claim:
    """One inner-product claim ``<u, v> = t`` over GR: this party's shares (verifiers) or the
    whole values (helper). u, v: ``[n, d]``; t: ``[d]``."""

    u: Tensor
    v: Tensor
    t: Tensor


def soundness_error(n: int, d: int) -> float:
    """Probability bound that a wrong claim over ``n`` elements passes (module docstring)."""
    folds = max(1, n.bit_length())  # folds of a vector of n + 1 elements (the pad)
    return (2 + 2 * folds) / 2.0**d


def _dot(gr: GaloisRing, u: Tensor, v: Tensor) -> Tensor:
    """sum_j u_j v_j in GR: the d x d matrix S = u^T v by the exact ring GEMM (n d^2
    multiply-adds in BLAS, not in Python-level loops), then its anti-diagonals, then mod f."""
    d = gr.d
    if u.shape[0] == 0:
        return gr.zero()
    sq = ring_matmul(u.transpose(0, 1).contiguous(), v.contiguous())  # S[i, l] = sum u_ji v_jl
    acc = torch.zeros(2 * d - 1, dtype=torch.int64)
    rows = torch.arange(d).unsqueeze(1) + torch.arange(d).unsqueeze(0)  # i + l
    acc.index_add_(0, rows.reshape(-1), sq.reshape(-1))
    return gr.reduce(acc)


def _powers(gr: GaloisRing) -> Tensor:
    """[d, d, d]: entry [l, i] is X^(l + i) mod f, so that the matrix of multiplication by r
    is ``sum_l r_l [l]`` (one small contraction per coin instead of d ring products)."""
    d = gr.d
    x_pow = gr.reduce(torch.eye(2 * d - 1, dtype=torch.int64))  # row k: X^k mod f
    idx = torch.arange(d).unsqueeze(1) + torch.arange(d).unsqueeze(0)  # l + i
    return x_pow[idx]


def _mult_matrix(powers: Tensor, r: Tensor) -> Tensor:
    """Row i of the result is r X^i mod f: ``u @ result`` multiplies each row of u by r."""
    return (r.reshape(-1, 1, 1) * powers).sum(0)


def coin_prg(engine) -> PRG:
    """A PRG of public coins: a fresh 16-byte seed drawn by P0 and P1 from their common PRG,
    after the helper's messages it covers, and sent to the helper by **both**.

    The helper refuses two different seeds. With coins from P0 alone, a cheating P0 could
    steer the helper's folds (coin 0 or 1 keeps one half whole), down to a single claimed
    element, and read a product of Beaver masks, a_j b_j, from the differences P1 opens at
    the end: with the opened x_j - a_j and y_j - b_j that is an equation in the data.
    """
    s = engine.session
    if engine.is_helper:
        like = ((16,), torch.uint8)
        c0 = s.recv(P0, tag="dzk.coin", expect=like)
        c1 = s.recv(P1, tag="dzk.coin", expect=like)
        if not torch.equal(c0, c1):
            raise IntegrityError("P0 and P1 sent the helper different coins for the check of "
                                 "its products: one of them deviates (the query is aborted)")
        return PRG(bytes(c0.tolist()))
    seed = engine.prg_01.bytes(16).clone()
    s.send(HELPER, seed, "dzk.coin")
    return PRG(bytes(seed.tolist()))


def check_claims(engine, claims: Sequence[Claim], gr: GaloisRing | None = None) -> None:
    """Run steps 2-4 on the concatenated claims; raise :class:`IntegrityError` at P0 and P1
    if the check fails. SPMD: every party calls it with its own shares (helper: the values)."""
    gr = gr or GaloisRing()
    s = engine.session
    d = gr.d
    if claims:
        u = torch.cat([c.u.reshape(-1, d) for c in claims])
        v = torch.cat([c.v.reshape(-1, d) for c in claims])
        t = gr.zero()
        for c in claims:
            t = gr.add(t, c.t)
    else:
        u, v, t = gr.zero((0,)), gr.zero((0,)), gr.zero()
    helper, is0 = engine.is_helper, engine.role == P0
    # 2. the zero-knowledge pad: u*, v* from the seeds (P0's half with the helper-P0 PRG,
    # P1's with the helper-P1 PRG), P1's share of t* sent
    if helper:
        us0, us1 = gr.random(engine.prg_h0, (1,)), gr.random(engine.prg_h1, (1,))
        vs0, vs1 = gr.random(engine.prg_h0, (1,)), gr.random(engine.prg_h1, (1,))
        us, vs = gr.add(us0, us1), gr.add(vs0, vs1)
        ts = gr.mul(us, vs)[0]
        ts0 = gr.random(engine.prg_h0)
        s.send(P1, gr.sub(ts, ts0), "dzk.pad")
        t = gr.add(t, ts)
    else:
        us, vs = gr.random(engine.prg_h, (1,)), gr.random(engine.prg_h, (1,))
        if is0:
            t = gr.add(t, gr.random(engine.prg_h))
        else:
            t = gr.add(t, s.recv(HELPER, tag="dzk.pad", expect=((d,), torch.int64)))
    u, v = torch.cat([u, us]), torch.cat([v, vs])
    # 3. folds
    diffs = []
    powers = _powers(gr)
    while u.shape[0] > 1:
        if u.shape[0] % 2:
            u, v = torch.cat([u, gr.zero((1,))]), torch.cat([v, gr.zero((1,))])
        h = u.shape[0] // 2
        u_l, u_d = u[:h], gr.sub(u[h:], u[:h])
        v_l, v_d = v[:h], gr.sub(v[h:], v[:h])
        if helper:
            g = torch.stack([_dot(gr, u_l, v_l),
                             gr.add(_dot(gr, u_l, v_d), _dot(gr, u_d, v_l)),
                             _dot(gr, u_d, v_d)])
            g0 = gr.random(engine.prg_h0, (3,))
            s.send(P1, gr.sub(g, g0), "dzk.fold")
        elif is0:
            g = gr.random(engine.prg_h, (3,))
        else:
            g = s.recv(HELPER, tag="dzk.fold", expect=((3, d), torch.int64))
        if not helper:  # g(0) + g(1) - t = 2 g0 + g1 + g2 - t, which must be 0
            diffs.append(gr.sub(gr.add(gr.add(g[0], g[0]), gr.add(g[1], g[2])), t))
        r = gr.random_exceptional(coin_prg(engine), (1,))
        by_r = _mult_matrix(powers, r[0])  # exact ring GEMMs below: u_l + r u_d, ...
        u = gr.add(u_l, ring_matmul(u_d.contiguous(), by_r))
        v = gr.add(v_l, ring_matmul(v_d.contiguous(), by_r))
        t = gr.add(g[0], gr.add(g[1], g[2:3].matmul(by_r)[0]).reshape(1, -1).matmul(by_r)[0])
    if helper:
        return
    # 4. open the differences and the last u, v, t between P0 and P1, and decide
    mine = torch.cat([torch.stack(diffs) if diffs else gr.zero((0,)), u, v, t[None]])
    other = s.exchange({engine.other: mine}, "dzk.open", same_shape=True)[engine.other]
    total = gr.add(mine, other)
    k = len(diffs)
    ok_diffs = bool(gr.is_zero(total[:k]).all()) if k else True
    ok_last = bool(gr.is_zero(gr.sub(gr.mul(total[k], total[k + 1]), total[k + 2])))
    if not (ok_diffs and ok_last):
        raise IntegrityError("the helper's correlated randomness failed its check: a product "
                             "it dealt is wrong (the query is aborted)")



# -- step 1: one triple, one claim -----------------------------------------------------------


@dataclass(frozen=True)
class Elementwise:
    """c = a * b, broadcast; with ``index``, c = a * b[index] on flattened values (block ReLU)."""

    index: Tensor | None = None


@dataclass(frozen=True)
class MatMul:
    """c = a @ b over the last two dims (batch dims broadcast), or a @ b^T."""

    transpose_b: bool = False


@dataclass(frozen=True)
class Conv2d:
    """c = conv2d(a, b) with these parameters (b the weight [O, C / groups, kh, kw])."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


Form = Elementwise | MatMul | Conv2d


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_form(stride, padding, dilation, groups: int) -> Conv2d:
    return Conv2d(_pair(stride), _pair(padding), _pair(dilation), int(groups))


def _unfold(x: Tensor, kh: int, kw: int, f: Conv2d) -> Tensor:
    """Exact int64 im2col: [N, C, H, W] -> [N, C * kh * kw, L] (channel-major, then kh, kw)."""
    (sh, sw), (ph, pw), (dh, dw) = f.stride, f.padding, f.dilation
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, 2).reshape(x.shape[0], x.shape[1] * kh * kw, oh * ow)


def _matmul_claim(gr: GaloisRing, coins: PRG, a: Tensor, b: Tensor, c: Tensor) -> Claim:
    """<a^T alpha, b beta> = alpha^T c beta per batch, concatenated over the batch."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    c = c.reshape(-1, *c.shape[-2:])
    nb, n, m = a.shape[0], a.shape[1], b.shape[2]
    alpha = gr.random_exceptional(coins, (nb, n))
    beta = gr.random_exceptional(coins, (nb, m))
    u = ring_matmul(a.transpose(1, 2).contiguous(), alpha)  # [B, k, d], exact mod 2^64
    v = ring_matmul(b.contiguous(), beta)
    w = ring_matmul(alpha.transpose(1, 2).contiguous(), c.contiguous())  # [B, d, m]
    t = _dot(gr, w.transpose(1, 2).reshape(-1, gr.d), beta.reshape(-1, gr.d))
    return Claim(gr.reduce(u.reshape(-1, gr.d)), gr.reduce(v.reshape(-1, gr.d)), t)


def triple_claim(gr: GaloisRing, coins: PRG, form: Form, a: Tensor, b: Tensor, c: Tensor
                 ) -> Claim:
    """The inner-product claim of step 1 for one triple (or one party's shares of it: every
    map here is linear in each of a, b and c, and the coins are common)."""
    if isinstance(form, Elementwise):
        bb = b.reshape(-1).index_select(0, form.index) if form.index is not None else b
        ae, be = torch.broadcast_tensors(a if form.index is None else a.reshape(-1), bb)
        ae, be = ae.reshape(-1), be.reshape(-1)
        rho = gr.random_exceptional(coins, (ae.numel(),))
        t = (rho * c.reshape(-1, 1)).sum(0)
        return Claim(gr.scale(rho, ae), gr.lift(be), gr.reduce(t[None])[0])
    if isinstance(form, MatMul):
        return _matmul_claim(gr, coins, a, b.transpose(-1, -2) if form.transpose_b else b, c)
    o, cg, kh, kw = b.shape
    g = form.groups
    cols = _unfold(a, kh, kw, form)  # [N, C kh kw, L]
    cols = cols.reshape(a.shape[0], g, cg * kh * kw, -1)
    wm = b.reshape(g, o // g, cg * kh * kw)
    cm = c.reshape(c.shape[0], g, o // g, -1)
    return _matmul_claim(gr, coins, wm, cols, cm)
