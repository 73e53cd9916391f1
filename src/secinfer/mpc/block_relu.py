"""Secure block ReLU (Gorski & Avidan, "Securing Neural Networks with Knapsack Optimization").

Per channel a patch size (h, w): one DReLU on each patch's sum (its sign equals the sign of the
patch mean; patches at the right and bottom borders are partial, ceil mode), then one product
that gates every element of the patch by its patch's sign. (1, 1) is ordinary ReLU, (0, 1) is
identity (no comparison), (1, 0) outputs zero: exactly the plaintext reference
:func:`secinfer.models.block_relu.block_relu`, which the tests compare it with.

1. number the patches of every gated channel (the layout depends only on the shape and the
   public sizes and is computed once per layer: element -> patch index);
2. P_i sums its shares over each patch (local: one ``index_add``);
3. one batched DReLU over the negated sums of all patches of all channels, gate = 1 -
   DReLU(-s) = 1[s > 0] (see :func:`secinfer.mpc.compare.drelu`);
4. one Beaver product ``x * sign[patch]`` whose opened sign mask has one entry per patch, so
   the product costs 8 bytes per element plus 8 per patch from each compute party.

What each party receives: in step 3, a DReLU's messages (see :mod:`.compare`: P0 the opened
z = s + r, P1 bit-shares, z0 and delta's share, the helper the padded, multiplied and rotated
comparison terms), all independent of the patch sums; in step 4, the Beaver openings
x_i - a_i and g_i - b_i (one b entry per patch, fresh per call) and, at P1, c1, each masked by
a seed draw the receiver lacks. The patch sizes per channel are public (they are part of the
compiled plan, like every layer's shape). The view tests and the helper's ratio attack in
``tests/mpc/test_view.py`` cover this function.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .compare import drelu
from .dzk import Elementwise
from .engine import MPCEngine
from .share import Share

__all__ = ["block_relu"]


@dataclass(frozen=True)
class _Layout:
    """Where every element of a [N, C, H, W] activation goes, for one layer's block sizes.

    ``gated``: flat indices of the elements of gated channels (None: every element is gated),
    ``patch``: for each of them (in that order), the index of its patch among ``patches``,
    ``ident``: flat indices of the identity channels' elements; the rest output zero.
    """

    gated: torch.Tensor | None
    patch: torch.Tensor
    patches: int
    ident: torch.Tensor


@functools.lru_cache(maxsize=256)
def _layout(shape: tuple[int, int, int, int], sizes: tuple[tuple[int, int], ...]) -> _Layout:
    n, c, h, w = shape
    if len(sizes) != c:
        raise ValueError(f"block ReLU spec has {len(sizes)} channels, activation has {c}")
    rows = torch.arange(h).unsqueeze(1)
    cols = torch.arange(w).unsqueeze(0)
    gated_ch, patch_maps, ident_ch, base = [], [], [], 0
    for ch, (bh, bw) in enumerate(sizes):
        if bh > 0 and bw > 0:
            pw = -(-w // bw)
            patch_maps.append((rows // bh) * pw + cols // bw + base)
            base += -(-h // bh) * pw
            gated_ch.append(ch)
        elif (bh, bw) == (0, 1):
            ident_ch.append(ch)
    per_sample = base
    chan_elems = torch.arange(h * w)

    def flat(chans: list[int]) -> torch.Tensor:
        if not chans:
            return torch.empty(0, dtype=torch.int64)
        ch = torch.tensor(chans, dtype=torch.int64)
        idx = (ch.unsqueeze(1) * (h * w) + chan_elems).reshape(1, -1)
        return (idx + (torch.arange(n) * (c * h * w)).unsqueeze(1)).reshape(-1)

    if patch_maps:
        one = torch.stack(patch_maps).reshape(1, -1)
        patch = (one + (torch.arange(n) * per_sample).unsqueeze(1)).reshape(-1)
    else:
        patch = torch.empty(0, dtype=torch.int64)
    gated = None if len(gated_ch) == c else flat(gated_ch)
    return _Layout(gated, patch.contiguous(), n * per_sample, flat(ident_ch))


def block_relu(engine: MPCEngine, x: Share, block_sizes: list[list[int]]) -> Share:
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(f"block ReLU needs an [N, C, H, W] activation, got {list(shape)}")
    lay = _layout(shape, tuple((int(bh), int(bw)) for bh, bw in block_sizes))
    helper = engine.is_helper
    total = x.numel()
    ngated = total if lay.gated is None else lay.gated.numel()
    if helper:
        out = engine.placeholder(shape, x.frac_bits)
    elif lay.gated is not None or not lay.patches:  # zero channels stay zero
        out = Share(torch.zeros(shape, dtype=torch.int64), x.frac_bits)
    if lay.patches:
        patch = lay.patch
        if helper:
            neg_sums = engine.placeholder((lay.patches,), x.frac_bits)
            xg = engine.placeholder((ngated,), x.frac_bits)
        else:
            flat = x.data.reshape(-1)
            xg_data = flat if lay.gated is None else flat.index_select(0, lay.gated)
            sums = torch.zeros(lay.patches, dtype=torch.int64).index_add_(0, patch, xg_data)
            neg_sums = Share(sums.neg_(), x.frac_bits)
            xg = Share(xg_data, x.frac_bits)
        # gate = 1[sum > 0] = 1 - DReLU(-sum): a patch summing to exactly 0 is gated off, as in
        # the plaintext BlockReLU of secinfer.knapsack
        neg = drelu(engine, neg_sums)
        if helper:
            signs = neg
        else:
            gate = neg.data.neg()
            if engine.role == 0:
                gate += 1
            signs = Share(gate, 0)

        def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * b.index_select(0, patch)

        prod = engine.beaver(xg, signs, op, Elementwise(index=patch))
        if not helper:
            if lay.gated is None:
                out = Share(prod.data.reshape(shape), x.frac_bits)
            else:
                out.data.view(-1).index_copy_(0, lay.gated, prod.data)
    if not helper and lay.ident.numel():
        out.data.view(-1).index_copy_(0, lay.ident, x.data.reshape(-1).index_select(0, lay.ident))
    return out
