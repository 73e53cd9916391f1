"""Integrity monitor: fingerprint triples mixed into the device's batches (TSQP's oblivious check).

Protocol, per linear layer and per batch of ``B`` real items (seed 004,
``inference_integrity/<model>/main.py``, made exact and oblivious):

1. The enclave draws ``t`` fingerprint pairs ``fp1, fp2`` shaped like one real item, with
   ``fp1 + fp2`` in the range of a real centered activation (``round(N(mu/2, sigma^2/2))`` per
   channel from the real batch, as the seed does), and forms the triple ``(fp1, fp2, fp1 + fp2)``.
2. It stacks the ``B`` real items and the ``3t`` fingerprints, shuffles all ``N = B + 3t`` with a
   fresh secret permutation, and masks each with its own one-time pad (``mask.py``). Every item
   the device receives is uniform on Z_{2^32} and independent of the others, so its view carries
   no information about which positions are fingerprints or how they group into triples.
3. After unmasking, it checks ``f(fp1) + f(fp2) == f(fp1 + fp2) (mod 2^32)`` element for element.
   The device's honest arithmetic is exact, so an honest device never fails (no false alarms).

Guarantee (stated per layer batch, for any device strategy): positions of fingerprints are a
uniformly random subset independent of the device's view, so a device that alters the results of
``k`` items hits no fingerprint with probability ``C(B, k) / C(N, k)``. A triple with exactly one
altered member always fails the check (the error is nonzero mod 2^32). Hence a device that alters
one result, the way to corrupt a real answer with the least exposure, is caught with probability
exactly ``3t / (B + 3t)`` (:func:`detection_guarantee`), and corrupts a real answer undetected with
probability ``B / (B + 3t)``. Altering only real results is not a strategy the device can follow:
it cannot tell them apart. Faults that alter every item (noise, scaling, a skipped layer, a
replayed old result) make each triple pass only if the errors satisfy ``e1 + e2 == e3 (mod 2^32)``
in every coordinate; with independent masks under the errors this is negligible, and is measured
by ``experiments/tee_faults.py``. A query crossing ``L`` layers, corrupted at each, escapes
with ``(B/N)^L``.

Cost: ``3t`` extra items per layer batch, i.e. a factor ``(B + 3t) / B`` in device work and bytes.

Checksums (beyond the seed; Freivalds' check): fingerprints alone catch a one-item alteration
with probability exactly ``3t / N``, no more. So the enclave also draws ``k`` secret vectors
``s_1..s_k`` per layer batch, entries uniform on ``[0, 2^w)`` (``w = 16``), from its checksum PRG
(``rand.py``), never sent, and checks for every item and output position that
``sum_o s_o y[o] == conv(x, sum_o s_o W[o])``, where ``y`` is the unmasked device result lifted to
its signed representative in ``[-2^31, 2^31)`` and ``x`` the (unmasked) input it sent. An honest
result always passes (the accumulator is exactly ``y``: ``|acc| < 2^31``, ``mask.py``).

**Check mod 2^64 (default, ``check_bits=64``).** Both sides are computed exactly as integers
(int64; the magnitudes stay below ``O * 2^48``, so the comparison is one over the integers). A
device that returns ``r + e`` with ``e != 0 mod 2^32`` in some element makes the enclave's lifted
value ``y + d`` with ``d = e (mod 2^32)``, ``0 < |d| < 2^32``. Take one output position where the
error row ``d`` is nonzero and a coordinate ``o`` with ``d_o != 0``: for any values of the other
entries, at most one value of ``s_o`` makes ``s_o d_o`` cancel the rest (over the integers), so
one vector misses with probability at most ``2^-w``, all ``k`` with at most ``2^-wk``
(:func:`alteration_bound`). That holds for every error, including ``d = 2^31`` (a flipped top
bit), which is what the old check missed half the time.

**Check mod 2^32 (``check_bits=32``, the earlier default; kept for comparison).** The same sums
mod 2^32: an error whose smallest 2-adic valuation is ``v`` escapes one vector with probability
at most ``max(2^-w, 2^(v-32))``, i.e. 1/2 for ``d = 2^31`` (every even ``s_o`` cancels it), so
``k`` vectors only give ``2^-k``; ``k = 10`` vectors would be needed for ``0.999``.

The vectors are independent of everything the device sees and of the fingerprint positions, so:

* any alteration of a layer batch escapes with probability at most ``p^k``, ``p = 2^-w`` (64-bit
  check) or ``1/2`` (32-bit check): a device that corrupts one layer of a query (one element, or
  any number) is caught with probability at least ``1 - p^k``; with the defaults (``k = 2``,
  64-bit) ``1 - 2^-32``;
* a one-item alteration escapes with probability at most ``(B / N) p^k``
  (:func:`detection_guarantee`), since the fingerprints are checked independently.

Cost: on the trusted side, one int64 product with ``k`` rows and, per linear layer, a
convolution with ``k`` output channels (two float64 passes over 16-bit limbs keep it exact);
a depthwise conv costs ``k`` times the device's depthwise work. The 64-bit check costs the same
passes as the 32-bit one (``benchmarks/tee.py --sections checks`` measures both). Nothing extra
on the device or the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import IntegrityError  # raised when the device's result fails the check
from .mask import wrap
from .program import LinearSpec
from .rand import CHECKSUM_ENTRY_BITS, EnclaveRandomness

__all__ = [
    "MonitorConfig",
    "IntegrityError",
    "Mixed",
    "draw_fingerprints",
    "mix",
    "check",
    "detection_guarantee",
    "alteration_bound",
    "miss_per_vector",
    "check_trials",
    "triples_for",
    "draw_checksum_vectors",
    "checksum_pass",
]


@dataclass(frozen=True)
class MonitorConfig:
    """``triples`` fingerprint triples and ``checksums`` secret checksum vectors per layer batch.

    ``check_bits``: the checksum check is exact mod 2^64 (default; a one-layer fault of any kind
    escapes with at most ``2^-(16 k)``) or mod 2^32 (the earlier check; a flipped top bit
    escapes with ``2^-k``). ``entry_bits``: checksum vector entries are uniform on
    ``[0, 2^entry_bits)`` (16 by default; fewer only to measure the bound's tightness).
    Both ``triples`` and ``checksums`` 0 disables the monitor (insecure: results are unchecked).
    """

    triples: int = 2
    checksums: int = 2
    check_bits: int = 64
    entry_bits: int = CHECKSUM_ENTRY_BITS

    def __post_init__(self) -> None:
        if self.triples < 0:
            raise ValueError(f"triples must be >= 0, got {self.triples}")
        if not 0 <= self.checksums <= 64:
            raise ValueError(f"checksums must be in [0, 64], got {self.checksums}")
        if self.check_bits not in (32, 64):
            raise ValueError(f"check_bits must be 32 or 64, got {self.check_bits}")
        if not 1 <= self.entry_bits <= CHECKSUM_ENTRY_BITS:
            raise ValueError(f"entry_bits must be in [1, {CHECKSUM_ENTRY_BITS}], "
                             f"got {self.entry_bits}")

    def one_layer_bound(self) -> float:
        """Per-query detection bound for a device that corrupts one layer's result (any way)."""
        return alteration_bound(self.checksums, self.check_bits, self.entry_bits)


def miss_per_vector(check_bits: int = 64, entry_bits: int = CHECKSUM_ENTRY_BITS) -> float:
    """Worst-case probability, over all nonzero errors, that one checksum vector misses."""
    if check_bits == 64:
        return 2.0 ** -entry_bits
    if check_bits == 32:
        return 0.5  # d = 2^31: every even s_o cancels it, and half the entries are even
    raise ValueError(f"check_bits must be 32 or 64, got {check_bits}")


def alteration_bound(checksums: int, check_bits: int = 64,
                     entry_bits: int = CHECKSUM_ENTRY_BITS) -> float:
    """Lower bound on detecting ANY alteration of a layer batch by checksums alone."""
    return 1.0 - miss_per_vector(check_bits, entry_bits) ** checksums


def detection_guarantee(batch: int, triples: int, altered: int = 1, checksums: int = 0,
                        check_bits: int = 64,
                        entry_bits: int = CHECKSUM_ENTRY_BITS) -> float:
    """Lower bound on the probability that altering ``altered`` of ``batch + 3*triples`` results
    raises an alarm, with ``checksums`` secret checksum vectors checked mod ``2^check_bits``.

    With ``checksums == 0`` and ``altered == 1`` it is exact: ``3t / N``.
    """
    if batch < 0 or triples < 0 or altered < 1 or checksums < 0:
        raise ValueError("need batch >= 0, triples >= 0, altered >= 1, checksums >= 0")
    n = batch + 3 * triples
    if altered > n:
        raise ValueError(f"cannot alter {altered} of {n} results")
    miss = miss_per_vector(check_bits, entry_bits) ** checksums
    return 1.0 - math.comb(batch, altered) / math.comb(n, altered) * miss


def triples_for(batch: int, target: float) -> int:
    """Fewest triples whose single-alteration detection probability reaches ``target``."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    # 3t / (B + 3t) >= p  <=>  t >= p B / (3 (1 - p))
    return max(1, math.ceil(target * batch / (3.0 * (1.0 - target)) - 1e-12))


def draw_fingerprints(real: torch.Tensor, triples: int, lo: int, hi: int,
                      rng: EnclaveRandomness, trials: int = 1) -> torch.Tensor:
    """``(T * 3t, *item)`` int64: per trial, rows ``3j, 3j+1, 3j+2`` are ``fp1, fp2, fp1 + fp2``.

    ``real`` is ``T`` batches of centered activations ``q - z`` in ``[lo, hi]`` stacked
    (``(T * B, *item)``); each trial's fingerprints follow its own batch's per-channel mean and
    variance (channel = dim 1) so that ``fp1 + fp2`` looks like an input. Values come from the
    enclave's fingerprint PRG.
    """
    item = tuple(real.shape[1:])
    if triples == 0:
        return torch.empty((0, *item), dtype=torch.int64)
    t = trials
    r = real.to(torch.float64).reshape(t, -1, *item)
    keep = [t, 1, -1] + [1] * (len(item) - 1)
    if r.shape[1] and len(item):
        dims = [1] + list(range(3, r.dim()))
        mu = r.mean(dim=dims).view(keep)
        sd = r.std(dim=dims, unbiased=False).view(keep)
    else:
        mu = torch.zeros(1, dtype=torch.float64)
        sd = torch.ones(1, dtype=torch.float64)
    noise = rng.normal((t, 2 * triples, *item))
    half = torch.round(mu / 2 + noise * sd / math.sqrt(2.0))
    fp1 = torch.clamp(half[:, :triples], lo // 2, hi // 2).to(torch.int64)
    fp2 = torch.clamp(half[:, triples:], lo - lo // 2, hi - hi // 2).to(torch.int64)
    return torch.stack([fp1, fp2, fp1 + fp2], dim=2).reshape(t * 3 * triples, *item)


@dataclass(frozen=True)
class Mixed:
    """A shuffled batch: ``items[order]`` was sent; reals come first before shuffling."""

    items: torch.Tensor  # (N, ...) real then fingerprints, in shuffled (sent) order
    order: torch.Tensor  # int64 (N,): sent position j holds original item order[j]
    batch: int

    def unshuffle(self, sent_order: torch.Tensor) -> torch.Tensor:
        return sent_order[torch.argsort(self.order)]


def mix(real: torch.Tensor, fingerprints: torch.Tensor, rng: EnclaveRandomness) -> Mixed:
    """One layer batch: reals and fingerprints in a secret order (the shuffle PRG)."""
    allx = torch.cat([real.to(torch.int64), fingerprints], dim=0)
    order = rng.shuffles(1, int(allx.shape[0]))[0]
    return Mixed(allx[order], order, int(real.shape[0]))


def check(results: torch.Tensor, batch: int, triples: int) -> torch.Tensor:
    """Per-triple pass flags (bool ``(t,)``) for unmasked, unshuffled ring results."""
    fp = results[batch:].to(torch.int64).reshape(triples, 3, -1)
    return (wrap(fp[:, 0] + fp[:, 1] - fp[:, 2]) == 0).all(dim=1)


def check_trials(y: torch.Tensor, batch: int, triples: int) -> torch.Tensor:
    """Failed triples per trial (int64 ``(T,)``) for unshuffled results ``(T, N, ...)``."""
    t = int(y.shape[0])
    if triples == 0:
        return torch.zeros(t, dtype=torch.int64)
    fp = y[:, batch:].to(torch.int64).reshape(t, triples, 3, -1)
    bad = (wrap(fp[:, :, 0] + fp[:, :, 1] - fp[:, :, 2]) != 0).any(dim=2)
    return bad.sum(dim=1)


def draw_checksum_vectors(trials: int, checksums: int, out_channels: int,
                          rng: EnclaveRandomness,
                          bits: int = CHECKSUM_ENTRY_BITS) -> torch.Tensor:
    """``(T, k, O)`` secret vectors, entries uniform on ``[0, 2^bits)`` (int64), from the
    enclave's checksum PRG.

    16 bits: with the 64-bit check one vector misses any nonzero error with probability at most
    ``2^-16``; small entries keep the trusted side's kernels small and exact.
    """
    return rng.checksum_vectors(trials, checksums, out_channels, bits)


def _split_limbs(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k = hi * 2^16 + lo`` exactly, ``lo`` in [0, 2^16) (for ring elements after ``wrap``:
    ``hi`` in [-2^15, 2^15))."""
    lo = torch.remainder(k, 1 << 16)
    return (k - lo) // (1 << 16), lo


def _ring_apply(layer: LinearSpec, x: torch.Tensor, k: torch.Tensor, groups: int,
                check_bits: int = 64) -> torch.Tensor:
    """``layer``'s map of small-integer ``x`` by integer kernel ``k`` (``groups`` groups):
    mod 2^32 (``check_bits=32``: ``k`` is reduced first) or exactly (64).

    Two float64 passes over 16-bit limbs of ``k``: every partial sum is below
    ``fan_in * 2^10 * max|limb| < 2^53`` (checked).
    """
    if x.numel() and int(x.abs().max()) > 1 << 10:
        raise ValueError("checksum inputs must be small integers (centered int8 activations)")
    if check_bits == 32:
        k = wrap(k)
    hi, lo = _split_limbs(k)
    top = max(1 << 16, int(hi.abs().max()) if hi.numel() else 0)
    if int(k[0].numel()) * (1 << 10) * top >= 1 << 53:
        raise ValueError(f"layer {layer.name!r}: fan-in too wide for exact checksums")
    xd = x.to(torch.float64)

    def run(w: torch.Tensor) -> torch.Tensor:
        wd = w.to(torch.float64)
        if layer.kind == "linear":
            return torch.bmm(xd, wd.transpose(1, 2)).to(torch.int64)
        return F.conv2d(xd, wd, None, layer.stride, layer.padding, layer.dilation,
                        groups).to(torch.int64)

    out = run(hi) * (1 << 16) + run(lo)
    return wrap(out) if check_bits == 32 else out


def checksum_pass(layer: LinearSpec, weight: torch.Tensor, x: torch.Tensor, r: torch.Tensor,
                  s: torch.Tensor, check_bits: int = 64) -> torch.Tensor:
    """Per-item pass flags ``(T, n)`` of the checksum check.

    ``weight``: the layer's int8 weight in the order the device used; ``x``: ``(T, n, *in)``
    centered inputs as sent (unmasked, device layout); ``r``: ``(T, n, *out)`` unmasked device
    results as signed representatives in ``[-2^31, 2^31)``; ``s``: ``(T, k, O)`` from
    :func:`draw_checksum_vectors`. Vectorised over trials. ``check_bits``: compare mod 2^64 (exact
    integers, the default) or mod 2^32 (the earlier, weaker check).

    Cost: one int64 product ``s r`` (``k`` rows) and a ``k``-output-channel convolution; a
    grouped or depthwise conv becomes a dense one with ``k`` outputs, since
    ``sum_o s_o conv_g(x, W)[o]`` reads each input channel through one kernel per vector.
    """
    t, n = int(x.shape[0]), int(x.shape[1])
    k, o = int(s.shape[1]), int(s.shape[2])
    if check_bits not in (32, 64):
        raise ValueError(f"check_bits must be 32 or 64, got {check_bits}")
    red = wrap if check_bits == 32 else (lambda v: v)
    w = weight.to(torch.int64)
    rr = r.to(torch.int64)
    if check_bits == 64 and rr.numel() and (int(rr.max()) >= 1 << 31 or int(rr.min()) < -(1 << 31)):
        raise ValueError("the 64-bit check needs results lifted to [-2^31, 2^31)")
    # exact int64: |s r| sums stay below O * 2^47 (and wrap mod 2^64, exact mod 2^32)
    lhs = red(torch.matmul(s.view(t, 1, k, o), rr.reshape(t, n, o, -1)))
    if layer.kind == "linear":
        kern = red(torch.matmul(s, w))  # (T, k, I)
        rhs = _ring_apply(layer, x, kern, 1, check_bits).unsqueeze(-1)
    elif layer.groups == 1:
        kern = red(torch.matmul(s, w.view(o, -1)))  # (T, k, C * kh * kw)
        xin = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:])
        out = _ring_apply(layer, xin, kern.view(t * k, *w.shape[1:]), t, check_bits)
        rhs = out.view(n, t, k, -1).transpose(0, 1)
    else:
        rhs = red(_grouped_rhs(layer, w, x, s))
    return (red(lhs - rhs) == 0).reshape(t, n, -1).all(dim=2)


