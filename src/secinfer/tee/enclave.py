"""The trusted side (TEE): masks, permutations, scales, non-linear layers and integrity checks.

Protocol for one batch of queries (TSQP, seed 004, with exact ring masks, hidden channel order
and oblivious fingerprints; see ``mask.py`` and ``monitor.py`` for the pieces):

1. Run the program in float64. At each linear layer ``i``: quantize the input to centered int8
   ``c = q - z``.
2. Draw ``t`` fingerprint triples, stack them with the ``B`` real items, shuffle (secret order).
3. Apply the layer's secret input permutation (depthwise convs only) and add fresh one-time masks
   ``m`` on Z_{2^32}; send ``u`` to the device (``device.py`` for the wire format).
4. Receive ``r``; subtract the decode key ``conv(m, W_dev)`` (precomputed offline by
   :meth:`Enclave.precompute`, or computed inline when the pool is empty), undo the output
   permutation and the shuffle.
5. Check every fingerprint triple exactly, and every item against ``k`` fresh secret checksum
   vectors, exactly mod 2^64 (``monitor.py``); a failure raises :class:`IntegrityError` (or is
   counted, in ``record`` mode for experiments). The ``B`` real accumulators are dequantized
   with the secret scales and biases, and the program continues on the trusted side.

Randomness: every mask, shuffle, fingerprint and checksum vector comes from the enclave's
:class:`~secinfer.tee.rand.EnclaveRandomness`, AES-CTR PRGs under one fresh OS-CSPRNG key per
purpose (``rand.py``); the per-layer code is ``protocol.py``, shared with :meth:`run_trials`.

Threat model: the enclave (and the user who sends it the input) is trusted; on an SGX host it
runs inside Gramine (``deploy/gramine``, untested). Without SGX, as on our machines, it is an
ordinary OS process, and its secrets are protected only by the OS process boundary. The device
is malicious: it may compute anything and return anything; it is detected with the probability
stated in ``monitor.py``. Denial of service (refusing to answer) is out of scope; it becomes a
:class:`~secinfer.net.PeerTimeout` naming the device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..net.session import Session
from . import protocol
from .bundle import EnclaveBundle
from .device import CMD_LINEAR, CMD_STOP
from .monitor import IntegrityError, MonitorConfig
from .rand import EnclaveRandomness

__all__ = ["Enclave", "EnclaveStats", "TrialReport"]

Exchange = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, u) -> r


@dataclass
class EnclaveStats:
    layer_calls: int = 0
    triples_checked: int = 0
    triples_failed: int = 0
    items_checksummed: int = 0
    checksums_failed: int = 0  # items whose checksum did not match
    batches: int = 0
    alarms: int = 0  # batches with at least one failed triple or checksum
    inline_keys: int = 0  # layer calls whose decode key was not precomputed
    failed_batches: list[int] = field(default_factory=list)


@dataclass
class TrialReport:
    """Per-trial outcome of :meth:`Enclave.run_trials` (``T`` independent queries)."""

    logits: torch.Tensor  # (T * B, classes)
    triples_failed: torch.Tensor  # int64 (T, L): per trial and linear layer
    checksums_failed: torch.Tensor  # int64 (T, L)

    @property
    def alarm(self) -> torch.Tensor:
        """bool (T,): the query raised an alarm at some layer."""
        return ((self.triples_failed + self.checksums_failed) > 0).any(dim=1)


class Enclave:
    """Trusted-side driver of split inference against one device peer.

    ``randomness``: where masks, shuffles, fingerprints and checksum vectors come from; a fresh
    :class:`EnclaveRandomness` (new OS-CSPRNG keys) unless a test injects a broken one.
    """

    def __init__(self, bundle: EnclaveBundle, monitor: MonitorConfig | None = None,
                 on_failure: str = "raise",
                 randomness: EnclaveRandomness | None = None) -> None:
        if on_failure not in ("raise", "record"):
            raise ValueError(f"on_failure must be 'raise' or 'record', got {on_failure!r}")
        self.bundle = bundle
        self.model = bundle.model
        self.monitor = monitor or MonitorConfig()
        self.on_failure = on_failure
        self.rng = randomness if randomness is not None else EnclaveRandomness()
        self.dev = bundle.device_bundle()  # for decode keys only; never sent
        self.stats = EnclaveStats()
        self._pool: dict[tuple[int, int], deque[protocol.MaskSet]] = {}
        self._batch_failed = False

    # -- offline phase
    def input_shapes(self, item_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per linear layer, the shape of one input item (found by a dry run on zeros)."""
        shapes: dict[int, tuple[int, ...]] = {}

        def probe(i: int, x: torch.Tensor) -> torch.Tensor:
            shapes[i] = tuple(x.shape[1:])
            return self.model.program.layers[i].forward(x)

        with torch.no_grad():
            self.model.program.run(torch.zeros((1, *item_shape), dtype=torch.float64), probe)
        return [shapes[i] for i in range(len(self.model.program.layers))]

    def precompute(self, item_shape: tuple[int, ...], batch: int, queries: int = 1) -> None:
        """Draw masks and decode keys for ``queries`` future batches of ``batch`` items."""
        n = batch + 3 * self.monitor.triples
        for i, shape in enumerate(self.input_shapes(item_shape)):
            pool = self._pool.setdefault((i, n), deque())
            for _ in range(queries):
                pool.append(protocol.mask_set(self.dev.layers[i], (n, *shape), self.rng))

    def _take(self, i: int, n: int, shape: tuple[int, ...]) -> protocol.MaskSet | None:
        pool = self._pool.get((i, n))
        if pool:
            ms = pool.popleft()
            if tuple(ms.mask.shape) == (n, *shape):
                return ms
        self.stats.inline_keys += 1
        return None

    # -- online phase
    def _round(self, i: int, x: torch.Tensor, trials: int, exchange: Exchange,
               masks: protocol.MaskSet | None) -> protocol.RoundResult:
        qm, spec, t = self.model, self.dev.layers[i], self.monitor.triples
        z = qm.act[i].zero_point
        c = qm.quantize_input(i, x)
        rnd = protocol.begin(spec, self.bundle.secrets[i], c, trials, t, -z,
                             qm.config.qmax - z, self.rng, masks)
        r = exchange(i, rnd.u)
        try:
            return protocol.finish(spec, self.bundle.secrets[i], rnd, r, self.monitor, self.rng)
        except ValueError as e:
            raise IntegrityError(f"layer {i}: {e}") from None

    def linear(self, session: Session, device: int, i: int, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-5 for linear layer ``i`` on the float64 batch ``x`` (one layer batch)."""
        qm, t = self.model, self.monitor.triples
        n = int(x.shape[0]) + 3 * t
        masks = self._take(i, n, tuple(x.shape[1:]))

        def exchange(layer: int, u: torch.Tensor) -> torch.Tensor:
            session.send(device, torch.tensor([CMD_LINEAR, layer], dtype=torch.int64))
            session.send(device, u)
            return session.recv(device)

        res = self._round(i, x, 1, exchange, masks)
        self.stats.layer_calls += 1
        problems = []
        if t:
            self.stats.triples_checked += t
            failed = int(res.triples_failed.sum())
            if failed:
                self.stats.triples_failed += failed
                problems.append(f"{failed} of {t} fingerprint triples failed")
        if self.monitor.checksums:
            self.stats.items_checksummed += res.items_checksummed
            failed = int(res.checksums_failed.sum())
            if failed:
                self.stats.checksums_failed += failed
                problems.append(f"{failed} of {res.items_checksummed} item checksums failed")
        if problems:
            self._batch_failed = True
            if self.on_failure == "raise":
                raise IntegrityError(f"layer {i} ({qm.program.layers[i].name}): "
                                     f"{'; '.join(problems)}; result rejected")
        return qm.dequantize(i, res.real)

    def infer(self, session: Session, device: int, x: torch.Tensor) -> torch.Tensor:
        """Split inference of one batch; returns float64 logits (bit-equal to the int8 model)."""
        if x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(f"input must be a non-empty batch, got shape {tuple(x.shape)}")
        self._batch_failed = False
        with session.op("enclave_infer"):
            out = self.model.program.run(x.to(torch.float64),
                                         lambda i, t: self.linear(session, device, i, t))
        if self._batch_failed:
            self.stats.alarms += 1
            self.stats.failed_batches.append(self.stats.batches)
        self.stats.batches += 1
        return out

    def run_trials(self, x: torch.Tensor, trials: int, exchange: Exchange) -> TrialReport:
        """``trials`` independent queries of ``B = len(x) / trials`` items each, in one pass.

        Every linear layer runs :func:`protocol.begin` / :func:`protocol.finish` on all trials
        at once, each trial with its own fingerprints, shuffle, masks and checksum vectors: the
        same code and randomness as :meth:`linear`, vectorised, for measuring detection and
        false-alarm rates over many queries. ``exchange(layer, u)`` is the device (e.g.
        :meth:`Device.compute` with ``trials``). Failures are recorded, never raised.
        """
        n_layers = len(self.model.program.layers)
        fp = torch.zeros(trials, n_layers, dtype=torch.int64)
        ck = torch.zeros(trials, n_layers, dtype=torch.int64)

        def layer(i: int, xi: torch.Tensor) -> torch.Tensor:
            res = self._round(i, xi, trials, exchange, None)
            fp[:, i] = res.triples_failed
            ck[:, i] = res.checksums_failed
            return self.model.dequantize(i, res.real)

        with torch.no_grad():
            out = self.model.program.run(x.to(torch.float64), layer)
        return TrialReport(out, fp, ck)

    def stop(self, session: Session, device: int) -> None:
        session.send(device, torch.tensor([CMD_STOP, 0], dtype=torch.int64))
