"""The 3-party secret-sharing engine: seeds, inputs, outputs, products, truncation.

Threat model (as in the Knapsack seed, Gorski & Avidan, and SecureNN, Wagh et al. 2019):
semi-honest, non-colluding parties. P0 and P1 hold additive shares mod 2^64 of every activation
and weight; the helper P2 deals correlated randomness and assists comparisons. Collusion of the
helper with either compute party reveals everything. A party that deviates is not detected by
this engine, with one exception: with ``MPCConfig.verify_dealer`` the helper's Beaver triples
are proven before any output leaves (:meth:`check_dealer`, :mod:`.dzk`). The rest of the
malicious design is in ``docs/integrity.md``. Out of scope: the model's architecture and every
tensor's shape (public to all three servers), the number and timing of queries, side channels.

Randomness: three pairwise seeds agreed at set-up over the session's (TLS) channels: P0-P1,
helper-P0 and helper-P1, each 16 bytes from the OS CSPRNG, fresh per session, expanded by the
AES-CTR PRG of :mod:`.prg`. Whatever a party can derive from a seed it shares with the helper is
never sent ("seed compression"): the helper sends only P1's correction terms.

What each party receives from the methods here (each method's docstring gives the steps):

- set-up: P1 gets the P0-P1 seed and the helper-P1 seed, P0 the helper-P0 seed; seeds are the
  receiver's own randomness.
- :meth:`share_input` from an outside owner (the user): P0 gets enc(x) - r, P1 gets r, with r
  uniform from the owner's CSPRNG: each share alone is uniform.
- :meth:`beaver` / :meth:`beaver_fixed`: P0 gets e1 = x1 - a1 (and f1 = y1 - b1), P1 gets
  e0, f0 and c1 = c - c0; a1, b1 come from the helper-P1 seed (unknown to P0), a0, b0, c0
  from the helper-P0 seed (unknown to P1): every message is a fresh uniform value. The helper
  receives nothing.
- :meth:`prepare_weight`: P0 and P1 open F = W - B once per weight; B = B0 + B1 with each half
  from a seed the other compute party lacks, so F is uniform to each. The helper, which knows
  B, never sees F. B is reused across requests, but F is opened once, so this is one use of
  a one-time pad; each request's activation is masked by a fresh a.
- :meth:`truncate` ("local"): no message. ("exact"): P0 gets b - beta, P1 gets a - alpha and
  alpha beta - gamma0 mod 2^d, each masked by a fresh helper seed draw the receiver lacks.
- :meth:`reveal` to both compute parties opens the value (only used on values meant to be
  public, or under ``debug_reveal_insecure``); to an outside party, and
  :meth:`send_share_to`, send :meth:`output_share`: re-randomised by the P0-P1 seed, so the
  recipient's two shares are a uniform pair that sums to the value and nothing else (the
  shares left by a local truncation would otherwise show P0's sign-extended top bits).

The view tests (``tests/mpc/test_view.py``) fix one party's seeds, vary every other party's
and the secret, and test that the joint law of what that party receives does not depend on
the secret, for every protocol here and in :mod:`.compare`, :mod:`.block_relu` and the
nonlinear modules.

All methods are SPMD: every party calls the same method with the same shapes in the same order;
the party's role decides what it computes and sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..net.errors import MessageError
from ..net.session import Session
from ..ring.fixed import FixedPoint
from ..ring.galois import GaloisRing
from ..ring.kernels import auto_choice
from ..ring.ops import ring_conv2d, ring_matmul
from .config import HELPER, P0, P1, MPCConfig
from .dzk import Elementwise, Form, MatMul, check_claims, coin_prg, conv_form, triple_claim
from .prg import PRG, new_seed
from .share import Share, broadcast_shape, meta

__all__ = ["MPCEngine", "PreparedWeight", "encode", "decode"]

log = logging.getLogger(__name__)

Bilinear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Where a party's seeds come from: called with "h0", "h1" (at the helper) or "01" (at P0).
SeedSource = Callable[[str], bytes]


def _like(t: torch.Tensor | None, ref: torch.Tensor, peer: int, tag: str) -> torch.Tensor:
    """``t``, if it has ``ref``'s shape and dtype; else the error that names ``peer``."""
    if t is None or t.shape != ref.shape or t.dtype != ref.dtype:
        got = "nothing" if t is None else f"a message of shape {tuple(t.shape)} {t.dtype}"
        raise MessageError(f"party {peer} sent {got} where the protocol expects {tag} of "
                           f"shape {tuple(ref.shape)} {ref.dtype}")
    return t


