"""Secure block ReLU (Gorski & Avidan, "Securing Neural Networks with Knapsack Optimization").

Per channel a patch size (h, w): one DReLU on each patch's sum (its sign equals the sign of the
patch mean; patches at the right and bottom borders are partial, ceil mode), then one product
that gates every element of the patch by its patch's sign. (1, 1) is ordinary ReLU, (0, 1) is
identity (no comparison), (1, 0) outputs zero: exactly the plaintext reference
:func:`secinfer.models.block_relu.block_relu`, which the tests compare it with.

1. group channels by patch size; zero-pad each group to a multiple of its patch;
2. P_i sums its shares over each patch (local);
3. one batched DReLU over the negated sums of all patches of all groups, gate = 1 - DReLU(-s)
   = 1[s > 0] (see :func:`secinfer.mpc.compare.drelu`);
4. one Beaver product ``x * expand(sign)`` whose opened sign mask has one entry per patch, so
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

import torch

from .compare import drelu
from .engine import MPCEngine
from .share import Share

__all__ = ["block_relu"]


def _expand(sign: torch.Tensor, bh: int, bw: int, h: int, w: int) -> torch.Tensor:
    return sign.repeat_interleave(bh, dim=-2).repeat_interleave(bw, dim=-1)[..., :h, :w]


def _patch_sums(x: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    n, c, h, w = x.shape
    ph, pw = -h % bh, -w % bw
    xp = torch.nn.functional.pad(x, (0, pw, 0, ph))
    return xp.reshape(n, c, (h + ph) // bh, bh, (w + pw) // bw, bw).sum(dim=(3, 5))


def block_relu(engine: MPCEngine, x: Share, block_sizes: list[list[int]]) -> Share:
    n, c, h, w = x.shape
    groups: dict[tuple[int, int], list[int]] = {}
    for ch, (bh, bw) in enumerate(block_sizes):
        groups.setdefault((int(bh), int(bw)), []).append(ch)
    if len(block_sizes) != c:
        raise ValueError(f"block ReLU spec has {len(block_sizes)} channels, activation has {c}")
    active = [(k, v) for k, v in groups.items() if k[0] > 0 and k[1] > 0]
    # one DReLU over every patch of every active group
    sums, layout = [], []
    for (bh, bw), chans in active:
        s = _patch_sums(x.data[:, chans], bh, bw)
        layout.append(((bh, bw), chans, s.shape))
        sums.append(s.reshape(-1))
    out = torch.zeros(x.shape, dtype=torch.int64, device=x.data.device)
    if sums:
        flat = torch.cat(sums)
        # gate = 1[sum > 0] = 1 - DReLU(-sum): a patch summing to exactly 0 is gated off, as in
        # the plaintext BlockReLU of secinfer.knapsack
        neg = drelu(engine, Share(-flat, x.frac_bits))
        signs = Share(-neg.data + (1 if engine.role == 0 else 0), 0) if not engine.is_helper \
            else neg
        xs_all, ss_all, i = [], [], 0
        for (_bh, _bw), chans, shp in layout:
            k = int(torch.Size(shp).numel())
            xs_all.append(x.data[:, chans].reshape(-1))
            ss_all.append(signs.data[i : i + k])
            i += k
        sizes = [(bh, bw, len(chans), shp) for (bh, bw), chans, shp in layout]

        def op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            res, ia, ib = [], 0, 0
            for bh, bw, nc, shp in sizes:
                ka, kb = n * nc * h * w, int(torch.Size(shp).numel())
                sa = a[ia : ia + ka].reshape(n, nc, h, w)
                sb = b[ib : ib + kb].reshape(shp)
                res.append((sa * _expand(sb, bh, bw, h, w)).reshape(-1))
                ia, ib = ia + ka, ib + kb
            return torch.cat(res)

        prod = engine.beaver(Share(torch.cat(xs_all), x.frac_bits),
                             Share(torch.cat(ss_all), 0), op)
        if not engine.is_helper:
            j = 0
            for (_bh, _bw), chans, _shp in layout:
                k = n * len(chans) * h * w
                out[:, chans] = prod.data[j : j + k].reshape(n, len(chans), h, w)
                j += k
    if not engine.is_helper:
        ident = groups.get((0, 1), [])
        if ident:
            out[:, ident] = x.data[:, ident]
    return Share(out, x.frac_bits)
