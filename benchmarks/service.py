"""The service under load: 8 concurrent users x 25 requests against one server set, with and
without dynamic batching, interleaved in one run.

Two server sets (three OS processes each, mutual TLS on loopback) serve the same compiled
``fmnist_cnn`` bundle: one with ``[service] batching = true`` (requests of concurrent users
share one secure forward pass, ``batch_wait_ms`` of waiting for stragglers), one with
``batching = false`` (one user's request per step, round-robin). Each round runs the same load
against both (order alternating), every user in its own thread with its own ``Client`` session.
Each request is one Fashion-MNIST test image; every answer is checked against plaintext PyTorch.
The reference is plaintext PyTorch on the same images in this process.

    .venv/bin/python benchmarks/service.py [--users 8] [--requests 25] [--rounds 2] [--model M]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.net import local_cluster
from secinfer.serve.client import Client

LOG_LEVEL = "WARNING"
RESULTS = Path(__file__).resolve().parent / "results" / "service.json"


def _start(stack: ExitStack, workdir: Path, dirs: list[Path], batching: bool):
    cluster = stack.enter_context(local_cluster(
        roles=["server", "server", "helper", "user"], workdir=workdir, timeout=60,
        connect_timeout=20, service={"max_users": 16, "batching": batching,
                                     "batch_wait_ms": 2}))
    procs = [cluster.spawn(i, ["--log-level", LOG_LEVEL, "serve", "--topology",
                               str(cluster.topology_path), "--id", str(i), "--bundle",
                               str(dirs[i])])
             for i in range(3)]
    with Client(cluster.topology, admit_timeout=120) as c:  # waits until all three serve
        c.predict(torch.zeros(1, 1, 28, 28))
    return cluster, procs


def _load(cluster, x: torch.Tensor, plain: torch.Tensor, users: int, requests: int) -> dict:
    lat: list[float] = []
    wrong = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    topo = cluster.topology
    start = threading.Barrier(users + 1)

    def user(u: int) -> None:
        try:
            with Client(topo, admit_timeout=120) as c:
                start.wait()
                for r in range(requests):
                    i = (u * requests + r) % len(x)
                    t0 = time.perf_counter()
                    out = c.predict(x[i : i + 1])
                    dt = time.perf_counter() - t0
                    with lock:
                        lat.append(dt)
                        wrong[0] += int((out - plain[i : i + 1]).abs().max() >= 0.05)
        except BaseException as e:  # noqa: BLE001 - counted and reported
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} users failed: {errors[0]!r}")
    return {"latencies": lat, "wall_s": wall, "wrong": wrong[0]}


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="fmnist_cnn", help="zoo model (1x28x28 input)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = zoo.pretrained(args.model) if zoo.asset_path(args.model).is_file() else \
        zoo.build(args.model).eval()  # random weights: the cost does not depend on them
    x, _ = fashion_mnist.load("test", limit=args.users * args.requests)
    with torch.no_grad():
        plain = model(x).double()
    runs: dict[str, list[dict]] = {"batching": [], "no batching": []}
    plain_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="secinfer-service-") as tmp, ExitStack() as stack:
        dirs = compile_model(model, (1, 28, 28), Path(tmp) / "b")
        sets = {"batching": _start(stack, Path(tmp) / "on", dirs, True)[0],
                "no batching": _start(stack, Path(tmp) / "off", dirs, False)[0]}
        for r in range(args.rounds):
            order = list(sets) if r % 2 == 0 else list(sets)[::-1]
            for name in order:
                runs[name].append(_load(sets[name], x, plain, args.users, args.requests))
                t0 = time.perf_counter()
                with torch.no_grad():
                    for i in range(len(x)):
                        model(x[i : i + 1])
                plain_s.append((time.perf_counter() - t0) / len(x))
    n = args.users * args.requests
    rows = {}
    for name, rs in runs.items():
        lat = [v for run in rs for v in run["latencies"]]
        rows[name] = {
            "requests": n * len(rs), "wrong": sum(run["wrong"] for run in rs),
            "latency_median_s": statistics.median(lat), "latency_p95_s": _pct(lat, 0.95),
            "throughput_rps": statistics.median(n / run["wall_s"] for run in rs),
        }
    plain_med = statistics.median(plain_s)
    print(f"{args.users} users x {args.requests} requests (1 image each), {args.rounds} rounds, "
          f"{args.model}, 3 server processes over TLS")
    print(f"{'config':<14} {'requests':>8} {'wrong':>6} {'median ms':>10} {'p95 ms':>8} "
          f"{'req/s':>7}")
    for name, row in rows.items():
        print(f"{name:<14} {row['requests']:>8} {row['wrong']:>6} "
              f"{1000 * row['latency_median_s']:>10.1f} {1000 * row['latency_p95_s']:>8.1f} "
              f"{row['throughput_rps']:>7.2f}")
    print(f"{'plaintext':<14} {'':>8} {'':>6} {1000 * plain_med:>10.3f}")
    on, off = rows["batching"], rows["no batching"]
    ratios = {
        "batching throughput": on["throughput_rps"] / off["throughput_rps"],
        "batching median latency": on["latency_median_s"] / off["latency_median_s"],
        "secure vs plaintext latency": on["latency_median_s"] / plain_med,
    }
    for what, v in ratios.items():
        print(f"{what} ratio: {v:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = RESULTS.with_name(f"service_{args.model}.json") if args.model != "fmnist_cnn" \
        else RESULTS
    out.write_text(json.dumps({"model": args.model, "users": args.users, "requests": args.requests,
                                   "rounds": args.rounds, "rows": rows,
                                   "plaintext_latency_s": plain_med, "ratios": ratios},
                                  indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
