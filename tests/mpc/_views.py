"""Record each party's full view of a protocol run, with one party's randomness fixed.

A view is everything a party receives, from every sender, in order, together with the
randomness it holds (its seeds). To test that a party learns nothing we FIX that party's
randomness, run the protocol many times on each of two secrets with everyone else's randomness
fresh, and test that the joint distribution of what it received is the same for both secrets.
Pooling over the receiver's own randomness (the earlier test) cannot see a leak such as
"message A divided by message B is a function of the secret and of my seeds".

Parties: 0 and 1 compute, 2 the helper, 3 the user, who shares the secret inputs and receives
the output. Seeds by holder: P0 knows "01" and "h0"; P1 "01" and "h1"; the helper "h0" and
"h1"; the user "user" (the randomness of its input sharing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from secinfer.mpc import PRG, MPCConfig, MPCEngine, Share, encode, new_seed
from secinfer.net import run_in_memory

USER = 3
KNOWS = {0: ("01", "h0"), 1: ("01", "h1"), 2: ("h0", "h1"), USER: ("user",)}

Op = Callable[[MPCEngine, list[Share]], Share]


@dataclass
class Run:
    """What every party received in one run: ``views[pid]`` = [(sender, tensor), ...]."""

    views: dict[int, list[tuple[int, torch.Tensor]]]
    outputs: torch.Tensor | None


def run_recorded(op: Op, secrets: Sequence[torch.Tensor], config: MPCConfig,
                 fixed: dict[str, bytes], runner=run_in_memory) -> Run:
    """One run of ``op`` on the user's ``secrets`` with the seeds in ``fixed`` held constant."""
    seeds = {k: fixed.get(k) or new_seed() for k in ("01", "h0", "h1", "user")}
    views: dict[int, list[tuple[int, torch.Tensor]]] = {p: [] for p in range(4)}
    shapes = [tuple(s.shape) for s in secrets]

    def program(s):
        log = views[s.party_id]
        orig = s.recv

        def rec(peer, timeout=None, tag="", expect=None):
            t = orig(peer, timeout, tag, expect)
            log.append((peer, t.clone()))
            return t

        s.recv = rec
        if s.party_id == USER:
            prg = PRG(seeds["user"])
            for x in secrets:
                enc = encode(x, config.frac_bits)
                r = prg.int64(tuple(enc.shape))
                s.send(0, enc - r)
                s.send(1, r)
            return (s.recv(0) + s.recv(1)).to(torch.float64) / 2.0 ** config.frac_bits
        eng = MPCEngine(s, config, seed_source=lambda purpose: seeds[purpose])
        ins = [eng.share_input(None, USER, shp) for shp in shapes]
        y = op(eng, ins)
        eng.reveal(y, to=USER)
        return None

    res = runner(4, program, timeout=60.0)
    return Run(views, res[USER])


def _as_int64(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).to(torch.int64)


def _hash_bucket(v: torch.Tensor, buckets: int = 16) -> torch.Tensor:
    """Spread int64 values over ``buckets`` bins with a multiplicative hash of all 64 bits."""
    h = v * torch.tensor(-7046029254386353131, dtype=torch.int64)  # 0x9E3779B97F4A7C15
    bits = buckets.bit_length() - 1
    return (h >> (64 - bits)) & (buckets - 1)


