"""Fault-injection campaign: a tampering device process against the integrity monitor.

Each trial is one independent layer batch exactly as ``Enclave.linear`` builds it: ``B`` real
items and ``t`` fingerprint triples, a fresh secret shuffle, fresh one-time masks, a secret
channel permutation. Trials are vectorised: the enclave sends ``T`` trials' inputs as one tensor,
the device (its own process, :func:`device_trials`) computes them and applies its :class:`Fault`
to each trial independently, and the enclave checks each trial. Per trial we record whether the
monitor raised an alarm, whether the device altered any result (the enclave knows the
honest values: it is the test harness), whether a real result came back wrong, and which
check fired (fingerprints, checksums).

Wire protocol (enclave -> device): ``int64 [T, N]`` (``T = 0`` stops), then ``u`` int32
``(T * N, C, H, W)``; device -> enclave: ``r`` int32 ``(T * N, O, H', W')``.
"""

from __future__ import annotations

import torch

from ..net.session import Session
from .device import Fault
from .graph import LinearSpec
from .mask import (
    LayerSecret,
    permute_input,
    ring_linear,
    ring_random,
    secure_generator,
    unpermute_output,
    wrap,
)
from .monitor import (
    checksum_pass,
    detection_guarantee,
    draw_checksum_vectors,
    draw_fingerprints,
)

__all__ = ["trial_layer", "enclave_trials", "device_trials"]


def trial_layer(gen: torch.Generator) -> tuple[LinearSpec, LayerSecret, torch.Tensor]:
    """A 3x3 conv, 4 -> 8 channels on 6x6 inputs: (device spec, secret, true int8 weight)."""
    w = torch.randint(-127, 128, (8, 4, 3, 3), generator=gen, dtype=torch.int64).to(torch.int8)
    perm = torch.randperm(8, generator=gen)
    spec = LinearSpec("trial", w[perm].contiguous(), torch.empty(0), "conv", (1, 1), (1, 1))
    return spec, LayerSecret(perm, None), w


def enclave_trials(session: Session, trials: int = 10000, batch: int = 1, triples: int = 2,
                   chunk: int = 2500, peer: int = 1, checksums: int = 2) -> dict[str, torch.Tensor]:
    """Run ``trials`` checked layer batches against the device; per-trial flags come back.

    Each trial draws its own fingerprints, shuffle, masks and checksum vectors.
    """
    if trials < 1 or batch < 1 or triples < 1 or chunk < 1 or checksums < 0:
        raise ValueError("trials, batch, triples and chunk must all be >= 1, checksums >= 0")
    gen = secure_generator()
    # The device's weights arrive with the device's own bundle in real use; here the enclave
    # sends them once so both processes share one random layer per campaign.
    spec, sec, true_w = trial_layer(gen)
    session.send(peer, spec.weight)  # only the permuted int8 weight, as in provisioning
    n, item = batch + 3 * triples, (4, 6, 6)
    alarms, altered, corrupt, undetected, fp_alarms, ck_alarms = [], [], [], [], [], []
    done = 0
    while done < trials:
        tt = min(chunk, trials - done)
        real = torch.clamp(torch.round(60 + 40 * torch.randn((tt * batch, *item), generator=gen,
                                                             dtype=torch.float64)), 0, 255)
        real = real.to(torch.int64)
        fps = draw_fingerprints(real, tt * triples, 0, 255, gen)
        allx = torch.cat([real.view(tt, batch, *item), fps.view(tt, 3 * triples, *item)], 1)
        order = torch.argsort(torch.rand(tt, n, generator=gen), dim=1)
        sent = torch.gather(allx, 1, order.view(tt, n, 1, 1, 1).expand(-1, -1, *item))
        sent = permute_input(sent.reshape(tt * n, *item), sec)
        m = ring_random(tuple(sent.shape), gen)
        key = ring_linear(spec, m, spec.weight).to(torch.int64)
        u = wrap(sent + m).to(torch.int32)
        session.send(peer, torch.tensor([tt, n], dtype=torch.int64))
        session.send(peer, u)
        r = session.recv(peer)
        if r.shape != key.shape or r.dtype != torch.int32:
            raise ValueError(f"device returned {r.dtype} {tuple(r.shape)}")
        r_dev = wrap(r.to(torch.int64) - key)
        if checksums:
            s = draw_checksum_vectors(tt, checksums, spec.out_channels, gen)
            ck_ok = checksum_pass(spec, spec.weight, sent.view(tt, n, *item),
                                  r_dev.view(tt, n, *r_dev.shape[1:]), s)
            ck_alarm = (~ck_ok).any(dim=1)
        else:
            ck_alarm = torch.zeros(tt, dtype=torch.bool)
        y = unpermute_output(r_dev, sec).reshape(tt, n, -1)
        y = torch.gather(y, 1, torch.argsort(order, dim=1).unsqueeze(2).expand(-1, -1, y.shape[2]))
        fp = y[:, batch:].reshape(tt, triples, 3, -1)
        fp_alarm = (wrap(fp[:, :, 0] + fp[:, :, 1] - fp[:, :, 2]) != 0).any(dim=2).any(dim=1)
        alarm = fp_alarm | ck_alarm
        fp_alarms.append(fp_alarm)
        ck_alarms.append(ck_alarm)
        honest_spec = LinearSpec("trial", true_w, torch.empty(0), "conv", (1, 1), (1, 1))
        honest = ring_linear(honest_spec, allx.reshape(tt * n, *item), true_w)
        wrong = (y != honest.to(torch.int64).reshape(tt, n, -1)).any(dim=2)
        alarms.append(alarm)
        altered.append(wrong.any(dim=1))
        corrupt.append(wrong[:, :batch].any(dim=1))
        undetected.append(wrong[:, :batch].any(dim=1) & ~alarm)
        done += tt
    session.send(peer, torch.tensor([0, 0], dtype=torch.int64))
    return {
        "alarm": torch.cat(alarms), "altered": torch.cat(altered),
        "corrupt_real": torch.cat(corrupt),
        "undetected_corruption": torch.cat(undetected),
        "fingerprint_alarm": torch.cat(fp_alarms), "checksum_alarm": torch.cat(ck_alarms),
        "guarantee": torch.tensor([detection_guarantee(batch, triples, checksums=checksums)],
                                  dtype=torch.float64),
    }


def device_trials(session: Session, fault: str = "none", target: str = "one", rate: float = 1.0,
                  peer: int = 0) -> dict[str, torch.Tensor]:
    """The (possibly tampering) device side of :func:`enclave_trials`."""
    f = Fault(fault, target, rate)
    gen = secure_generator()
    w = session.recv(peer)
    spec = LinearSpec("trial", w, torch.empty(0), "conv", (1, 1), (1, 1))
    served = 0
    while True:
        hdr = session.recv(peer)
        tt, n = int(hdr[0]), int(hdr[1])
        if tt == 0:
            break
        u = session.recv(peer)
        r = ring_linear(spec, u, w)
        r = f.apply(0, u.view(tt, n, *u.shape[1:]), r.view(tt, n, *r.shape[1:]), gen)
        session.send(peer, r.reshape(tt * n, *r.shape[2:]).contiguous())
        served += tt
    return {"served": torch.tensor([served], dtype=torch.int64)}
