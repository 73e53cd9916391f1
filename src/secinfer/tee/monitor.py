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
by ``faults.py``. A query crossing ``L`` layers, corrupted at each, escapes with ``(B/N)^L``.

Cost: ``3t`` extra items per layer batch, i.e. a factor ``(B + 3t) / B`` in device work and bytes.

Checksums (beyond the seed; Freivalds' check over Z_{2^32}): fingerprints alone catch a
one-item alteration with probability exactly ``3t / N``, no more. So the enclave also draws
``k`` secret vectors ``s_1..s_k`` per layer batch, entries uniform on ``[0, 2^16)``, never sent,
and checks for every item that ``sum_o s_o r[o] == conv(x, sum_o s_o W[o]) (mod 2^32)``, where
``r`` is the unmasked device result and ``x`` the (unmasked) input it sent. An honest result
always passes. Take a nonzero error row ``e`` (over output channels, at one item and position)
and a coordinate ``o`` of smallest 2-adic valuation ``v``: whatever the other entries, at most
``max(1, 2^16 / 2^(32-v))`` of the 2^16 values of ``s_o`` cancel the sum, so one vector misses
with probability at most ``max(2^-16, 2^(v-32)) <= 1/2``, and all ``k`` with at most ``2^-k``.
The vectors are independent of everything the device sees and of the fingerprint positions, so:

* any alteration of any result escapes with probability at most ``2^-k``;
* a one-item alteration escapes with probability at most ``(B / N) 2^-k``
  (:func:`detection_guarantee`); an error of odd value (``v = 0``) escapes with ``(B/N) 2^-16k``.

The bound ``2^-k`` is reached only by errors that are multiples of ``2^31`` (the top bit of an
element flipped); ``faults.py`` has that fault (``msb``) to show it.
Cost: on the trusted side, one int64 product with ``k`` rows and, per linear layer, a
convolution with ``k`` output channels (two float64 passes over 16-bit limbs keep it exact);
a depthwise conv costs ``k`` times the device's depthwise work. Nothing extra on the device or
the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .graph import LinearSpec
from .mask import wrap

__all__ = [
    "MonitorConfig",
    "IntegrityError",
    "Mixed",
    "draw_fingerprints",
    "mix",
    "check",
    "detection_guarantee",
    "triples_for",
    "draw_checksum_vectors",
    "checksum_pass",
]


class IntegrityError(RuntimeError):
    """The device returned a result that fails the fingerprint check."""


@dataclass(frozen=True)
class MonitorConfig:
    """``triples`` fingerprint triples and ``checksums`` secret checksum vectors per layer batch.

    Both 0 disables the monitor (insecure: results are unchecked).
    """

    triples: int = 2
    checksums: int = 2

    def __post_init__(self) -> None:
        if self.triples < 0:
            raise ValueError(f"triples must be >= 0, got {self.triples}")
        if not 0 <= self.checksums <= 64:
            raise ValueError(f"checksums must be in [0, 64], got {self.checksums}")


def detection_guarantee(batch: int, triples: int, altered: int = 1, checksums: int = 0) -> float:
    """Lower bound on the probability that altering ``altered`` of ``batch + 3*triples`` results
    raises an alarm, with ``checksums`` secret checksum vectors.

    With ``checksums == 0`` and ``altered == 1`` it is exact: ``3t / N``.
    """
    if batch < 0 or triples < 0 or altered < 1 or checksums < 0:
        raise ValueError("need batch >= 0, triples >= 0, altered >= 1, checksums >= 0")
    n = batch + 3 * triples
    if altered > n:
        raise ValueError(f"cannot alter {altered} of {n} results")
    return 1.0 - math.comb(batch, altered) / math.comb(n, altered) * 2.0 ** -checksums


def triples_for(batch: int, target: float) -> int:
    """Fewest triples whose single-alteration detection probability reaches ``target``."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    # 3t / (B + 3t) >= p  <=>  t >= p B / (3 (1 - p))
    return max(1, math.ceil(target * batch / (3.0 * (1.0 - target)) - 1e-12))


def draw_fingerprints(real: torch.Tensor, triples: int, lo: int, hi: int,
                      gen: torch.Generator) -> torch.Tensor:
    """``(3t, *item)`` int64: rows ``3j, 3j+1, 3j+2`` are ``fp1, fp2, fp1 + fp2``.

    ``real`` is the batch of centered activations ``q - z`` in ``[lo, hi]``; fingerprints follow
    its per-channel mean and variance (channel = dim 1) so that ``fp1 + fp2`` looks like an input.
    """
    item = tuple(real.shape[1:])
    if triples == 0:
        return torch.empty((0, *item), dtype=torch.int64)
    dims = [0] + list(range(2, real.dim()))
    r = real.to(torch.float64)
    keep = [1, -1] + [1] * (real.dim() - 2)
    mu = r.mean(dim=dims).view(keep) if r.numel() else torch.zeros(1, dtype=torch.float64)
    sd = r.std(dim=dims, unbiased=False).view(keep) if r.numel() else torch.ones(1)
    noise = torch.randn((2 * triples, *item), generator=gen, dtype=torch.float64)
    half = torch.round(mu / 2 + noise * sd / math.sqrt(2.0))
    fp1 = torch.clamp(half[:triples], lo // 2, hi // 2).to(torch.int64)
    fp2 = torch.clamp(half[triples:], lo - lo // 2, hi - hi // 2).to(torch.int64)
    return torch.stack([fp1, fp2, fp1 + fp2], dim=1).reshape(3 * triples, *item)


@dataclass(frozen=True)
class Mixed:
    """A shuffled batch: ``items[order]`` was sent; reals come first before shuffling."""

    items: torch.Tensor  # (N, ...) real then fingerprints, in shuffled (sent) order
    order: torch.Tensor  # int64 (N,): sent position j holds original item order[j]
    batch: int

    def unshuffle(self, sent_order: torch.Tensor) -> torch.Tensor:
        return sent_order[torch.argsort(self.order)]


def mix(real: torch.Tensor, fingerprints: torch.Tensor, gen: torch.Generator) -> Mixed:
    allx = torch.cat([real.to(torch.int64), fingerprints], dim=0)
    order = torch.randperm(allx.shape[0], generator=gen)
    return Mixed(allx[order], order, int(real.shape[0]))


def check(results: torch.Tensor, batch: int, triples: int) -> torch.Tensor:
    """Per-triple pass flags (bool ``(t,)``) for unmasked, unshuffled ring results."""
    fp = results[batch:].to(torch.int64).reshape(triples, 3, -1)
    return (wrap(fp[:, 0] + fp[:, 1] - fp[:, 2]) == 0).all(dim=1)


def draw_checksum_vectors(trials: int, checksums: int, out_channels: int,
                          gen: torch.Generator) -> torch.Tensor:
    """``(T, k, O)`` secret vectors, entries uniform on ``[0, 2^16)`` (int64).

    16 bits suffice: for an error row whose smallest 2-adic valuation is ``v``, one vector
    misses it with probability at most ``max(2^-16, 2^(v-32))``, at most 1/2 as with vectors
    uniform on Z_{2^32}; small entries keep the trusted side's kernels small and exact.
    """
    return torch.randint(0, 1 << 16, (trials, checksums, out_channels), generator=gen,
                         dtype=torch.int64)


def _split_limbs(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k = hi * 2^16 + lo`` for ring elements: ``lo`` in [0, 2^16), ``hi`` in [-2^15, 2^15)."""
    k = wrap(k)
    lo = torch.remainder(k, 1 << 16)
    return (k - lo) // (1 << 16), lo


def _ring_apply(layer: LinearSpec, x: torch.Tensor, k: torch.Tensor, groups: int) -> torch.Tensor:
    """``layer``'s map of small-integer ``x`` by ring kernel ``k`` (``groups`` groups), mod 2^32.

    Two float64 passes over 16-bit limbs of ``k``: every partial sum is below
    ``fan_in * 2^10 * 2^16 < 2^53``.
    """
    if x.numel() and int(x.abs().max()) > 1 << 10:
        raise ValueError("checksum inputs must be small integers (centered int8 activations)")
    if int(k[0].numel()) >= 1 << 27:
        raise ValueError(f"layer {layer.name!r}: fan-in too wide for exact checksums")
    xd = x.to(torch.float64)
    hi, lo = _split_limbs(k)

    def run(w: torch.Tensor) -> torch.Tensor:
        wd = w.to(torch.float64)
        if layer.kind == "linear":
            return torch.bmm(xd, wd.transpose(1, 2)).to(torch.int64)
        return F.conv2d(xd, wd, None, layer.stride, layer.padding, layer.dilation,
                        groups).to(torch.int64)

    return wrap(run(hi) * (1 << 16) + run(lo))


def checksum_pass(layer: LinearSpec, weight: torch.Tensor, x: torch.Tensor, r: torch.Tensor,
                  s: torch.Tensor) -> torch.Tensor:
    """Per-item pass flags ``(T, n)`` of the checksum check.

    ``weight``: the layer's int8 weight in the order the device used; ``x``: ``(T, n, *in)``
    centered inputs as sent (unmasked, device layout); ``r``: ``(T, n, *out)`` unmasked device
    results; ``s``: ``(T, k, O)`` from :func:`draw_checksum_vectors`. Vectorised over trials.

    Cost: one int64 product ``s r`` (``k`` rows) and a ``k``-output-channel convolution; a
    grouped or depthwise conv becomes a dense one with ``k`` outputs, since
    ``sum_o s_o conv_g(x, W)[o]`` reads each input channel through one kernel per vector.
    """
    t, n = int(x.shape[0]), int(x.shape[1])
    k, o = int(s.shape[1]), int(s.shape[2])
    w = weight.to(torch.int64)
    # int64 products and sums wrap mod 2^64, which is exact mod 2^32
    lhs = wrap(torch.matmul(s.view(t, 1, k, o), r.to(torch.int64).reshape(t, n, o, -1)))
    if layer.kind == "linear":
        kern = wrap(torch.matmul(s, w))  # (T, k, I)
        rhs = _ring_apply(layer, x, kern, 1).unsqueeze(-1)
    elif layer.groups == 1:
        kern = wrap(torch.matmul(s, w.view(o, -1)))  # (T, k, C * kh * kw)
        xin = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:])
        out = _ring_apply(layer, xin, kern.view(t * k, *w.shape[1:]), t)
        rhs = out.view(n, t, k, -1).transpose(0, 1)
    else:
        rhs = _grouped_rhs(layer, w, x, s)
    return (wrap(lhs - rhs) == 0).reshape(t, n, -1).all(dim=2)


def _grouped_rhs(layer: LinearSpec, w: torch.Tensor, x: torch.Tensor,
                 s: torch.Tensor) -> torch.Tensor:
    """``sum_o s_o conv_g(x, W)[o]`` for a grouped (e.g. depthwise) conv, ``(T, n, k, P)``.

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
    return wrap(out).transpose(0, 1)
