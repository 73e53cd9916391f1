"""The device's view is independent of the input: a statistical test on everything it receives.

Setup: a two-layer int8 CNN split between an :class:`Enclave` and an honest :class:`Device`
whose own randomness is fixed (``seed``), so any difference between views can only come from
the input. The enclave answers ``R`` queries for input ``x0`` and ``R`` for a very different
``x1``, interleaved, over the in-memory transport; a recording wrapper keeps every message the
device receives, in order (control words and masked tensors).

The test compares the joint view for the two inputs, coordinate by coordinate across queries
(two-sample Kolmogorov-Smirnov, Bonferroni over the coordinates of each family), and checks each
coordinate against the uniform law on Z_2^32, for these families of functions of ONE query's
view: every element (marginals); differences and sums of the same element of two items of a
message; of two adjacent elements of an item; of the same flat position in the two messages;
and the "decode" ``u - m`` with masks from a PRG under a known key (the attack on a predictable
mask source). Control words must be identical.

Negative controls (the test's power): the same statistics must reject the view when the
enclave's mask source is deliberately broken, injected through ``Enclave(randomness=...)``:
masks reused across queries (static noise), one pad for every item of a batch, masks reused
across the layers of a query, and masks from a known key (predictable).
"""

from __future__ import annotations

import pytest
import torch
from scipy.special import kolmogorov
from scipy.stats import kstwo
from torch import nn

from secinfer.mpc.prg import PRG
from secinfer.net import run_in_memory
from secinfer.tee import Device, Enclave, MonitorConfig, calibrate, capture_any, provision
from secinfer.tee.rand import EnclaveRandomness

R = 300  # queries per input
ALPHA = 1e-6  # per family and test (Bonferroni over its coordinates): 16 tests, < 2e-5 false
M32 = 1 << 32
KNOWN_KEY = bytes(16)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


# --- deliberately broken mask sources (negative controls)
class StaticMasks(EnclaveRandomness):
    """One mask per shape, reused for every query (precomputed static noise)."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def masks(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._cache.setdefault(tuple(shape), super().masks(shape)).clone()


class OnePadPerBatch(EnclaveRandomness):
    """A fresh pad per query, but the same one for every item of the layer batch."""

    def masks(self, shape: tuple[int, ...]) -> torch.Tensor:
        return super().masks((1, *shape[1:])).expand(*shape).clone()


class ReusedAcrossLayers(EnclaveRandomness):
    """The second layer's pad repeats the first layer's values."""

    def __init__(self) -> None:
        super().__init__()
        self._last: torch.Tensor | None = None

    def masks(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        if self._last is None:
            self._last = super().masks(shape)
            return self._last
        flat = self._last.flatten()
        self._last = None
        return flat.repeat(-(-n // flat.numel()))[:n].reshape(shape)


class KnownKeyMasks(EnclaveRandomness):
    """Masks from a PRG whose key the device knows (a predictable source)."""

    def __init__(self) -> None:
        super().__init__()
        self._known = PRG(KNOWN_KEY)

    def masks(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self._known.ring(shape, 32)


class _Recorder:
    """The device's session, recording every tensor it receives, in order."""

    def __init__(self, session) -> None:  # type: ignore[no-untyped-def]
        self.s, self.log = session, []

    def recv(self, peer: int, timeout: float | None = None) -> torch.Tensor:
        t = self.s.recv(peer, timeout=timeout)
        self.log.append(t.clone())
        return t

    def send(self, peer: int, t: torch.Tensor) -> None:
        self.s.send(peer, t)

    def op(self, name: str):  # type: ignore[no-untyped-def]
        return self.s.op(name)


@pytest.fixture(scope="module")
def setup() -> tuple:  # type: ignore[type-arg]
    gen = torch.Generator().manual_seed(7)  # test data only: the model and the two inputs
    torch.manual_seed(7)
    qm = calibrate(capture_any(_Net().eval(), (1, 4, 4)),
                   [torch.randn(64, 1, 4, 4, generator=gen) * 2])
    bundle = provision(qm)
    x0 = torch.zeros(1, 1, 4, 4)
    x1 = torch.full((1, 1, 4, 4), 3.0)
    x1[0, 0, ::2] = -3.0
    assert not torch.equal(qm.quantize_input(0, x0.double()), qm.quantize_input(0, x1.double()))
    return bundle, x0, x1


def _views(bundle, x0: torch.Tensor, x1: torch.Tensor,  # type: ignore[no-untyped-def]
           randomness: EnclaveRandomness | None) -> tuple[torch.Tensor, torch.Tensor, list]:
    enc = Enclave(bundle, MonitorConfig(triples=1, checksums=2), randomness=randomness)
    dev = Device(bundle.device_bundle(), seed=b"\x05" * 16)  # the device's randomness, fixed

    def party(s):  # type: ignore[no-untyped-def]
        if s.party_id == 0:
            for q in range(2 * R):
                enc.infer(s, 1, x0 if q % 2 == 0 else x1)
            enc.stop(s, 1)
            return None
        rec = _Recorder(s)
        dev.serve(rec, 0)
        return rec.log

    log = run_in_memory(2, party, timeout=120)[1]
    layers = len(bundle.model.program.layers)
    per_query = 2 * layers
    assert len(log) == 2 * R * per_query + 1  # (control, u) per layer per query, then stop
    ctrl = [log[i] for i in range(0, len(log) - 1, 2)]
    us = [log[i] for i in range(1, len(log), 2)]
    queries = [us[q * layers:(q + 1) * layers] for q in range(2 * R)]
    return (torch.stack([torch.cat([u.flatten() for u in q]) for q in queries[0::2]]),
            torch.stack([torch.cat([u.flatten() for u in q]) for q in queries[1::2]]),
            [ctrl, queries])