def _fresh_seed(_purpose: str) -> bytes:
    return new_seed()


def encode(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Fixed-point encode with the project's one codec, :class:`~secinfer.ring.FixedPoint`
    (round half to even; NaN, infinity and |x| > 2^(62 - f) refused); integer tensors are read
    as the reals they hold (pixels, indices)."""
    x = x.detach()
    return FixedPoint(frac_bits).encode(x if x.is_floating_point() else x.to(torch.float64))


def decode(x: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Fixed-point ring elements back to float64 (:class:`~secinfer.ring.fixed.FixedPoint`)."""
    return FixedPoint(frac_bits).decode(x)


class PreparedWeight:
    """A secret weight whose Beaver mask was opened once: F = W - B is public to P0 and P1.

    Re-using B across queries is safe because F never changes and B stays secret (it is the
    one-time pad of a constant); each query still draws a fresh mask A for the activation.
    Per query, only the activation's masked value is exchanged.
    """

    def __init__(self, opened: torch.Tensor | None, b_share: torch.Tensor | None,
                 b_full: torch.Tensor | None, shape: torch.Size, frac_bits: int) -> None:
        self.opened = opened      # F at P0/P1
        self.b_share = b_share    # B_i at P0/P1
        self.b_full = b_full      # B at the helper
        self.shape = shape
        self.frac_bits = frac_bits


class MPCEngine:
    """One party's engine over a :class:`Session` with parties ``P0=0, P1=1, HELPER=2``."""

    def __init__(self, session: Session, config: MPCConfig | None = None,
                 seed_source: SeedSource | None = None) -> None:
        """``seed_source`` exists for the view tests, which fix one party's randomness and
        vary everyone else's; the default, and the only sound choice in production, draws
        every seed fresh from the OS CSPRNG."""
        self.session = session
        self._seed_source = seed_source or _fresh_seed
        self.config = config or MPCConfig()
        self.role = session.party_id
        if self.role not in (P0, P1, HELPER) or not {P0, P1, HELPER} <= {*session.peers,
                                                                          self.role}:
            raise ValueError("the MPC engine needs parties 0, 1 (compute) and 2 (helper)")
        if self.config.debug_reveal_insecure:
            log.warning("INSECURE DEBUG MODE: compute parties reveal intermediates to each other")
        # debug mode only: per op, the expected number of elements SecureML's local truncation
        # gets wrong (sum of |x| / 2^64 over the truncated values), whichever protocol runs
        self.debug_truncation_risk: dict[str, float] = {}
        # which exact ring kernels "auto" runs (a cache read, or a one-off measurement, and a
        # `uname` subprocess for the fingerprint) is settled now, not inside the first request
        auto_choice("cpu")
        # with verify_dealer: every triple this party used (its shares; the helper: the values)
        self._triples: list[tuple[Form, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.unchecked_triples = 0
        self._setup_seeds()

    # ------------------------------------------------------------------ set-up
    def _setup_seeds(self) -> None:
        """Agree the pairwise seeds (one round, 16 bytes per seed, over the encrypted links)."""
        s = self.session
        with s.op("setup"):
            if self.role == HELPER:
                h0, h1 = self._seed_source("h0"), self._seed_source("h1")
                s.send(P0, torch.frombuffer(bytearray(h0), dtype=torch.uint8), "setup.seed")
                s.send(P1, torch.frombuffer(bytearray(h1), dtype=torch.uint8), "setup.seed")
                self.prg_h0, self.prg_h1 = PRG(h0), PRG(h1)
            elif self.role == P0:
                s01 = self._seed_source("01")
                s.send(P1, torch.frombuffer(bytearray(s01), dtype=torch.uint8), "setup.seed")
                self.prg_h = PRG(self._recv_seed(HELPER))
                self.prg_01 = PRG(s01)
            else:
                self.prg_h = PRG(self._recv_seed(HELPER))
                self.prg_01 = PRG(self._recv_seed(P0))

    def _recv_seed(self, peer: int) -> bytes:
        return bytes(self.session.recv(peer, tag="setup.seed",
                                       expect=((16,), torch.uint8)).tolist())

    @property
    def is_helper(self) -> bool:
        return self.role == HELPER

    @property
    def other(self) -> int:
        """The other compute party (P0 <-> P1)."""
        return P1 if self.role == P0 else P0

    @property
    def f(self) -> int:
        return self.config.frac_bits

    def placeholder(self, shape: torch.Size | tuple[int, ...], frac_bits: int) -> Share:
        return Share(meta(shape), frac_bits)

    # ------------------------------------------------------------------ inputs and outputs
    def share_input(self, x: torch.Tensor | None, owner: int, shape: tuple[int, ...],
                    frac_bits: int | None = None) -> Share:
        """Secret-share ``x`` held by ``owner`` (P0, P1 or an outside party such as a user).

        Owner P0/P1: the other share is a P0-P1 PRG draw, nothing is sent. Another owner sends
        ``enc(x) - r`` to P0 and ``r`` to P1 (r from the OS CSPRNG): 16 bytes per element.
        """
        f = self.f if frac_bits is None else frac_bits
        shape = tuple(shape)
        if self.is_helper:
            return self.placeholder(shape, f)
        if owner in (P0, P1):
            r = self.prg_01.int64(shape)
            if self.role == owner:
                if x is None or tuple(x.shape) != shape:
                    raise ValueError(f"input shape {None if x is None else tuple(x.shape)} "
                                     f"does not match the plan's {shape}")
                return Share(encode(x, f) - r, f)
            return Share(r, f)
        data = self.session.recv(owner)
        if tuple(data.shape) != shape or data.dtype != torch.int64:
            raise ValueError(f"party {owner} sent a share of shape {tuple(data.shape)} "
                             f"{data.dtype}, expected {shape} int64")
        return Share(data, f)

    def reveal(self, x: Share, to: int | None = None) -> torch.Tensor | None:
        """Open ``x`` to both compute parties (``to=None``) or to one party. Returns floats.

        Cost: to both, one round and 8 bytes per element each way; to one party, 8 bytes per
        element from each compute party that is not the recipient.
        """
        s = self.session
        if to is None:
            if self.is_helper:
                return None
            other = s.exchange({self.other: x.data}, "reveal", same_shape=True)[self.other]
            return decode(x.data + other, x.frac_bits)
        if self.role in (P0, P1) and self.role != to:
            s.send(to, x.data if to in (P0, P1) else self.output_share(x), "output")
        if self.role != to:
            return None
        total = x.data.clone() if self.role in (P0, P1) else torch.zeros(x.shape, dtype=torch.int64)
        for p in (P0, P1):
            if p != self.role:
                total += s.recv(p, tag="output", expect=(x.shape, torch.int64))
        return decode(total, x.frac_bits)

    def output_share(self, x: Share) -> torch.Tensor:
        """This compute party's share of ``x`` for an outside recipient, re-randomised.

        1. P0 and P1 draw the same fresh m from their common PRG;
        2. P0 returns x0 + m, P1 returns x1 - m.
        The recipient then holds a uniform pair summing to x, whatever the computation left in
        the shares (after a local truncation, for example, P0's share keeps the sign-extended
        top bits of a uniform value, and the carry of the two shares' low bits depends on the
        value before truncation). Cost: none (no message; 8 bytes per element of PRG output).
        """
        if self.is_helper:
            raise ValueError("the helper holds no share to send")
        m = self.prg_01.int64(x.shape)
        return x.data + m if self.role == P0 else x.data - m

    def send_share_to(self, x: Share, to: int) -> None:
        """Send this party's (re-randomised, see :meth:`output_share`) share to ``to``."""
        if self.role in (P0, P1):
            self.session.send(to, self.output_share(x) if to not in (P0, P1) else x.data,
                              "output")

    # ------------------------------------------------------------------ public operands
    def add_public(self, x: Share, c: torch.Tensor | float) -> Share:
        if self.role != P0:
            return x
        enc = encode(torch.as_tensor(c, dtype=torch.float64), x.frac_bits)
        return Share(x.data + enc, x.frac_bits)

    def mul_public(self, x: Share, c: torch.Tensor | float, truncate: bool = True) -> Share:
        """Multiply by a public real constant/tensor (encoded at f bits), then truncate."""
        enc = encode(torch.as_tensor(c, dtype=torch.float64), self.f)
        if self.is_helper:
            y = self.placeholder(broadcast_shape(x.shape, enc.shape), x.frac_bits + self.f)
        else:
            y = Share(x.data * enc, x.frac_bits + self.f)
        return self.truncate(y, self.f) if truncate else y

    def public_const(self, c: torch.Tensor, frac_bits: int) -> Share:
        """A public tensor as a share (P0 holds it, P1 holds zero)."""
        enc = encode(c, frac_bits)
        if self.is_helper:
            return self.placeholder(enc.shape, frac_bits)
        return Share(enc if self.role == P0 else torch.zeros_like(enc), frac_bits)

    # ------------------------------------------------------------------ truncation
    def truncate(self, x: Share, bits: int | None = None) -> Share:
        """Divide by 2^bits to within one unit, with the configured protocol (``truncation``).

        ``"local"``: SecureML's local truncation (Mohassel & Zhang 2017), no communication:
        1. P0 computes ``x0 >> d``; 2. P1 computes ``-((-x1) >> d)``.
        The result is off by at most one unit in the last place, except with probability at
        most 2^(l_x + 1 - 64) per element when |x| < 2^l_x (ring units), where it is off by
        about 2^(64 - d). See :class:`MPCConfig` for the resulting bounds.

        ``"exact"``: :meth:`_truncate_exact`, never more than one unit off.
        """
        d = self.f if bits is None else bits
        if d == 0:
            return x
        if self.config.debug_reveal_insecure and not self.is_helper:
            self._debug_truncation_risk(x)
        if self.config.truncation == "exact":
            return self._truncate_exact(x, d)
        if self.is_helper:
            return self.placeholder(x.shape, x.frac_bits - d)
        if self.role == P0:
            return Share(x.data >> d, x.frac_bits - d)
        return Share(-((-x.data) >> d), x.frac_bits - d)

    def _truncate_exact(self, x: Share, d: int) -> Share:
        """Truncation that computes the shares' wrap bit instead of hoping it is zero.

        Follows the "truncation with known MSB" of SIRNN (Rathee et al., S&P 2021, section 4)
        with the helper dealing the one product it needs. For |x| < 2^62 (ring units):
        1. P0 adds 2^62 to its share, so x' = x + 2^62 lies in [0, 2^63): its top bit is 0;
        2. the shares, read as unsigned, then wrap (x0' + x1 = x' + 2^64) exactly when either
           top bit is set: w = a OR b = a + b - ab with a = msb(x0') at P0, b = msb(x1) at P1;
        3. ab on shares mod 2^d (only w mod 2^d matters below): the helper deals alpha, gamma0
           (P0's seed), beta (P1's seed) and sends gamma1 = alpha beta - gamma0 to P1; P0 sends
           e = a - alpha, P1 sends g = b - beta (one round, d bits each);
           P0: t0 = e g + alpha g + gamma0, P1: t1 = e beta + gamma1, ab = t0 + t1;
        4. P_i: y_i = (x_i' >>> d) - (w_i mod 2^d) 2^(64 - d), and P0 adds 1 - 2^(62 - d).
        Then y0 + y1 = floor(x / 2^d) + 1 - c with c in {0, 1} the carry of the low bits: one
        unit at most, whatever the shares. As the shares are uniform, P(c = 0) = (L + 1) / 2^d
        with L the low d bits of x, so the result is x / 2^d stochastically rounded with a bias
        of 2^-d units (without the +1 every truncation would pull values down by one unit).
        Every message is masked by a uniform value mod 2^d the receiver does not know.
        Cost: one round; 3d bits per element (P0, P1, helper: d each, sent as 16, 32 or 64-bit
        integers).
        """
        if not 0 < d < 62:
            raise ValueError(f"exact truncation shifts by 1..61 bits, got {d}")
        shape, fz = x.shape, x.frac_bits - d
        mask = (1 << d) - 1
        wire = torch.int16 if d <= 16 else torch.int32 if d <= 32 else torch.int64
        if self.is_helper:
            alpha = self.prg_h0.int64(shape) & mask
            gamma0 = self.prg_h0.int64(shape) & mask
            beta = self.prg_h1.int64(shape) & mask
            self.session.send(P1, ((alpha * beta - gamma0) & mask).to(wire), "trunc.corr")
            return self.placeholder(shape, fz)
        xs = x.data + (1 << 62) if self.role == P0 else x.data
        top = (xs < 0).to(torch.int64)
        mine = self.prg_h.int64(shape) & mask  # alpha at P0, beta at P1
        masked = (top - mine) & mask
        self.session.send(self.other, masked.to(wire), "trunc.open")
        if self.role == P0:
            gamma0 = self.prg_h.int64(shape) & mask
            g = self.session.recv(P1, tag="trunc.open", expect=(shape, wire)).to(torch.int64) & mask
            t = masked * g + mine * g + gamma0
        else:
            gamma1 = self.session.recv(HELPER, tag="trunc.corr",
                                       expect=(shape, wire)).to(torch.int64)
            e = self.session.recv(P0, tag="trunc.open",
                                  expect=(shape, wire)).to(torch.int64) & mask
            t = e * mine + gamma1
        w = (top - t) & mask
        y = ((xs >> d) & ((1 << (64 - d)) - 1)) - (w << (64 - d))
        if self.role == P0:
            y = y + (1 - (1 << (62 - d)))
        return Share(y, fz)

    # ------------------------------------------------------------------ products
    def _open_masked(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Exchange masked shares with the other compute party (P1 first asks the helper)."""
        flat = torch.cat([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0].reshape(-1)
        self.session.send(self.other, flat, "beaver.open")
        return self._split(flat, parts)

    def _split(self, flat: torch.Tensor, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        out, i = [], 0
        for p in parts:
            out.append(flat[i : i + p.numel()].reshape(p.shape))
            i += p.numel()
        return out

    def _record(self, form: Form | None, op: Bilinear, a: torch.Tensor, b: torch.Tensor,
                c: torch.Tensor) -> None:
        if not self.config.verify_dealer:
            return
        if form is None:
            form = (Elementwise() if op is torch.mul else MatMul() if op is ring_matmul
                    else None)
        if form is None:
            self.unchecked_triples += 1
            return
        self._triples.append((form, a, b, c))

    def check_dealer(self) -> int:
        """Prove every triple recorded since the last call (``verify_dealer``), then forget
        them; raise :class:`~secinfer.errors.IntegrityError` at P0 and P1 if one is wrong.

        :func:`secinfer.mpc.dzk.check_claims` gives the steps, cost and soundness. Call it
        before any output leaves the compute parties. Returns the number of triples checked;
        a triple of a bilinear op without a form (``unchecked_triples``) is refused here.
        """
        if self.unchecked_triples:
            raise ValueError(f"{self.unchecked_triples} products of this query have no check "
                             "form (pass form= to beaver): refusing to call them verified")
        with self.session.op("check_dealer"):
            gr = GaloisRing()
            coins = coin_prg(self)
            claims = [triple_claim(gr, coins, f, a, b, c) for f, a, b, c in self._triples]
            n = len(claims)
            self._triples = []
            check_claims(self, claims, gr)
        return n

    def beaver(self, x: Share, y: Share, op: Bilinear, form: Form | None = None) -> Share:
        """``op(x, y)`` for a bilinear ``op`` on secret x and y, untruncated (scale f_x + f_y).

        Beaver's multiplication triples (Beaver 1991) dealt by the helper:
        1. helper: a = a0 + a1, b = b0 + b1 from its seeds with P0 and P1; c = op(a, b);
           c0 from the P0 seed; sends c1 = c - c0 to P1;
        2. P_i: sends e_i = x_i - a_i and f_i = y_i - b_i to the other compute party;
        3. P_i: e = e0 + e1, f = f0 + f1; z_i = op(e, f + b_i) [P0] or op(e, b_i) [P1],
           plus op(a_i, f) + c_i.
        Cost: one round; each compute party sends 8 (|x| + |y|) bytes; the helper sends
        8 |op(x, y)| bytes to P1.
        """
        fz = x.frac_bits + y.frac_bits
        if self.is_helper:
            a0, b0 = self.prg_h0.int64(x.shape), self.prg_h0.int64(y.shape)
            a1, b1 = self.prg_h1.int64(x.shape), self.prg_h1.int64(y.shape)
            c = op(a0 + a1, b0 + b1)
            c0 = self.prg_h0.int64(c.shape)
            self.session.send(P1, c - c0, "beaver.corr")
            self._record(form, op, a0 + a1, b0 + b1, c)
            return self.placeholder(c.shape, fz)
        a, b = self.prg_h.int64(x.shape), self.prg_h.int64(y.shape)
        e_i, f_i = x.data - a, y.data - b
        mine = [e_i, f_i]
        self._open_masked(mine)
        c1 = self.session.recv(HELPER, tag="beaver.corr") if self.role == P1 else None
        n_open = e_i.numel() + f_i.numel()
        e_o, f_o = self._split(self.session.recv(self.other, tag="beaver.open",
                                                 expect=((n_open,), torch.int64)), mine)
        e, f = e_i + e_o, f_i + f_o
        z = op(e, f + b) if self.role == P0 else op(e, b)
        z = z + op(a, f)
        c_i = self.prg_h.int64(z.shape) if self.role == P0 else _like(c1, z, HELPER, "beaver.corr")
        self._record(form, op, a, b, c_i)
        return Share(z + c_i, fz)

    def prepare_weight(self, w: Share) -> PreparedWeight:
        """Open ``F = W - B`` once so that later products with ``W`` exchange only activations."""
        if self.is_helper:
            b = self.prg_h0.int64(w.shape) + self.prg_h1.int64(w.shape)
            return PreparedWeight(None, None, b, w.shape, w.frac_bits)
        b_i = self.prg_h.int64(w.shape)
        f_i = w.data - b_i
        got = self.session.exchange({self.other: f_i}, "weight.open", same_shape=True)
        opened = f_i + got[self.other]
        return PreparedWeight(opened, b_i, None, w.shape, w.frac_bits)

    def beaver_fixed(self, x: Share, w: PreparedWeight, op: Bilinear, form: Form | None = None
                     ) -> Share:
        """``op(x, W)`` with a prepared weight: Beaver with B re-used, fresh A per call.

        1. helper: a = a0 + a1 fresh; c = op(a, B); sends c1 = c - c0 to P1;
        2. P_i: sends e_i = x_i - a_i; 3. z_i = op(e, F + B_i) [P0] / op(e, B_i) [P1]
           + op(a_i, F) + c_i.
        Cost: one round; each compute party sends 8 |x| bytes; the helper 8 |op(x, W)| to P1.
        """
        fz = x.frac_bits + w.frac_bits
        if self.is_helper:
            a = self.prg_h0.int64(x.shape) + self.prg_h1.int64(x.shape)
            assert w.b_full is not None
            c = op(a, w.b_full)
            c0 = self.prg_h0.int64(c.shape)
            self.session.send(P1, c - c0, "beaver.corr")
            self._record(form, op, a, w.b_full, c)
            return self.placeholder(c.shape, fz)
        assert w.opened is not None and w.b_share is not None
        a = self.prg_h.int64(x.shape)
        e_i = x.data - a
        self.session.send(self.other, e_i, "beaver.open")
        c1 = self.session.recv(HELPER, tag="beaver.corr") if self.role == P1 else None
        e = e_i + self.session.recv(self.other, tag="beaver.open",
                                    expect=(tuple(e_i.shape), torch.int64))
        rhs = w.opened + w.b_share if self.role == P0 else w.b_share
        z = op(e, rhs) + op(a, w.opened)
        c_i = self.prg_h.int64(z.shape) if self.role == P0 else _like(c1, z, HELPER, "beaver.corr")
        self._record(form, op, a, w.b_share, c_i)
        return Share(z + c_i, fz)

    # ------------------------------------------------------------------ convenience products
    def mul(self, x: Share, y: Share, truncate: bool = True) -> Share:
        """Elementwise product (broadcast shapes must already agree)."""
        z = self.beaver(x, y, torch.mul)
        return self.truncate(z, min(x.frac_bits, y.frac_bits)) if truncate and min(
            x.frac_bits, y.frac_bits) else z

    def matmul(self, x: Share, y: Share, truncate: bool = True) -> Share:
        z = self.beaver(x, y, ring_matmul)
        return self.truncate(z, y.frac_bits) if truncate else z

    def linear(self, x: Share, w: PreparedWeight, bias: Share | None = None) -> Share:
        """x @ W^T + bias, with W prepared; bias at the activation's scale."""
        z = self.beaver_fixed(x, w, lambda a, b: ring_matmul(a, b.transpose(-1, -2)),
                              MatMul(transpose_b=True))
        z = self.truncate(z, w.frac_bits)
        return z + bias if bias is not None else z

    def conv2d(self, x: Share, w: PreparedWeight, bias: Share | None = None, stride=1,
               padding=0, dilation=1, groups=1) -> Share:
        def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return ring_conv2d(a, b, stride=stride, padding=padding, dilation=dilation,
                               groups=groups)

        z = self.truncate(self.beaver_fixed(x, w, op, conv_form(stride, padding, dilation,
                                                                groups)), w.frac_bits)
        if bias is not None:
            z = z + bias.reshape(1, -1, 1, 1).expand(*z.shape)
        return z

    # ------------------------------------------------------------------ debugging
    def _debug_truncation_risk(self, x: Share) -> None:
        """INSECURE: open x between P0 and P1 and add its local-truncation failure odds."""
        got = self.session.exchange({self.other: x.data}, "debug", same_shape=True)
        raw = x.data + got[self.other]
        op = self.session.acct.current.rsplit("/", 1)[-1]
        risk = float(raw.abs().to(torch.float64).sum()) / 2.0**64
        self.debug_truncation_risk[op] = self.debug_truncation_risk.get(op, 0.0) + risk

    def debug_check(self, name: str, x: Share, expect: torch.Tensor | None = None,
                    tol: float = 1e-2) -> None:
        """INSECURE (only with ``debug_reveal_insecure``): reveal and compare with plaintext."""
        if not self.config.debug_reveal_insecure:
            return
        val = self.reveal(x)
        if val is None:
            return
        bound = 2.0 ** (62 - 2 * self.f)
        if val.abs().max() > bound:
            log.warning("debug: %s overflows (max |x| = %.3g > %.3g)", name, val.abs().max(), bound)
        if expect is not None and (val - expect).abs().max() > tol:
            raise AssertionError(f"debug: {name} deviates from plaintext by "
                                 f"{(val - expect).abs().max():.3g}")