def _row_multiset(v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """One bucket per row of a 2-D (or more) message: a hash of the row's sorted values.

    A protocol that shuffles or rotates the entries of each row (PrivateCompare does) must
    hide the row's multiset too, not only each entry.
    """
    rows = v.reshape(-1, shape[-1]).sort(dim=1).values
    weights = torch.tensor(0x100000001B3, dtype=torch.int64) ** torch.arange(rows.shape[1])
    return _hash_bucket((rows * weights).sum(1))


def features(view: list[tuple[int, torch.Tensor]], prime: int, window: int = 4
             ) -> dict[str, torch.Tensor]:
    """Bucketed features of one view.

    * every message element alone (``single``);
    * for every pair of messages of equal size from different senders within ``window``
      positions of each other: their sum and difference mod 2^64, their joint value, and for
      field elements (uint8 on the wire, mod ``prime``) their sum and ratio mod ``prime``;
    * for every such feature of a message with rows (2-D and wider), the multiset of each row
      (``..._rows``).
    """
    msgs = [(snd, t.reshape(-1).to(torch.int64), t.dtype, t.shape) for snd, t in view]
    out: dict[str, list[torch.Tensor]] = {}

    def add(kind: str, vals: torch.Tensor, shape: torch.Size) -> None:
        out.setdefault(kind, []).append(_hash_bucket(vals))
        if len(shape) >= 2 and shape[-1] > 1:
            out.setdefault(kind + "_rows", []).append(_row_multiset(vals, shape))

    inv = torch.tensor([pow(k, prime - 2, prime) if k % prime else 0 for k in range(256)],
                       dtype=torch.int64)
    for _, v, _, shp in msgs:
        add("single", v, shp)
    for i, (si, vi, di, shi) in enumerate(msgs):
        for j in range(i + 1, min(len(msgs), i + 1 + window)):
            sj, vj, dj, _ = msgs[j]
            if si == sj or vi.numel() != vj.numel():
                continue
            add("sum", vi + vj, shi)
            add("diff", vi - vj, shi)
            out.setdefault("joint", []).append(_hash_bucket(vi, 4) * 4 + _hash_bucket(vj, 4))
            if di == torch.uint8 and dj == torch.uint8:
                add("sum_mod_p", torch.remainder(vi + vj, prime), shi)
                ratio = torch.remainder(vi * inv[vj], prime)
                add("ratio", torch.where(vj % prime == 0, torch.full_like(ratio, prime), ratio),
                    shi)
    return {k: torch.cat(v) for k, v in out.items()}


def _tv_stat(cells: torch.Tensor, labels: torch.Tensor, n_cells: int) -> float:
    """Sum over positions of the L1 distance between the A and B histograms."""
    a = torch.bincount(cells[labels].reshape(-1), minlength=n_cells)
    b = torch.bincount(cells[~labels].reshape(-1), minlength=n_cells)
    return float((a - b).abs().sum())


def leak_scores(views_a: list[list[tuple[int, torch.Tensor]]],
                views_b: list[list[tuple[int, torch.Tensor]]], prime: int,
                permutations: int = 40) -> dict[str, float]:
    """z-score per feature kind of "the views for secret A and secret B differ".

    For each feature (every position of it separately), the histograms over runs for A and for
    B; the statistic is the sum over positions of their L1 distance. Its null distribution
    comes from random relabellings of the runs (the runs are exchangeable if the view does not
    depend on the secret). A message structure (sizes, senders, dtypes) that differs between
    the two secrets is reported as an infinite score.
    """
    def shape_of(v):
        return [(s, tuple(t.shape), t.dtype) for s, t in v]

    ref = shape_of(views_a[0])
    for v in (*views_a, *views_b):
        if shape_of(v) != ref:
            return {"structure": float("inf")}
    if not ref:
        return {"nothing_received": 0.0}
    fa = [features(v, prime) for v in views_a]
    fb = [features(v, prime) for v in views_b]
    labels = torch.zeros(len(fa) + len(fb), dtype=torch.bool)
    labels[: len(fa)] = True
    scores = {}
    for kind in fa[0]:
        mat = torch.stack([f[kind] for f in (*fa, *fb)])  # runs x positions
        k = int(mat.max()) + 1
        cells = mat + k * torch.arange(mat.shape[1])  # one cell per (position, bucket)
        n_cells = k * mat.shape[1]
        obs = _tv_stat(cells, labels, n_cells)
        null = torch.tensor([_tv_stat(cells, labels[torch.randperm(len(labels))], n_cells)
                             for _ in range(permutations)], dtype=torch.float64)
        sd = float(null.std())
        scores[kind] = 0.0 if sd == 0 and obs <= float(null.mean()) else (
            float("inf") if sd == 0 else (obs - float(null.mean())) / sd)
    return scores


def collect(op: Op, secrets_a: Sequence[torch.Tensor], secrets_b: Sequence[torch.Tensor],
            config: MPCConfig, receiver: int, runs: int
            ) -> tuple[list[list[tuple[int, torch.Tensor]]], list[list[tuple[int, torch.Tensor]]]]:
    """``runs`` views of ``receiver`` per secret, its own seeds fixed, everyone else's fresh."""
    fixed = {name: new_seed() for name in KNOWS[receiver]}
    va, vb = [], []
    for _ in range(runs):  # interleaved, so drift in anything else hits both alike
        va.append(run_recorded(op, secrets_a, config, fixed).views[receiver])
        vb.append(run_recorded(op, secrets_b, config, fixed).views[receiver])
    return va, vb
