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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
]


class IntegrityError(RuntimeError):
    """The device returned a result that fails the fingerprint check."""


@dataclass(frozen=True)
class MonitorConfig:
    """``triples`` fingerprint triples per layer batch (0 disables the monitor: insecure)."""

    triples: int = 2

    def __post_init__(self) -> None:
        if self.triples < 0:
            raise ValueError(f"triples must be >= 0, got {self.triples}")


def detection_guarantee(batch: int, triples: int, altered: int = 1) -> float:
    """Probability that altering ``altered`` of ``batch + 3*triples`` results hits a fingerprint."""
    if batch < 0 or triples < 0 or altered < 1:
        raise ValueError("need batch >= 0, triples >= 0, altered >= 1")
    n = batch + 3 * triples
    if altered > n:
        raise ValueError(f"cannot alter {altered} of {n} results")
    return 1.0 - math.comb(batch, altered) / math.comb(n, altered)


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