def _families(v: torch.Tensor, shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Per query (rows), functions of its view, as uint32 values in [0, 2^32) (columns)."""
    v = v.to(torch.int64) % M32
    msgs, off = [], 0
    for sh in shapes:
        n = 1
        for d in sh:
            n *= d
        msgs.append(v[:, off:off + n].reshape(v.shape[0], *sh))
        off += n
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "marginal", "item_diff", "item_sum", "adjacent_diff", "adjacent_sum", "cross_diff",
        "cross_sum", "decode_known_key")}
    out["marginal"].append(v)
    for m in msgs:
        a, b = m[:, 0::2].flatten(1), m[:, 1::2].flatten(1)  # items 0-1, 2-3, ...
        out["item_diff"].append(a - b)
        out["item_sum"].append(a + b)
        f = m.flatten(2)
        e0, e1 = f[:, :, 0::2], f[:, :, 1::2]  # adjacent elements of one item
        k = min(e0.shape[2], e1.shape[2])
        out["adjacent_diff"].append((e0[:, :, :k] - e1[:, :, :k]).flatten(1))
        out["adjacent_sum"].append((e0[:, :, :k] + e1[:, :, :k]).flatten(1))
    f0, f1 = msgs[0].flatten(1), msgs[1].flatten(1)
    k = min(f0.shape[1], f1.shape[1])
    out["cross_diff"].append(f1[:, :k] - f0[:, :k])
    out["cross_sum"].append(f1[:, :k] + f0[:, :k])
    return {name: torch.cat(parts, dim=1) % M32 for name, parts in out.items() if parts}


def _decode(queries: list, parity: int) -> torch.Tensor:
    """The device's decode against a known-key mask source: ``u - m`` for each message."""
    known = PRG(KNOWN_KEY)
    rows = []
    for q, msgs in enumerate(queries):
        dec = [(u.to(torch.int64) - known.ring(tuple(u.shape), 32)).flatten() for u in msgs]
        if q % 2 == parity:
            rows.append(torch.cat(dec))
    return torch.stack(rows) % M32


def _ks_two_sample_p(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per column, the two-sample Kolmogorov-Smirnov p-value (asymptotic), ties handled."""
    n, m = a.shape[0], b.shape[0]
    sa, sb = a.sort(dim=0).values.t().contiguous(), b.sort(dim=0).values.t().contiguous()
    pts = torch.cat([sa, sb], dim=1)
    fa = torch.searchsorted(sa, pts, right=True).double() / n
    fb = torch.searchsorted(sb, pts, right=True).double() / m
    d = (fa - fb).abs().max(dim=1).values
    return torch.from_numpy(kolmogorov((d * (n * m / (n + m)) ** 0.5).numpy()))


def _ks_uniform_p(a: torch.Tensor) -> torch.Tensor:
    """Per column, the exact one-sample KS p-value against uniform on [0, 1)."""
    n = a.shape[0]
    x = a.sort(dim=0).values
    i = torch.arange(1, n + 1, dtype=torch.float64).view(-1, 1)
    d = torch.maximum(i / n - x, x - (i - 1) / n).max(dim=0).values
    return torch.from_numpy(kstwo.sf(d.numpy(), n))


def _rejections(v0: torch.Tensor, v1: torch.Tensor, queries: list) -> dict[str, str]:
    """Families whose distribution differs between the inputs, or from uniform."""
    shapes = [tuple(u.shape) for u in queries[0]]
    f0, f1 = _families(v0, shapes), _families(v1, shapes)
    f0["decode_known_key"], f1["decode_known_key"] = _decode(queries, 0), _decode(queries, 1)
    bad = {}
    for name in f0:
        a, b = f0[name].double() / M32, f1[name].double() / M32
        cols = a.shape[1]
        p2 = float(_ks_two_sample_p(a, b).min())
        p1 = float(torch.minimum(_ks_uniform_p(a), _ks_uniform_p(b)).min())
        if p2 < ALPHA / cols:
            bad[name] = f"x0 vs x1 differ (min p {p2:.2e}, {cols} coordinates)"
        elif p1 < ALPHA / (2 * cols):
            bad[name] = f"not uniform (min p {p1:.2e}, {cols} coordinates)"
    return bad


def test_device_view_is_independent_of_the_input(setup) -> None:  # type: ignore[no-untyped-def]
    bundle, x0, x1 = setup
    v0, v1, (ctrl, queries) = _views(bundle, x0, x1, None)
    # control words: [1, layer] for every layer of every query, then [0, 0]; the same for both
    layers = len(bundle.model.program.layers)
    assert all(c.tolist() == [1, i % layers] for i, c in enumerate(ctrl))
    assert all(u.dtype == torch.int32 for q in queries for u in q)
    assert {tuple(tuple(u.shape) for u in q) for q in queries} == {((4, 1, 4, 4), (4, 48))}
    assert _rejections(v0, v1, queries) == {}


@pytest.mark.parametrize(("source", "caught_by"), [
    (StaticMasks, "marginal"),
    (OnePadPerBatch, "item_diff"),
    (ReusedAcrossLayers, "cross_diff"),
    (KnownKeyMasks, "decode_known_key"),
])
def test_broken_mask_sources_are_detected(setup, source: type,  # type: ignore[no-untyped-def]
                                          caught_by: str) -> None:
    bundle, x0, x1 = setup
    v0, v1, (_, queries) = _views(bundle, x0, x1, source())
    bad = _rejections(v0, v1, queries)
    assert caught_by in bad, bad
