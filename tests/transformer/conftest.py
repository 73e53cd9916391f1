import pytest
import torch

from secinfer.mpc import MPCConfig, MPCEngine
from secinfer.net import run_in_memory

F_BITS = 16


def _prog(s, x, fn, kw):
    torch.set_num_threads(1)
    eng = MPCEngine(s, MPCConfig(frac_bits=F_BITS))
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    return eng.reveal(fn(eng, xs, **kw), to=0)


@pytest.fixture
def secure():
    """secure(fn, x, **kw): run fn(engine, share_of_x, **kw) on 3 in-memory parties, reveal."""

    def go(fn, x, **kw):
        return run_in_memory(3, _prog, x, fn, kw, timeout=120.0)[0]

    return go
