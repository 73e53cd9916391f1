"""Exact multiple-choice knapsack over block sizes, with backtracking.

Paper: Gorski, Jevnisek, Avidan, arXiv 2304.10442, section "Knapsack" (seed code
``research/distortion/knapsack/multiple_choice_knapsack_solver.py``).

Problem: every channel ``i`` of every layer picks exactly one candidate ``k`` with DReLU cost
``W[i, k]`` and value ``P[i, k] = -noise[i, k]``; maximise ``sum P`` subject to
``sum W <= B``.

Algorithm:

1. Per channel, candidates with equal cost are merged (keep the larger value, ties to the earlier
   candidate), and dominated candidates (no cheaper and no better than another) are dropped. Both
   steps keep the optimum exact and shrink the inner loop.
2. ``dp[w]`` is the best value with total cost ``<= w``, for ``w = 0..B`` (float64). Channel by
   channel: ``dp'[w] = max_k dp[w - W_k] + P_k`` — one vectorised shift-add-max per option.
3. Backtracking walks the rows from the last channel: the option chosen for channel ``i`` at
   cost ``w`` is the one with ``dp_{i-1}[w - W_k] + P_k == dp_i[w]`` (the same float64 addition
   as the forward pass, so equality is exact). Keeping every row is too large for ResNet50
   (22,720 channels x 577k budget x 8 bytes = 105 GB), so the forward pass keeps ``dp`` only at
   the start of segments of ``S = sqrt(n)`` channels, and backtracking recomputes one segment's
   rows at a time, last segment first. Memory is ``O(sqrt(n) * B)`` and time twice the
   forward pass. Small problems keep all rows in one pass.
4. Layers with cheap options go first and every row stops at the largest total cost reachable so
   far (``dp`` is flat beyond it), which shortens the early rows.

Budget: a ratio of the layers' ordinary-ReLU DReLU count, or an absolute count (exactly one; the
seed's CLI defaulted both and so rejected every ``--ratio`` call).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from secinfer.knapsack.problem import LayerDistortion

__all__ = ["Solution", "resolve_budget", "solve"]

_FULL_TABLE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Solution:
    spec: dict[str, torch.Tensor]  # layer -> int32 [C, 2]
    drelus: int  # total DReLUs per image of the chosen blocks
    budget: int
    full_drelus: int  # with ordinary ReLU everywhere in these layers
    noise: float  # sum of the chosen distortions (the additive model's prediction)
    per_layer: dict[str, int]
    seconds: float


def resolve_budget(full: int, ratio: float | None = None, count: int | None = None) -> int:
    """DReLU budget from exactly one of ``ratio`` (of ``full``) or an absolute ``count``."""
    if (ratio is None) == (count is None):
        raise ValueError("give exactly one of a budget ratio or an absolute DReLU count")
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise ValueError(f"budget ratio must be in (0, 1], got {ratio}")
        return int(math.floor(ratio * full))
    assert count is not None
    if count < 0 or int(count) != count:
        raise ValueError(f"DReLU budget count must be a non-negative integer, got {count}")
    return int(count)


def _options(costs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged, undominated options of one channel: (costs asc, values asc, candidate index)."""
    order = np.lexsort((-values, costs))  # by cost, then best value first
    keep_c: list[int] = []
    keep_v: list[float] = []
    keep_k: list[int] = []
    best = -math.inf
    for k in order:
        c, v = int(costs[k]), float(values[k])
        if v > best:  # cheaper options come first, so a non-improving one is dominated
            if keep_c and keep_c[-1] == c:
                continue  # equal cost: the first (best) already kept
            keep_c.append(c)
            keep_v.append(v)
            keep_k.append(int(k))
            best = v
    return np.array(keep_c), np.array(keep_v), np.array(keep_k)


class _Channels:
    """Flattened per-channel options of all layers."""

    def __init__(self, layers: Sequence[LayerDistortion]) -> None:
        self.layer_of: list[int] = []
        self.opts: list[tuple[list[int], list[float], list[int]]] = []
        for li, layer in enumerate(layers):
            costs = layer.costs
            for row in layer.noise:
                c, v, k = _options(costs, -row)
                self.layer_of.append(li)
                self.opts.append((c.tolist(), v.tolist(), k.tolist()))

    def __len__(self) -> int:
        return len(self.opts)


def _step(dp: torch.Tensor, opts: tuple[list[int], list[float], list[int]], size: int,
          buf: torch.Tensor) -> torch.Tensor:
    """One channel: ``new[w] = max_j dp[min(w - c_j, len(dp) - 1)] + v_j`` for ``w < size``.

    ``dp`` is non-decreasing and flat beyond its end (no cost above its length is reachable), so
    indices past it read its last entry; that keeps early rows short when cheap layers go first.
    """
    old = dp.shape[0]
    new = torch.full((size,), -math.inf, dtype=dp.dtype)
    for c, v in zip(opts[0], opts[1], strict=True):
        if c >= size:
            break  # options are sorted by cost
        m = min(size - c, old)
        tail = new[c:c + m]
        torch.maximum(tail, torch.add(dp[:m], v, out=buf[:m]), out=tail)
        if c + m < size:  # the flat part of dp
            rest = new[c + m:]
            torch.maximum(rest, dp[old - 1:old] + v, out=rest)
    return new


