"""How much slower is exact arithmetic mod 2^64 than float64, for a GEMM and a conv?

Times, in one process and with one thread setting for every variant:

* a 1024x1024x1024 matmul: float64 GEMM (the reference), ``ring_matmul`` with the default
  method, with ``method="limbs"`` (five float64 GEMMs) and torch's int64 matmul;
* a 3x3 conv, padding 1, 1x64x56x56 input, 64 output channels: float64 conv2d (reference),
  ``ring_conv2d`` default, ``method="limbs"``, and torch's int64 conv2d.

Each repetition times every variant once, in turn, so that load from other processes hits
all variants alike; the figure is the median over repetitions. Ratios are median time over
the float64 reference's median time. Results go to benchmarks/results/ring_matmul.json.

    .venv/bin/python benchmarks/ring_matmul.py [--threads 1] [--reps 9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from secinfer.ring import ring_conv2d, ring_matmul

RESULTS = Path(__file__).resolve().parent / "results" / "ring_matmul.json"


def _rand_ring(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64)


def _time_round_robin(
    variants: dict[str, Callable[[], object]], reps: int
) -> dict[str, list[float]]:
    for f in variants.values():  # warm-up: allocator, MKL/oneDNN kernel selection
        f()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, f in variants.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return times


def _check_equal(results: dict[str, torch.Tensor]) -> None:
    first_name, first = next(iter(results.items()))
    for name, value in results.items():
        if not torch.equal(value, first):
            raise SystemExit(f"ring results differ: {name} vs {first_name}")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for all variants")
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions (median taken)")
    parser.add_argument("--size", type=int, default=1024, help="matmul M = K = N")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.reps < 1 or args.size < 1:
        parser.error("--threads, --reps and --size must be positive")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    n = args.size
    a, b = _rand_ring(n, n), _rand_ring(n, n)
    af, bf = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
    _check_equal(
        {
            "auto": ring_matmul(a, b),
            "limbs": ring_matmul(a, b, method="limbs"),
            "int64": torch.matmul(a, b),
        }
    )
    mm = _time_round_robin(
        {
            "float64 GEMM": lambda: af @ bf,
            "ring_matmul (auto)": lambda: ring_matmul(a, b),
            "ring_matmul (limbs)": lambda: ring_matmul(a, b, method="limbs"),
            "torch int64 matmul": lambda: a @ b,
        },
        args.reps,
    )

    x, w = _rand_ring(1, 64, 56, 56), _rand_ring(64, 64, 3, 3)
    xf, wf = torch.randn(1, 64, 56, 56, dtype=torch.float64), torch.randn(64, 64, 3, 3).double()
    _check_equal(
        {
            "auto": ring_conv2d(x, w, padding=1),
            "limbs": ring_conv2d(x, w, padding=1, method="limbs"),
            "int64": F.conv2d(x, w, padding=1),
        }
    )
    cv = _time_round_robin(
        {
            "float64 conv2d": lambda: F.conv2d(xf, wf, padding=1),
            "ring_conv2d (auto)": lambda: ring_conv2d(x, w, padding=1),
            "ring_conv2d (limbs)": lambda: ring_conv2d(x, w, padding=1, method="limbs"),
            "torch int64 conv2d": lambda: F.conv2d(x, w, padding=1),
        },
        args.reps,
    )

    rows: list[dict[str, Any]] = []
    for label, group, ref_name in (
        (f"matmul {n}x{n}x{n}", mm, "float64 GEMM"),
        ("conv 1x64x56x56, 64x64x3x3, pad 1", cv, "float64 conv2d"),
    ):
        ref = statistics.median(group[ref_name])
        for name, ts in group.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "case": label,
                    "variant": name,
                    "median_s": med,
                    "min_s": min(ts),
                    "ratio": med / ref,
                }
            )

    print(
        f"threads={args.threads} reps={args.reps} torch={torch.__version__}"
        f" cpu={torch.backends.cpu.get_cpu_capability()} load(1m)={load_before[0]:.2f}"
    )
    print(f"{'case':36s} {'variant':22s} {'median ms':>10s} {'min ms':>9s} {'ratio':>7s}")
    for r in rows:
        print(
            f"{r['case']:36s} {r['variant']:22s} {1e3 * r['median_s']:10.2f}"
            f" {1e3 * r['min_s']:9.2f} {r['ratio']:7.2f}"
        )

    def ratio(variant: str) -> float:
        return float(next(r["ratio"] for r in rows if r["variant"] == variant))

    ratios = {
        "ring matmul": ratio("ring_matmul (auto)"),
        "ring conv": ratio("ring_conv2d (auto)"),
        "ring matmul limbs": ratio("ring_matmul (limbs)"),
        "ring conv limbs": ratio("ring_conv2d (limbs)"),
        "torch int64 matmul": ratio("torch int64 matmul"),
        "torch int64 conv": ratio("torch int64 conv2d"),
    }
    for what, value in ratios.items():
        print(f"{what} ratio: {value:.3f}")
    from secinfer.ring.kernels import auto_choice, cache_path

    chosen = auto_choice("cpu")
    print(f"auto = matmul {chosen.matmul}, conv {chosen.conv} (measured for this machine, "
          f"cached in {cache_path()})")

    result: dict[str, object] = {
        "benchmark": "ring_matmul",
        "command": " ".join(
            ["benchmarks/ring_matmul.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "conditions": {
            "threads": args.threads,
            "reps": args.reps,
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "unix_time": time.time(),
        },
        "rows": rows,
        "ratios": ratios,
        "auto_choice": {"matmul": chosen.matmul, "conv": chosen.conv,
                        "seconds": chosen.seconds},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
