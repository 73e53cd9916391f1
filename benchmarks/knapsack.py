"""Block ReLU chosen by knapsack, and approximate DReLU: comparisons, bytes, rounds, latency.

For each model, in one run: the knapsack specs at 6% and 12% DReLU budgets (the ones shipped in
``src/secinfer/assets`` when present, else distortion on a few samples and a solve), then
secure 3-party inference (three processes over mutual TLS, batch 1) with (a) ordinary ReLU,
(b) block ReLU at 6%, (c) at 12%, (d) block ReLU 6% + approximate DReLU.
The approximate DReLU window is set from the largest pre-activation seen on the samples, with
16x headroom. ResNet18 (CIFAR shape) has random weights and random inputs: its figures are
costs only (no accuracy is claimed for it).

Latency is per image as a long-lived server sees it: one cluster serves all four configs, one
untimed pass over them first (process start-up costs: imports, kernel choice, first
allocations), then ``--reps`` passes interleaved across configs, so that every config shares
the background load of this (shared, 2-core) machine; the figure is P0's median. A table per
config shows where the time goes, per layer kind and party.

    .venv/bin/python benchmarks/knapsack.py [--models fmnist_cnn,fmnist_resnet,resnet18]
        [--reps 7] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from secinfer.knapsack.distortion import ModelRef, extract
from secinfer.knapsack.problem import load_distortion
from secinfer.knapsack.solve import resolve_budget, solve
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.models.capture import capture
from secinfer.net import local_cluster

RESULTS = Path(__file__).resolve().parent / "results" / "knapsack.json"
F_BITS = 12


def _few_candidates(h: int, w: int) -> list[tuple[int, int]]:
    sizes = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8), (h, w), (0, 1), (1, 0)]
    return sorted({(min(a, h), min(b, w)) if a else (a, b) for a, b in sizes})


def _samples(name: str, n: int) -> tuple[ModelRef, torch.Tensor, tuple[int, ...]]:
    if name.startswith("fmnist_"):
        from secinfer.data import fashion_mnist

        x, _ = fashion_mnist.load("train", limit=n)
        return ModelRef(name, str(zoo.asset_path(name))), x, (1, 28, 28)
    torch.manual_seed(0)
    return ModelRef("resnet18", None, {"num_classes": 10}), torch.randn(n, 3, 32, 32), (3, 32, 32)


def _approx_bits(model: torch.nn.Module, shape, x: torch.Tensor) -> tuple[int, int]:
    """(high, low) ignored bits whose window covers 16x the largest pre-activation seen."""
    hooks = [m.register_forward_hook(lambda _m, inp, _o: _track(inp[0]))
             for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    seen: list[float] = []

    def _track(t: torch.Tensor) -> None:
        seen.append(t.abs().max().item())

    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    peak = max(seen) if seen else 1.0
    sign_bit = F_BITS + max(1, math.ceil(math.log2(16 * peak)))
    return 63 - sign_bit, 4


def _secure_all(model, shape, configs: list[tuple[dict | None, int, int]], reps: int,
                warmup: int) -> list[dict]:
    """Every config's bundle served by one cluster, their inferences interleaved (this is a
    shared 2-core machine: each config then sees the same background load), ``warmup`` untimed
    passes first. Latency: P0's median over the timed passes; the breakdown is per layer kind
    and party from the last pass."""
    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        for i, (spec, _hb, _lb) in enumerate(configs):
            compile_model(model, shape, Path(tmp) / f"b{i}", frac_bits=F_BITS, relu_spec=spec)
            roots.append(str(Path(tmp) / f"b{i}"))
        with local_cluster(roles=["server", "server", "helper"], workdir=tmp,
                           timeout=600) as cluster:
            out = cluster.run("secinfer.serve.programs:plan_latency",
                              kwargs={"bundle_root": roots, "reps": reps, "warmup": warmup,
                                      "drelu_high_bits": [c[1] for c in configs],
                                      "drelu_low_bits": [c[2] for c in configs],
                                      "breakdown": True},
                              timeout=3600)
    rows = []
    for i in range(len(configs)):
        def get(p: int, key: str, i: int = i) -> torch.Tensor:
            return out[p][f"m{i}.{key}"]

        rows.append({
            "seconds": statistics.median(get(0, "seconds").tolist()),
            "seconds_all": [round(t, 4) for t in get(0, "seconds").tolist()],
            "first_pass_seconds": float(get(0, "warmup_seconds")[0]) if warmup else None,
            "bytes": sum(int(get(p, "bytes_sent")) for p in out),
            "drelu_bytes": sum(int(get(p, "drelu_bytes_sent")) for p in out),
            "rounds": int(get(1, "rounds")),
            "per_kind": {str(p): json.loads(bytes(get(p, "breakdown").tolist()).decode())
                         for p in out},
        })
    return rows


def _drelus(model, shape, spec) -> int:
    from secinfer.models.block_spec import apply_spec

    m = apply_spec(__import__("copy").deepcopy(model), spec) if spec else model
    plan, _ = capture(m, shape)
    return plan.relu_count()


def _shipped_specs(name: str) -> dict[float, dict[str, torch.Tensor]] | None:
    """The knapsack specs shipped in assets (32-sample distortion, `docs/knapsack.md`)."""
    from secinfer.models.block_spec import load_spec

    paths = {r: zoo.asset_path(name).with_name(f"{name}_spec{int(r * 100)}.json")
             for r in (0.06, 0.12)}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {r: load_spec(p) for r, p in paths.items()}


def run_model(name: str, n_samples: int, reps: int, warmup: int) -> list[dict]:
    ref, x, shape = _samples(name, n_samples)
    model = ref.build()
    specs = _shipped_specs(name)
    if specs is None:  # solve here, on a few samples and a short candidate list
        with tempfile.TemporaryDirectory() as tmp:
            dist = extract(ref, x, Path(tmp) / "d", candidates=_few_candidates, progress=False)
            layers, _ = load_distortion(dist)
        full = sum(layer.full_cost for layer in layers)
        specs = {r: solve(layers, resolve_budget(full, ratio=r)).spec for r in (0.06, 0.12)}
    high, low = _approx_bits(model, shape, x)
    configs = [("ReLU", None, 0, 0), ("block ReLU 6%", specs[0.06], 0, 0),
               ("block ReLU 12%", specs[0.12], 0, 0),
               (f"block 6% + approx DReLU ({63 - high - low} bits)", specs[0.06], high, low)]
    secure = _secure_all(model, shape, [(spec, hb, lb) for _l, spec, hb, lb in configs],
                         reps, warmup)
    return [{"model": name, "config": label, "drelus": _drelus(model, shape, spec), **sec}
            for (label, spec, _hb, _lb), sec in zip(configs, secure, strict=True)]


def _print_breakdown(rows: list[dict]) -> None:
    """Where the time goes: per config and layer kind, each party's seconds in the op (and,
    of those, blocked waiting for a message), bytes sent by all three, rounds at P1."""
    for r in rows:
        pk = r["per_kind"]
        print(f"\n{r['model']} / {r['config']}: per layer kind, last pass "
              f"(s = seconds in the op, wait = of which blocked in recv)")
        print(f"  {'kind':<24} {'layers':>6} {'P0 s':>7} {'wait':>7} {'P1 s':>7} {'wait':>7} "
              f"{'P2 s':>7} {'wait':>7} {'MB':>7} {'rounds':>6}")
        kinds = sorted(pk["0"], key=lambda k: -pk["0"][k]["seconds"])
        for k in kinds:
            cells = [f"{_cell(pk, p, k, key):>7.3f}" for p in "012"
                     for key in ("seconds", "wait_seconds")]
            mb = sum(_cell(pk, p, k, "bytes_sent") for p in pk) / 1e6
            print(f"  {k:<24} {int(_cell(pk, '0', k, 'layers')):>6} {' '.join(cells)} "
                  f"{mb:>7.2f} {int(_cell(pk, '1', k, 'rounds')):>6}")


def _cell(pk: dict, party: str, kind: str, key: str) -> float:
    return float(pk[party].get(kind, {}).get(key, 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="fmnist_cnn,fmnist_resnet,resnet18")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7,
                    help="timed inferences per config, interleaved across configs")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed passes over all configs first (one-time costs)")
    args = ap.parse_args()
    rows = [r for m in args.models.split(",")
            for r in run_model(m, args.samples, args.reps, args.warmup)]
    print(f"{'model':<13} {'config':<36} {'DReLUs':>8} {'MB':>9} {'cmp MB':>9} {'rounds':>7} "
          f"{'secs':>7}")  # secs: P0's median per image over the timed passes
    for r in rows:
        print(f"{r['model']:<13} {r['config']:<36} {r['drelus']:>8} {r['bytes'] / 1e6:>9.2f} "
              f"{r['drelu_bytes'] / 1e6:>9.2f} {r['rounds']:>7} {r['seconds']:>7.3f}")
    _print_breakdown(rows)
    print()
    for m in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == m]
        base = mine[0]
        for r in mine[1:]:
            print(f"{m} {r['config']} bytes reduction ratio: {base['bytes'] / r['bytes']:.2f}")
            print(f"{m} {r['config']} comparison traffic reduction ratio: "
                  f"{base['drelu_bytes'] / r['drelu_bytes']:.2f}")
            print(f"{m} {r['config']} latency reduction ratio: "
                  f"{base['seconds'] / r['seconds']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # keep rows of models not run this time, so models can be measured in separate commands
    ran = {r["model"] for r in rows}
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([r for r in old if r["model"] not in ran] + rows, indent=2))


if __name__ == "__main__":
    main()
