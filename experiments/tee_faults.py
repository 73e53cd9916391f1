"""Fault-injection campaign: a tampering device process against the integrity monitor.

Each trial is one independent layer batch built by the same code as ``Enclave.linear``
(``secinfer/tee/protocol.py``): ``B`` real items and ``t`` fingerprint triples, a fresh secret
shuffle, fresh one-time masks, a secret channel permutation, fresh checksum vectors, all from an
:class:`EnclaveRandomness` (per-purpose AES-CTR PRGs). Trials are vectorised: the enclave
sends ``T`` trials' inputs as one tensor,
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

from secinfer.mpc.prg import PRG, new_seed
from secinfer.net.session import Session
from secinfer.tee import protocol
from secinfer.tee.device import Fault
from secinfer.tee.mask import LayerSecret, ring_linear
from secinfer.tee.monitor import MonitorConfig, detection_guarantee
from secinfer.tee.program import LinearSpec
from secinfer.tee.rand import EnclaveRandomness

__all__ = ["trial_layer", "enclave_trials", "device_trials"]

_ITEM = (4, 6, 6)


def trial_layer(data: PRG) -> tuple[LinearSpec, LayerSecret, torch.Tensor]:
    """A 3x3 conv, 4 -> 8 channels on 6x6 inputs: (device spec, secret, true int8 weight).

    ``data`` is the harness's PRG for test data (weights); the permutation comes from it too,
    as a model owner's provisioning PRG would draw it.
    """
    w = data.uniform_int((8, 4, 3, 3), -127, 128).to(torch.int8)
    perm = data.shuffles(1, 8)[0]
    spec = LinearSpec("trial", w[perm].contiguous(), torch.empty(0), "conv", (1, 1), (1, 1))
    return spec, LayerSecret(perm, None), w


def enclave_trials(session: Session, trials: int = 10000, batch: int = 1, triples: int = 2,
                   chunk: int = 2500, peer: int = 1, checksums: int = 2,
                   check_bits: int = 64) -> dict[str, torch.Tensor]:
    """Run ``trials`` checked layer batches against the device; per-trial flags come back.

    Each trial draws its own fingerprints, shuffle, masks and checksum vectors.
    """
    if trials < 1 or batch < 1 or triples < 1 or chunk < 1 or checksums < 0:
        raise ValueError("trials, batch, triples and chunk must all be >= 1, checksums >= 0")
    rng = EnclaveRandomness()
    data = PRG(new_seed())  # test data: the layer's weights and the real inputs
    monitor = MonitorConfig(triples, checksums, check_bits)
    # The device's weights arrive with the device's own bundle in real use; here the enclave
    # sends them once so both processes share one random layer per campaign.
    spec, sec, true_w = trial_layer(data)
    honest_spec = LinearSpec("trial", true_w, torch.empty(0), "conv", (1, 1), (1, 1))
    session.send(peer, spec.weight)  # only the permuted int8 weight, as in provisioning
    alarms, altered, corrupt, undetected, fp_alarms, ck_alarms = [], [], [], [], [], []
    done = 0
    while done < trials:
        tt = min(chunk, trials - done)
        real = torch.clamp(torch.round(60 + 40 * data.normal((tt * batch, *_ITEM))), 0, 255)
        real = real.to(torch.int64)
        rnd = protocol.begin(spec, sec, real, tt, triples, 0, 255, rng)
        session.send(peer, torch.tensor([tt, batch + 3 * triples], dtype=torch.int64))
        session.send(peer, rnd.u)
        r = session.recv(peer)
        res = protocol.finish(spec, sec, rnd, r, monitor, rng)
        fp_alarm, ck_alarm = res.triples_failed > 0, res.checksums_failed > 0
        alarm = fp_alarm | ck_alarm
        # ground truth (the harness knows the honest values)
        honest_r = ring_linear(spec, rnd.u, spec.weight)
        wrong_any = (r != honest_r).reshape(tt, -1).any(dim=1)
        honest_real = ring_linear(honest_spec, real, true_w).to(torch.int64)
        wrong_real = (res.real != honest_real).reshape(tt, -1).any(dim=1)
        fp_alarms.append(fp_alarm)
        ck_alarms.append(ck_alarm)
        alarms.append(alarm)
        altered.append(wrong_any)
        corrupt.append(wrong_real)
        undetected.append(wrong_real & ~alarm)
        done += tt
    session.send(peer, torch.tensor([0, 0], dtype=torch.int64))
    return {
        "alarm": torch.cat(alarms), "altered": torch.cat(altered),
        "corrupt_real": torch.cat(corrupt),
        "undetected_corruption": torch.cat(undetected),
        "fingerprint_alarm": torch.cat(fp_alarms), "checksum_alarm": torch.cat(ck_alarms),
        "guarantee": torch.tensor([detection_guarantee(batch, triples, checksums=checksums,
                                                       check_bits=check_bits)],
                                  dtype=torch.float64),
    }


def device_trials(session: Session, fault: str = "none", target: str = "one", rate: float = 1.0,
                  peer: int = 0) -> dict[str, torch.Tensor]:
    """The (possibly tampering) device side of :func:`enclave_trials`."""
    f = Fault(fault, target, rate)
    prg = PRG(new_seed())
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
        r = f.apply(0, u.view(tt, n, *u.shape[1:]), r.view(tt, n, *r.shape[1:]), prg)
        session.send(peer, r.reshape(tt * n, *r.shape[2:]).contiguous())
        served += tt
    return {"served": torch.tensor([served], dtype=torch.int64)}