def _grouped_rhs(layer: LinearSpec, w: torch.Tensor, x: torch.Tensor,
                 s: torch.Tensor) -> torch.Tensor:
    """``sum_o s_o conv_g(x, W)[o]`` for a grouped (e.g. depthwise) conv, ``(T, n, k, P)``,
    as exact integers.

    Each output channel's kernel is scaled by its ``s_o`` (below ``2^16 * 127``: no wrap, one
    float64 pass), the grouped conv runs with ``k`` times the channels, and the outputs are
    summed over channels in float64; the bound below keeps every sum exact.
    """
    t, n, k, o = int(x.shape[0]), int(x.shape[1]), int(s.shape[1]), int(s.shape[2])
    g = layer.groups
    xmax = int(x.abs().max()) if x.numel() else 0
    if xmax * (1 << 16) * 127 * int(w[0].numel()) * o >= 1 << 53:
        raise ValueError(f"layer {layer.name!r}: too wide for exact checksums")
    kern = s.view(t, k, o, *([1] * (w.dim() - 1))) * w.unsqueeze(0).unsqueeze(0)
    kern = kern.view(t, k, g, o // g, *w.shape[1:]).transpose(1, 2)  # (T, g, k, O/g, ...)
    kern = kern.reshape(t * g * k * (o // g), *w.shape[1:]).to(torch.float64)
    xin = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:]).to(torch.float64)
    out = F.conv2d(xin, kern, None, layer.stride, layer.padding, layer.dilation, t * g)
    out = out.view(n, t, g, k, o // g, -1).sum(dim=(2, 4)).to(torch.int64)
    return out.transpose(0, 1)  # exact integers
