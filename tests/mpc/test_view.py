"""What each party receives must not depend on the secrets, and randomness must be fresh."""

import pytest
import torch
from scipy.stats import ks_2samp

from secinfer.mpc import MPCConfig, MPCEngine, relu
from secinfer.net import run_in_memory


def _recording_program(s, secret, log, truncation):
    received = log.setdefault(s.party_id, [])
    orig = s.recv

    def rec(peer, timeout=None):
        t = orig(peer, timeout)
        received.append(t.clone())
        return t

    s.recv = rec
    eng = MPCEngine(s, MPCConfig(truncation=truncation))
    x = eng.share_input(secret if eng.role == 0 else None, 0, tuple(secret.shape))
    w = eng.share_input(secret.flip(0) if eng.role == 0 else None, 0, tuple(secret.shape))
    y = eng.mul(x, w)
    relu(eng, y)


def _views(secret, runs, truncation="local"):
    views: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    for _ in range(runs):
        log: dict[int, list[torch.Tensor]] = {}
        run_in_memory(3, _recording_program, secret, log, truncation)
        for pid, msgs in log.items():
            # skip the seed-agreement messages (uniform bytes, fixed size) at the front
            body = [m for m in msgs if m.numel() > 16]
            views[pid].append(torch.cat([_to_unit(m).reshape(-1) for m in body]))
    return {pid: torch.stack(v) for pid, v in views.items()}


def _to_unit(m: torch.Tensor) -> torch.Tensor:
    """A signed-int ring element (64, 32 or 16 bits) -> [0, 1); other dtypes as they are."""
    bits = {torch.int64: 64, torch.int32: 32, torch.int16: 16}.get(m.dtype)
    v = m.to(torch.float64)
    return v if bits is None else v / 2.0**bits + 0.5


@pytest.mark.parametrize("truncation", ["local", "exact"])
def test_views_are_indistinguishable_for_different_secrets(truncation):
    a = torch.linspace(-3, 3, 64, dtype=torch.float64)
    b = torch.full((64,), 2.5, dtype=torch.float64)
    va, vb = _views(a, 40, truncation), _views(b, 40, truncation)
    for pid in (0, 1, 2):
        assert va[pid].shape == vb[pid].shape
        xa, xb = va[pid].reshape(-1), vb[pid].reshape(-1)
        stat = ks_2samp(xa.numpy(), xb.numpy())
        assert stat.pvalue > 1e-3, f"party {pid}'s view depends on the secret (p={stat.pvalue})"


def test_two_runs_use_different_randomness():
    x = torch.randn(32, dtype=torch.float64)
    v1, v2 = _views(x, 1), _views(x, 1)
    for pid in (0, 1, 2):
        assert not torch.equal(v1[pid], v2[pid]), f"party {pid} saw identical messages twice"
