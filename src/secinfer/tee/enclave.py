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
   vectors (``monitor.py``); a failure raises :class:`IntegrityError` (or is counted, in
   ``record`` mode for experiments). The ``B`` real accumulators are dequantized with
   the secret scales and biases, and the program continues on the trusted side.

Threat model: the enclave (and the user who sends it the input) is trusted; on an SGX host it
runs inside Gramine (``deploy/gramine``, untested). Without SGX, as on our machines, it is an
ordinary OS process, and its secrets are protected only by the OS process boundary. The device
is malicious: it may compute anything and return anything; it is detected with the probability
stated in ``monitor.py``. Denial of service (refusing to answer) is out of scope; it becomes a
:class:`~secinfer.net.PeerTimeout` naming the device.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from ..net.session import Session
from .bundle import EnclaveBundle
from .device import CMD_LINEAR, CMD_STOP
from .mask import permute_input, ring_linear, ring_random, secure_generator, unpermute_output, wrap
from .monitor import (
    IntegrityError,
    MonitorConfig,
    check,
    checksum_pass,
    draw_checksum_vectors,
    draw_fingerprints,
    mix,
)

__all__ = ["Enclave", "EnclaveStats"]


@dataclass
class _MaskSet:
    mask: torch.Tensor  # int64 (N, ...) in the sent layout
    key: torch.Tensor  # int64 (N, ...) = conv(mask, W_dev) mod 2^32


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


class Enclave:
    """Trusted-side driver of split inference against one device peer."""

    def __init__(self, bundle: EnclaveBundle, monitor: MonitorConfig | None = None,
                 on_failure: str = "raise") -> None:
        if on_failure not in ("raise", "record"):
            raise ValueError(f"on_failure must be 'raise' or 'record', got {on_failure!r}")
        self.bundle = bundle
        self.model = bundle.model
        self.monitor = monitor or MonitorConfig()
        self.on_failure = on_failure
        self.gen = secure_generator()
        self.dev = bundle.device_bundle()  # for decode keys only; never sent
        self.stats = EnclaveStats()
        self._pool: dict[tuple[int, int], deque[_MaskSet]] = {}
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
                pool.append(self._mask_set(i, (n, *shape)))

    def _mask_set(self, i: int, shape: tuple[int, ...]) -> _MaskSet:
        m = ring_random(shape, self.gen)
        spec = self.dev.layers[i]
        return _MaskSet(m, ring_linear(spec, m, spec.weight).to(torch.int64))

    def _take(self, i: int, shape: tuple[int, ...]) -> _MaskSet:
        pool = self._pool.get((i, shape[0]))
        if pool:
            ms = pool.popleft()
            if tuple(ms.mask.shape) == shape:
                return ms
        self.stats.inline_keys += 1
        return self._mask_set(i, shape)

    # -- online phase
    def linear(self, session: Session, device: int, i: int, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-5 for linear layer ``i`` on the float64 batch ``x``."""
        qm, sec, t = self.model, self.bundle.secrets[i], self.monitor.triples
        z = qm.act[i].zero_point
        c = qm.quantize_input(i, x)
        fps = draw_fingerprints(c, t, -z, qm.config.qmax - z, self.gen)
        mixed = mix(c, fps, self.gen)
        sent = permute_input(mixed.items, sec)
        ms = self._take(i, tuple(sent.shape))
        u = wrap(sent + ms.mask).to(torch.int32)
        session.send(device, torch.tensor([CMD_LINEAR, i], dtype=torch.int64))
        session.send(device, u)
        r = session.recv(device)
        if r.dtype != torch.int32 or r.shape[0] != u.shape[0] or r.shape[1:] != ms.key.shape[1:]:
            raise IntegrityError(f"layer {i}: device returned {r.dtype} {tuple(r.shape)}, "
                                 f"expected int32 {tuple(ms.key.shape)}")
        r_dev = wrap(r.to(torch.int64) - ms.key)
        y = mixed.unshuffle(unpermute_output(r_dev, sec))
        self.stats.layer_calls += 1
        problems = []
        if t:
            ok = check(y, mixed.batch, t)
            self.stats.triples_checked += t
            failed = int((~ok).sum())
            if failed:
                self.stats.triples_failed += failed
                problems.append(f"{failed} of {t} fingerprint triples failed")
        if self.monitor.checksums:
            spec = self.dev.layers[i]
            s = draw_checksum_vectors(1, self.monitor.checksums, spec.out_channels, self.gen)
            ok = checksum_pass(spec, spec.weight, sent.unsqueeze(0), r_dev.unsqueeze(0), s)
            self.stats.items_checksummed += int(ok.numel())
            failed = int((~ok).sum())
            if failed:
                self.stats.checksums_failed += failed
                problems.append(f"{failed} of {ok.numel()} item checksums failed")
        if problems:
            self._batch_failed = True
            if self.on_failure == "raise":
                raise IntegrityError(f"layer {i} ({qm.program.layers[i].name}): "
                                     f"{'; '.join(problems)}; result rejected")
        return qm.dequantize(i, y[: mixed.batch])

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

    def stop(self, session: Session, device: int) -> None:
        session.send(device, torch.tensor([CMD_STOP, 0], dtype=torch.int64))
