"""The owner's output policy, enforced on shares: what P0 and P1 send to the user.

* ``logits``: the output shares, as computed.
* ``label``: shares of the argmax index (:func:`secinfer.mpc.compare.argmax_along`): a
  tournament of ``ceil(log2 C)`` levels, each one DReLU and one Beaver product.
* ``topk``: shares of the ``k`` largest outputs' indices, best first, no values. The outputs are
  first made distinct on shares (``C * y + (C - 1 - j)``, local: the order is kept and ties go to
  the lower index), then k times: the argmax tournament, and the winner pushed down by 2^58 ring
  units through a DReLU against the maximum (exactly one-hot, since the values are distinct).

Whatever the mode, the result is re-randomised before it leaves (P0 adds and P1 subtracts a
fresh P0-P1 PRG draw), so each share the user receives is uniform on its own and the pair
reveals exactly the permitted value: the user never holds a share of a logit (label, topk).
"""

from __future__ import annotations

import torch

from ..models.bundle import OutputPolicy
from ..mpc import MPCEngine, Share, cat
from ..mpc.compare import argmax_along, drelu, max_along
from ..mpc.config import P0

__all__ = ["policy_output", "decode_policy_output", "output_shape", "PUSH_DOWN_BITS"]

PUSH_DOWN_BITS = 58


def output_shape(policy: OutputPolicy, batch: int, classes: int) -> tuple[int, ...]:
    """Shape of the tensor the user reconstructs."""
    if policy.mode == "logits":
        return (batch, classes)
    if policy.mode == "label":
        return (batch,)
    assert policy.k is not None
    return (batch, policy.k)


def policy_output(engine: MPCEngine, y: Share, policy: OutputPolicy) -> Share:
    """Shares of what ``policy`` lets the user see of the model output ``y`` [batch, C]."""
    if policy.mode == "logits":
        out = y
    else:
        y = y.reshape(y.shape[0], -1)
        if policy.mode == "label":
            out = argmax_along(engine, y, -1)
        else:
            assert policy.k is not None
            out = _topk_indices(engine, y, policy.k)
    return _rerandomize(engine, out)


def _topk_indices(engine: MPCEngine, y: Share, k: int) -> Share:
    b, n = y.shape
    if not 1 <= k <= n:
        raise ValueError(f"top-{k} of {n} outputs")
    z = y.mul_int(n)
    if engine.role == P0:
        z = Share(z.data + (n - 1 - torch.arange(n, dtype=torch.int64)), z.frac_bits)
    picks = []
    for step in range(k):
        top, idx = max_along(engine, z, -1, with_index=True)
        picks.append(idx.unsqueeze(-1))
        if step + 1 < k:
            onehot = drelu(engine, z - top.unsqueeze(-1).expand(b, n))
            z = Share(z.data - onehot.data * (1 << PUSH_DOWN_BITS), z.frac_bits)
    return cat(picks, -1)


def _rerandomize(engine: MPCEngine, x: Share) -> Share:
    if engine.is_helper:
        return x
    r = engine.prg_01.int64(tuple(x.shape))
    return Share(x.data + r if engine.role == P0 else x.data - r, x.frac_bits)


def decode_policy_output(total: torch.Tensor, policy: OutputPolicy, frac_bits: int,
                         classes: int) -> torch.Tensor:
    """The user's side: the sum of both shares -> float logits, or int64 indices."""
    from ..mpc.engine import decode

    if policy.mode == "logits":
        return decode(total, frac_bits)
    if total.numel() and (int(total.min()) < 0 or int(total.max()) >= classes):
        raise ValueError(f"reconstructed indices outside 0..{classes - 1}: the servers' shares "
                         "are inconsistent")
    return total
