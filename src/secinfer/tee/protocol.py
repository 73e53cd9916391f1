"""One protected linear-layer call, vectorised over ``T`` independent layer batches ("trials").

:class:`~secinfer.tee.enclave.Enclave` runs it with ``T = 1`` for every linear layer of a query;
:meth:`Enclave.run_trials` and the fault campaign (the repository's ``experiments/tee_faults.py``)
run it with ``T`` in the thousands, so a detection rate over 10,000 queries is a handful of
tensor operations and is measured with exactly the code that serves real queries.

Per trial (``B`` real items, ``t`` triples, ``N = B + 3t``), all randomness from the enclave's
per-purpose PRGs (``rand.py``):

1. ``begin``: fingerprints (fingerprint PRG), a secret order of the ``N`` items (shuffle PRG),
   the layer's secret input permutation (depthwise convs), one-time masks (mask PRG, or a
   precomputed mask set); returns the ``u`` to send, int32 ``(T * N, ...)``.
2. the device computes ``r`` (int32, same leading dimension);
3. ``finish``: subtract the decode key, lift to ``[-2^31, 2^31)``, undo the output permutation,
   check the fingerprint triples and the checksum vectors (checksum PRG), undo the shuffle;
   returns the ``B`` real accumulators per trial and per-trial failure counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mask import LayerSecret, permute_input, ring_linear, unpermute_output, wrap
from .monitor import MonitorConfig, check_trials, checksum_pass, draw_fingerprints
from .program import LinearSpec
from .rand import EnclaveRandomness

__all__ = ["MaskSet", "Round", "RoundResult", "begin", "finish", "mask_set"]


@dataclass
class MaskSet:
    mask: torch.Tensor  # int64 (T * N, ...) in the sent layout
    key: torch.Tensor  # int64 (T * N, ...) = conv(mask, W_dev) mod 2^32


@dataclass
class Round:
    """The enclave's state between sending ``u`` and receiving ``r``."""

    trials: int
    batch: int
    sent: torch.Tensor  # int64 (T * N, ...) centered items as sent (shuffled, permuted)
    order: torch.Tensor  # int64 (T, N): sent position j of a trial holds original item order[j]
    key: torch.Tensor  # int64 decode key, like ``r``
    u: torch.Tensor  # int32 (T * N, ...) what goes to the device


@dataclass
class RoundResult:
    real: torch.Tensor  # int64 (T * B, ...) exact accumulators of the real items
    triples_failed: torch.Tensor  # int64 (T,)
    checksums_failed: torch.Tensor  # int64 (T,) items whose checksum did not match
    items_checksummed: int


def mask_set(spec: LinearSpec, shape: tuple[int, ...], rng: EnclaveRandomness) -> MaskSet:
    """Fresh one-time masks for ``shape`` (sent layout) and their decode key (offline work)."""
    m = rng.masks(shape)
    return MaskSet(m, ring_linear(spec, m, spec.weight).to(torch.int64))


def begin(spec: LinearSpec, secret: LayerSecret, c: torch.Tensor, trials: int, triples: int,
          lo: int, hi: int, rng: EnclaveRandomness, masks: MaskSet | None = None) -> Round:
    """Build the masked inputs for ``trials`` layer batches of centered activations ``c``
    (``(T * B, ...)`` int64, trial-major)."""
    t = trials
    item = tuple(c.shape[1:])
    b = int(c.shape[0]) // t
    if b * t != int(c.shape[0]) or b < 1:
        raise ValueError(f"{int(c.shape[0])} items do not split into {t} non-empty trials")
    n = b + 3 * triples
    fps = draw_fingerprints(c, triples, lo, hi, rng, t)
    allx = torch.cat([c.to(torch.int64).reshape(t, b, *item), fps.reshape(t, n - b, *item)], 1)
    order = rng.shuffles(t, n)
    idx = order.view(t, n, *([1] * len(item))).expand(t, n, *item)
    sent = permute_input(torch.gather(allx, 1, idx).reshape(t * n, *item), secret)
    if masks is None or tuple(masks.mask.shape) != tuple(sent.shape):
        masks = mask_set(spec, tuple(sent.shape), rng)
    u = wrap(sent + masks.mask).to(torch.int32)
    return Round(t, b, sent, order, masks.key, u)


def finish(spec: LinearSpec, secret: LayerSecret, rnd: Round, r: torch.Tensor,
           monitor: MonitorConfig, rng: EnclaveRandomness) -> RoundResult:
    """Unmask, check and unshuffle the device's answer ``r`` to :func:`begin`'s ``u``."""
    if r.dtype != torch.int32 or tuple(r.shape) != tuple(rnd.key.shape):
        raise ValueError(f"device returned {r.dtype} {tuple(r.shape)}, expected int32 "
                         f"{tuple(rnd.key.shape)}")
    t, n = rnd.order.shape
    r_dev = wrap(r.to(torch.int64) - rnd.key)  # lifted to [-2^31, 2^31)
    ck_failed = torch.zeros(t, dtype=torch.int64)
    summed = 0
    if monitor.checksums:
        s = rng.checksum_vectors(t, monitor.checksums, spec.out_channels, monitor.entry_bits)
        ok = checksum_pass(spec, spec.weight, rnd.sent.view(t, n, *rnd.sent.shape[1:]),
                           r_dev.view(t, n, *r_dev.shape[1:]), s, monitor.check_bits)
        ck_failed = (~ok).sum(dim=1)
        summed = int(ok.numel())
    y = unpermute_output(r_dev, secret)
    out_item = tuple(y.shape[1:])
    y = y.reshape(t, n, -1)
    inv = torch.argsort(rnd.order, dim=1)
    y = torch.gather(y, 1, inv.unsqueeze(2).expand(-1, -1, y.shape[2]))
    triples = (n - rnd.batch) // 3
    fp_failed = check_trials(y, rnd.batch, triples)
    real = y[:, :rnd.batch].reshape(t * rnd.batch, *out_item)
    return RoundResult(real, fp_failed, ck_failed, summed)