def _which(prev: torch.Tensor, row: torch.Tensor, w: int,
           opts: tuple[list[int], list[float], list[int]]) -> int:
    """The option that produced ``row[w]`` from ``prev``: the same float64 addition as in
    :func:`_step`, so the maximum equals one candidate bit for bit. The cheapest match wins."""
    target = row[w]
    for j, (c, v) in enumerate(zip(opts[0], opts[1], strict=True)):
        if c > w:
            break
        pw = min(w - c, prev.shape[0] - 1)
        if bool(prev[pw:pw + 1] + v == target):
            return j
    raise RuntimeError(f"backtracking found no option for cost {w}")


def solve(
    layers: Sequence[LayerDistortion],
    budget: int,
    progress: Callable[[int, int], None] | None = None,
    full_table_bytes: int = _FULL_TABLE_BYTES,
    threads: int = 1,
) -> Solution:
    """Optimal block sizes for ``layers`` within ``budget`` DReLUs per image.

    ``threads``: torch threads for the DP (restored afterwards). The DP is memory-bound; on a
    busy machine one thread is faster than several that wait for each other.
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _solve(layers, budget, progress, full_table_bytes)
    finally:
        torch.set_num_threads(prev_threads)


def _solve(
    layers: Sequence[LayerDistortion],
    budget: int,
    progress: Callable[[int, int], None] | None,
    full_table_bytes: int,
) -> Solution:
    start = time.perf_counter()
    if not layers:
        raise ValueError("no layers to solve for")
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    names = [la.name for la in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate layer names in the distortion table: {names}")
    # Cheap layers first: rows stay shorter than the budget until the costs add up to it.
    order = sorted(range(len(layers)), key=lambda i: int(layers[i].costs.max()))
    ch = _Channels([layers[i] for i in order])
    n = len(ch)
    min_total = sum(o[0][0] for o in ch.opts)
    if min_total > budget:
        raise ValueError(f"infeasible: the cheapest choice needs {min_total} DReLUs, "
                         f"budget {budget}")
    sizes, reach = [], 0
    for o in ch.opts:
        reach += o[0][-1]
        sizes.append(min(budget, reach) + 1)
    size = sizes[-1]
    # Rows of one segment are kept for backtracking; beyond the memory cap, segments of
    # sqrt(n) channels are recomputed from checkpoints (rows are float64).
    seg = n if 8 * n * size <= full_table_bytes else max(1, math.isqrt(n))
    total_steps = n if seg >= n else 2 * n
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    buf = torch.empty(size, dtype=torch.float64)
    dp = torch.zeros(1, dtype=torch.float64)
    checkpoints: list[torch.Tensor] = []
    if seg < n:
        for i in range(n):
            if i % seg == 0:
                checkpoints.append(dp)
            dp = _step(dp, ch.opts[i], sizes[i], buf)
            tick()
    else:
        checkpoints.append(dp)
    choice = [0] * n
    w = size - 1
    best = None
    for s in reversed(range(len(checkpoints))):
        lo, hi = s * seg, min(n, (s + 1) * seg)
        rows = [checkpoints.pop()]
        for i in range(lo, hi):
            rows.append(_step(rows[-1], ch.opts[i], sizes[i], buf))
            tick()
        if best is None:
            best = float(rows[-1][w])
        for i in reversed(range(lo, hi)):
            w = min(w, sizes[i] - 1)  # beyond a row's end the row is flat
            choice[i] = _which(rows[i - lo], rows[i - lo + 1], w, ch.opts[i])
            w -= ch.opts[i][0][choice[i]]
        del rows
    assert w >= 0 and best is not None

    position = {}
    pos = 0
    for i in order:
        position[i] = pos
        pos += layers[i].shape[0]
    spec: dict[str, torch.Tensor] = {}
    per_layer: dict[str, int] = {}
    drelus = 0
    noise = 0.0
    for li, layer in enumerate(layers):
        c = layer.shape[0]
        pos = position[li]
        ks = [ch.opts[pos + r][2][choice[pos + r]] for r in range(c)]
        costs = layer.costs[ks]
        spec[layer.name] = torch.from_numpy(layer.candidates[ks].astype(np.int32))
        per_layer[layer.name] = int(costs.sum())
        drelus += int(costs.sum())
        noise += float(layer.noise[np.arange(c), ks].sum())
    if not math.isclose(-noise, best, rel_tol=1e-9, abs_tol=1e-9):
        raise RuntimeError(f"backtracking inconsistent: dp {best} vs chosen {-noise}")
    return Solution(spec, drelus, budget, sum(la.full_cost for la in layers), noise, per_layer,
                    time.perf_counter() - start)
