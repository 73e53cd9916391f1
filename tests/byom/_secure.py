"""In-process secure evaluation of a captured plan (three parties in threads)."""

from __future__ import annotations

from secinfer.models.capture import capture
from secinfer.models.secure import SecureModel, run_plain
from secinfer.mpc import PRG, MPCConfig, MPCEngine, new_seed
from secinfer.mpc.engine import encode
from secinfer.net import run_in_memory


def share_weights(weights, f):
    prg = PRG(new_seed())
    s0, s1 = {}, {}
    for k, v in weights.items():
        enc = encode(v, f)
        r = prg.int64(enc.shape)
        s0[k], s1[k] = enc - r, r
    return s0, s1


def _program(s, plan, shares, x):
    eng = MPCEngine(s, MPCConfig(frac_bits=plan.frac_bits))
    model = SecureModel(eng, plan, shares[eng.role] if eng.role < 2 else None)
    xs = eng.share_input(x if eng.role == 0 else None, 0, tuple(x.shape))
    return eng.reveal(model.forward(xs), to=0)


def secure_vs_plain(plan, weights, x):
    """(secure logits, float64 plaintext logits of the plan) for the batch ``x``."""
    shares = share_weights(weights, plan.frac_bits)
    out = run_in_memory(3, _program, plan, shares, x, timeout=120)[0]
    return out, run_plain(plan, weights, x.double())


def secure_logits(model, shape, x, f=16):
    plan, weights = capture(model, shape, frac_bits=f)
    return secure_vs_plain(plan, weights, x)
