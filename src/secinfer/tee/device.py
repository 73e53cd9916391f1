"""The untrusted device (REE): runs the int8 linear layers on masked inputs, honestly or not.

Wire protocol with the enclave (one round per linear layer; all tensors framed by the runtime):

1. enclave -> device: control ``int64 [cmd, layer]``; ``cmd`` 1 = run ``layer``, 0 = stop.
2. enclave -> device: ``u`` int32 ``(N, ...)``, the masked, shuffled, maybe permuted inputs.
3. device -> enclave: ``r = conv(u, W_dev[layer]) mod 2^32`` int32.

A :class:`Fault` turns the device into the tamperer used to measure the integrity monitor. Its
faults act on ``T`` independent batches at once (``r`` of shape ``(T, N, ...)``), so that 10,000
trials are a handful of tensor ops; the serving loop uses ``T = 1``.

The device's own randomness (which items and elements a fault hits) is the adversary's, not a
secret of the protocol; it still comes from an AES-CTR PRG, keyed by ``seed`` (fixed in the view
test, to show that the device's view depends only on the enclave's randomness) or a fresh key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..mpc.prg import PRG, new_seed
from ..net.errors import PeerTimeout
from ..net.session import Session
from .bundle import DeviceBundle
from .mask import ring_linear, wrap

__all__ = ["CMD_STOP", "CMD_LINEAR", "FAULT_KINDS", "Fault", "Device"]

_STOP_POLL_S = 0.5

CMD_STOP = 0
CMD_LINEAR = 1
FAULT_KINDS = ("none", "noise", "element", "scale", "skip", "replay", "msb")


@dataclass
class Fault:
    """How a tampering device corrupts results.

    ``kind``: ``noise`` adds uniform [0, 127) integers (the seed's attack), ``element`` changes one
    element by a nonzero amount, ``scale`` doubles results, ``skip`` returns the masked input in
    place of the layer output (cropped or tiled to its shape), ``replay`` returns the result of
    the previous batch of the same layer, ``msb`` flips the top bit of one element (adds 2^31:
    the error that secret checksums catch least often, see ``monitor.py``). ``target``: ``one``
    corrupts one item per batch, chosen uniformly (the device cannot tell fingerprints from real
    items, so no choice does better); ``all`` corrupts every item. ``rate``: probability that a
    given layer call is corrupted. ``layers``: corrupt only these linear layers (``None``: all),
    e.g. ``(2,)`` for a device that corrupts one layer of each query.
    """

    kind: str = "none"
    target: str = "one"
    rate: float = 1.0
    layers: tuple[int, ...] | None = None
    _prev: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.target not in ("one", "all"):
            raise ValueError(f"fault target must be 'one' or 'all', got {self.target!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")

    def apply(self, layer: int, u: torch.Tensor, r: torch.Tensor, prg: PRG) -> torch.Tensor:
        """Corrupt ``r`` (``(T, N, ...)`` int32, results of ``u``); returns a new tensor."""
        prev = self._prev.get(layer)
        self._prev[layer] = r.clone()
        if self.kind == "none" or (self.layers is not None and layer not in self.layers):
            return r
        t, n = r.shape[:2]
        bad = self._bad_items(t, n, prg)
        rr = r.to(torch.int64)
        if self.kind == "noise":
            alt = rr + prg.uniform_int(rr.shape, 0, 127)
        elif self.kind == "element":
            flat = rr.reshape(t, n, -1)
            pos = prg.uniform_int((t, n), 0, flat.shape[2])
            delta = prg.uniform_int((t, n), 1, 128)
            alt = flat.clone()
            alt.scatter_add_(2, pos.unsqueeze(2), delta.unsqueeze(2))
            alt = alt.reshape(rr.shape)
        elif self.kind == "msb":
            flat = rr.reshape(t, n, -1)
            pos = prg.uniform_int((t, n), 0, flat.shape[2])
            alt = flat.clone()
            alt.scatter_add_(2, pos.unsqueeze(2), torch.full((t, n, 1), 1 << 31))
            alt = alt.reshape(rr.shape)
        elif self.kind == "scale":
            alt = rr * 2
        elif self.kind == "skip":
            src = u.to(torch.int64).reshape(t, n, -1)
            need = rr[0, 0].numel()
            reps = -(-need // max(1, src.shape[2]))
            alt = src.repeat(1, 1, reps)[:, :, :need].reshape(rr.shape)
        else:  # replay: batch k gets batch k-1's result; the first gets the previous call's last
            first = prev[-1:] if prev is not None and prev.shape[1:] == r.shape[1:] else r[:1]
            alt = torch.cat([first, r[:-1]]).to(torch.int64)
        mask = bad.view(t, n, *([1] * (r.dim() - 2)))
        return wrap(torch.where(mask, alt, rr)).to(torch.int32)

    def _bad_items(self, t: int, n: int, prg: PRG) -> torch.Tensor:
        hit = prg.unit_float64((t,)) < self.rate
        if self.target == "all":
            return hit.view(t, 1).expand(t, n)
        one = torch.zeros(t, n, dtype=torch.bool)
        one[torch.arange(t), prg.uniform_int((t,), 0, n)] = True
        return one & hit.view(t, 1)


class Device:
    """Serves linear layers for one enclave until told to stop.

    ``seed``: key of the device's own PRG (a fresh one if ``None``).
    """

    def __init__(self, bundle: DeviceBundle, fault: Fault | None = None,
                 seed: bytes | None = None) -> None:
        self.bundle = bundle
        self.fault = fault or Fault()
        self.prg = PRG(seed if seed is not None else new_seed())
        self.calls = 0

    def compute(self, layer: int, u: torch.Tensor, trials: int = 1) -> torch.Tensor:
        """``conv(u, W_dev[layer]) mod 2^32`` (then the fault, per trial of ``u``'s
        ``trials`` equal parts)."""
        if not 0 <= layer < len(self.bundle.layers):
            raise ValueError(f"enclave asked for layer {layer}; the device has "
                             f"{len(self.bundle.layers)}")
        if u.dtype != torch.int32:
            raise ValueError(f"masked input must be int32, got {u.dtype}")
        spec = self.bundle.layers[layer]
        r = ring_linear(spec, u, spec.weight)
        self.calls += 1
        t = trials
        if int(u.shape[0]) % t:
            raise ValueError(f"{int(u.shape[0])} items do not split into {t} trials")
        out = self.fault.apply(layer, u.view(t, -1, *u.shape[1:]), r.view(t, -1, *r.shape[1:]),
                               self.prg)
        return out.reshape(r.shape)

    def serve(self, session: Session, enclave: int, idle_timeout: float | None = None,
              should_stop: Callable[[], bool] | None = None) -> int:
        """Answer requests from party ``enclave``; returns the number of layer calls served.

        ``should_stop`` is polled at least every half second while idle, so a device told to
        stop does so even inside a session the enclave keeps open.
        """
        served = 0
        idle_since = time.monotonic()
        while True:
            if should_stop is not None and should_stop():
                return served
            try:
                ctrl = session.recv(enclave, timeout=idle_timeout if should_stop is None
                                    else _STOP_POLL_S)
            except PeerTimeout:
                if should_stop is None or (idle_timeout is not None and
                                           time.monotonic() - idle_since > idle_timeout):
                    raise
                continue
            idle_since = time.monotonic()
            if ctrl.dtype != torch.int64 or ctrl.numel() != 2:
                raise ValueError(f"bad control message from party {enclave}: {ctrl.dtype} "
                                 f"{tuple(ctrl.shape)}")
            cmd, layer = int(ctrl[0]), int(ctrl[1])
            if cmd == CMD_STOP:
                return served
            if cmd != CMD_LINEAR:
                raise ValueError(f"unknown command {cmd} from party {enclave}")
            u = session.recv(enclave)
            with session.op(f"device_layer{layer}"):
                r = self.compute(layer, u)
            session.send(enclave, r)
            served += 1
