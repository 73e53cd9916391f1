"""Independent references for ring ops: numpy uint64 arithmetic (wraps mod 2^64 by definition).

They deliberately avoid torch's int64 kernels, which are one of the methods under test.
"""

from __future__ import annotations

import numpy as np
import torch

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
EXTREMES = [INT64_MIN, INT64_MAX, 0, -1, 1, 2**62, -(2**62), 2**21, -(2**21), 2**42 - 1]


def ring_random(*shape: int) -> torch.Tensor:
    """Fresh full-range int64 values with the extreme values sprinkled in."""
    x = torch.randint(INT64_MIN, INT64_MAX, shape, dtype=torch.int64)
    flat = x.view(-1)
    if flat.numel():
        idx = torch.randint(0, flat.numel(), (min(len(EXTREMES), flat.numel()),))
        flat[idx] = torch.tensor(EXTREMES[: len(idx)], dtype=torch.int64)
    return x


def _u64(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().numpy().view(np.uint64)


def _i64(a: np.ndarray) -> torch.Tensor:
    # np.array (not ascontiguousarray) keeps 0-d results 0-d.
    return torch.from_numpy(np.array(a, dtype=np.uint64, order="C").view(np.int64))


def matmul_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _i64(np.matmul(_u64(a), _u64(b)))


def mul_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _i64(np.multiply(_u64(a), _u64(b)))


def conv2d_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Direct convolution: a sum over kernel taps of channel contractions, in uint64."""
    top, bottom, left, right = pads
    xs = np.pad(_u64(x), ((0, 0), (0, 0), (top, bottom), (left, right)))
    ws = _u64(w)
    n, _, hp, wp = xs.shape
    o, cg, kh, kw = ws.shape
    (s0, s1), (d0, d1) = stride, dilation
    ho = (hp - d0 * (kh - 1) - 1) // s0 + 1
    wo = (wp - d1 * (kw - 1) - 1) // s1 + 1
    og = o // groups
    out = np.zeros((n, o, ho, wo), dtype=np.uint64)
    for g in range(groups):
        xg = xs[:, g * cg : (g + 1) * cg]
        wg = ws[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * d0, i * d0 + s0 * (ho - 1) + 1, s0)
                cols = slice(j * d1, j * d1 + s1 * (wo - 1) + 1, s1)
                patch = xg[:, :, rows, cols]
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return _i64(out)
