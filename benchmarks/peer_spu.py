"""secinfer vs SecretFlow SPU: secure 3-party inference, same weights and inputs, one run.

Workloads (``--model``):

* ``fmnist_cnn`` (default): the demo CNN (``src/secinfer/assets/fmnist_cnn.safetensors``) on the
  first N Fashion-MNIST test images, in batches (``--batch``, default 50);
* ``mlp``: an MLP 784-512-10 (ReLU), weights drawn once from a fixed seed (public benchmark
  values), on N Fashion-MNIST test images, one per request (batch 1);
* ``small_cnn``: conv3x3(3->16) - ReLU - max pool - conv3x3(16->32) - ReLU - max pool -
  flatten - linear(2048->10), seeded weights, on N seeded uniform [0, 1) 1x3x32x32 inputs, one
  per request.

The two seeded workloads are untrained: their "labels" are plaintext's predictions, so
accuracy there is agreement.

For each it measures, in one run:

1. plaintext PyTorch (the reference for accuracy, agreement and logit error);
2. secinfer: ``secinfer.serve.local.secure_eval`` (three server processes over mutual TLS, the
   user's client in this process) once per ``--frac-bits`` value and ``--drelu`` choice,
   compiled with calibration samples (the compiler picks the truncation: exact where local
   would risk a wrap) and the inputs' range (Fashion-MNIST's normalised pixel range; [0, 1]
   for ``small_cnn``), from which it proves the comparison window (``proven``);
   bytes summed over the three servers' accounting reports, per request, without the servers'
   one-time masking of the shared weights at start (``prepare_weights``, reported apart);
3. SPU (``.venv-spu``, made by ``make spu-venv``): ``benchmarks/spu_worker.py`` runs a JAX copy of
   the network with SPU's 3 parties, once per configuration PROTOCOL:FIELD:FRAC_BITS[:LINKS], in
   its own process; LINKS is ``brpc`` (three party processes over TCP on 127.0.0.1) or ``mem``
   (SPU's simulation: three threads, in-memory links). Bytes are the sum of the three parties'
   ``Link details: total send bytes`` lines that SPU's profiler logs, per run.

Seconds are per request (a batch of ``--batch`` for secinfer, SPU's whole input for SPU): with
more than one request, the median over the requests after the first (the warm-up); SPU's batch-1
workloads run the first input ``N`` times, compiled once; for ``fmnist_cnn`` both frameworks
are asked the same N images ``--requests`` times (default 3), warm against warm. Weights and
inputs go to the worker as safetensors and logits come back the same way (no pickle).

    .venv/bin/python benchmarks/peer_spu.py [--model fmnist_cnn|mlp|small_cnn] [--n 50] \
        [--batch 50] [--frac-bits 12,18] \
        [--configs ABY3:FM64:18:brpc,ABY3:FM64:18,ABY3:FM64:12,SEMI2K:FM64:18,SEMI2K:FM128:26]

Prints a table and ``<what> ratio: <number>`` lines (the headline pair is SPU ABY3/FM64, f=18,
three processes over brpc, over each secinfer row), and writes
``benchmarks/results/peer_spu.json`` (``peer_spu_<model>.json`` for the other workloads).
Without ``.venv-spu`` it says so and exits 0 without measuring anything (``make bench`` runs
every benchmark with the main venv only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.net.accounting import CostAccountant
from secinfer.serve.local import secure_eval

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "peer_spu.json"
SPU_PY = ROOT / ".venv-spu" / "bin" / "python"
WORKER = HERE / "spu_worker.py"
LINK_RE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), "
                     r"send actions (\d+), recv actions (\d+)")
HEADLINE = "ABY3:FM64:18:brpc"


def compare(logits: torch.Tensor, plain: torch.Tensor, labels: torch.Tensor) -> dict:
    logits = logits.double()
    if logits.shape != plain.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != plaintext {tuple(plain.shape)}")
    return {"accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "agreement": (logits.argmax(1) == plain.argmax(1)).double().mean().item(),
            "max_abs_logit_error": (logits - plain).abs().max().item()}


def run_spu(spec: str, data: Path, out: Path, timeout: float,
            extra: tuple[str, ...] = (), repeat: int = 1) -> tuple[torch.Tensor, dict]:
    """One worker process per configuration, so every ``Link details`` line in its log is ours
    (three per run). ``extra``: more worker flags (``benchmarks/transformer.py --spu`` passes
    ``--model``); ``repeat``: runs of the one compiled program."""
    cmd = [str(SPU_PY), str(WORKER), "--data", str(data), "--out", str(out), "--configs", spec,
           "--timeout", str(timeout), "--repeat", str(repeat), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=repeat * timeout + 120)
    process_s = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"SPU worker failed for {spec} (exit {proc.returncode}):\n{log[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    (info,) = manifest["runs"]
    links = [tuple(int(g) for g in m.groups()) for m in LINK_RE.finditer(log)]
    if len(links) != 3 * repeat:
        raise RuntimeError(f"expected 3 parties' link statistics per run in SPU's log "
                           f"({3 * repeat}), found {len(links)}")
    last = links[-3:]  # every run sends the same; the last run's three parties
    info.update(spu_version=manifest["spu_version"], process_seconds=process_s,
                bytes_sent=sum(s for s, _, _, _ in last),
                bytes_sent_per_party=[s for s, _, _, _ in last],
                send_actions_per_party=[a for _, _, a, _ in last])
    runs = info.get("run_seconds") or [info["seconds"]]
    info["seconds"] = statistics.median(runs[1:] if len(runs) > 1 else runs)
    return load_file(str(out / "logits.safetensors"))[info["key"]], info


# Sequential workloads, as the layer kinds spu_worker.py's ``seq`` model knows
MLP_LAYERS = ("flatten", "linear", "relu", "linear")
SMALL_CNN_LAYERS = ("conv", "relu", "pool", "conv", "relu", "pool", "flatten", "linear")


def _sequential(layers: tuple[str, ...], sizes: list[tuple[int, int]], seed: int) -> nn.Module:
    torch.manual_seed(seed)  # public benchmark weights, the same in every run
    it = iter(sizes)
    mods: list[nn.Module] = []
    for kind in layers:
        if kind == "conv":
            mods.append(nn.Conv2d(*next(it), 3, padding=1))
        elif kind == "linear":
            mods.append(nn.Linear(*next(it)))
        else:
            mods.append({"relu": nn.ReLU, "pool": lambda: nn.MaxPool2d(2),
                         "flatten": nn.Flatten}[kind]())
    return nn.Sequential(*mods).eval()


def workload(name: str, n: int) -> dict:
    """Model, input shape, inputs, labels, calibration samples and SPU worker flags."""
    if name == "fmnist_cnn":
        images, labels = fashion_mnist.load("test", limit=n)
        return {"model": zoo.pretrained("fmnist_cnn"), "shape": (1, 28, 28), "inputs": images,
                "labels": labels, "calibration": fashion_mnist.load("train", limit=64)[0],
                "range": fashion_mnist.INPUT_RANGE, "spu": (), "spu_input": images,
                "inputs_name": "Fashion-MNIST test images"}
    if name == "mlp":
        model = _sequential(MLP_LAYERS, [(784, 512), (512, 10)], seed=17)
        images = fashion_mnist.load("test", limit=n)[0]
        cal = fashion_mnist.load("train", limit=64)[0]
        with torch.no_grad():
            labels = model(images).argmax(1)  # untrained weights: agreement is what counts
        return {"model": model, "shape": (1, 28, 28), "inputs": images, "labels": labels,
                "calibration": cal, "range": fashion_mnist.INPUT_RANGE,
                "spu": ("--model", "seq", "--layers", ",".join(MLP_LAYERS)),
                "spu_input": images[:1], "inputs_name": "Fashion-MNIST test images"}
    if name == "small_cnn":
        model = _sequential(SMALL_CNN_LAYERS, [(3, 16), (16, 32), (2048, 10)], seed=18)
        torch.manual_seed(19)
        images = torch.rand(n, 3, 32, 32)
        cal = torch.rand(64, 3, 32, 32)
        with torch.no_grad():
            labels = model(images).argmax(1)
        return {"model": model, "shape": (3, 32, 32), "inputs": images, "labels": labels,
                "calibration": cal, "range": (0.0, 1.0),
                "spu": ("--model", "seq", "--layers", ",".join(SMALL_CNN_LAYERS)),
                "spu_input": images[:1], "inputs_name": "uniform random 3x32x32 inputs"}
    raise SystemExit(f"unknown --model {name!r}")


def secinfer_measure(w: dict, frac_bits: int, batch: int, timeout: float,
                     narrow_drelu: bool = True) -> dict:
    """One secinfer run of workload ``w`` (three server processes over TLS): seconds per
    request (the median after the first when there are several), bytes per request without
    the servers' one-time weight masking (``prepare_weights``: SPU's weight sharing is excluded
    likewise), accuracy, agreement and max error against plaintext."""
    marks: list[float] = []  # cumulative seconds after each request

    def mark(_i: int, _n: int, t: float) -> None:
        marks.append(t)

    res = secure_eval(w["model"], w["shape"], w["inputs"], w["labels"], batch=batch,
                      frac_bits=frac_bits, timeout=timeout, calibration=w["calibration"],
                      progress=mark, input_range=w["range"], narrow_drelu=narrow_drelu)
    per = [marks[0], *(b - a for a, b in itertools.pairwise(marks))]
    servers = [res.costs[p]["servers"] for p in range(3)]
    total = sum(int(c[CostAccountant.TOTAL]["bytes_sent"]) for c in servers)
    once = sum(int(c.get("prepare_weights", {}).get("bytes_sent", 0)) for c in servers)
    user = res.costs[0].get("user", {}).get(CostAccountant.TOTAL, {})
    return {"seconds": statistics.median(per[1:] if len(per) > 1 else per),
            "request_seconds": per, "bytes_sent": (total - once) // len(per),
            "weight_preparation_bytes": once,
            "user_bytes_from_p0": int(user.get("bytes_sent", 0)) // len(per),
            "accuracy": res.secure_accuracy, "agreement": res.agreement,
            "max_abs_logit_error": res.max_abs_logit_error, "batch": batch}


def spu_data(w: dict, folder: Path) -> Path:
    """The worker's input file for workload ``w``: its weights and SPU's input."""
    data = folder / "data.safetensors"
    tensors = {k: v.detach().float().contiguous() for k, v in w["model"].state_dict().items()}
    tensors["images"] = w["spu_input"].float().contiguous()
    save_file(tensors, str(data))
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist_cnn", choices=("fmnist_cnn", "mlp", "small_cnn"))
    ap.add_argument("--n", type=int, default=None,
                    help="inputs (default 50 for fmnist_cnn, 6 for the batch-1 workloads)")
    ap.add_argument("--batch", type=int, default=None,
                    help="secinfer batch (default 50 for fmnist_cnn, else 1); SPU runs the "
                         "whole input at once")
    ap.add_argument("--frac-bits", default="12",
                    help="secinfer fixed-point fraction bits, comma-separated: one row each")
    ap.add_argument("--drelu", default="proven",
                    help="secinfer comparisons, comma-separated, one row each: 'proven' (the "
                         "window the stated input range proves, the compiler's default) or "
                         "'full' (all 63 bits)")
    ap.add_argument("--configs",
                    default="ABY3:FM64:18:brpc,ABY3:FM64:18,ABY3:FM64:12,SEMI2K:FM64:18,"
                            "SEMI2K:FM128:26",
                    help="SPU PROTOCOL:FIELD:FRAC_BITS[:brpc|:mem] list (SPU's defaults: 18 "
                         "bits on FM64, 26 on FM128; 12 is secinfer's default; mem if omitted)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per secure run")
    ap.add_argument("--requests", type=int, default=3,
                    help="fmnist_cnn: times the same N inputs are asked, by both frameworks "
                         "(the median after the first, warm against warm; default 3)")
    args = ap.parse_args()
    single = args.model != "fmnist_cnn"
    n = args.n if args.n is not None else (6 if single else 50)
    batch = args.batch if args.batch is not None else (1 if single else 50)
    fracs = [int(f) for f in args.frac_bits.split(",") if f]
    if n <= 0 or batch <= 0 or not fracs or args.requests <= 0:
        raise SystemExit(f"--n and --batch must be positive and --frac-bits non-empty, got "
                         f"{n}, {batch}, {args.frac_bits!r}")
    configs = args.configs.split(",")
    if not SPU_PY.is_file():
        print(f"SPU not measured: {SPU_PY} is missing; create it with `make spu-venv`")
        return 0

    w = workload(args.model, n)
    model, images, labels = w["model"], w["inputs"], w["labels"]
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = model(images).double()
    plain_s = time.perf_counter() - t0

    windows = [d for d in args.drelu.split(",") if d]
    if not windows or any(d not in ("proven", "full") for d in windows):
        raise SystemExit(f"--drelu {args.drelu!r}: expected 'proven', 'full' or both")
    repeat = n if single else args.requests
    # the batched workload asks the same inputs `repeat` times, as SPU runs its program
    asked = w if single else {**w, "inputs": images.repeat(repeat, 1, 1, 1),
                              "labels": labels.repeat(repeat)}
    rows = [{"framework": "secinfer", "config": f"3PC helper, Z_2^64, f={f}, {window}",
             **secinfer_measure(asked, f, batch, args.timeout, window == "proven")}
            for f, window in itertools.product(fracs, windows)]

    spu_n = len(w["spu_input"])
    spu_plain = plain[:spu_n]
    with tempfile.TemporaryDirectory(prefix="peer-spu-") as tmp:
        data = spu_data(w, Path(tmp))
        for spec in configs:
            logits, info = run_spu(spec, data, Path(tmp) / spec.replace(":", "_"), args.timeout,
                                   w["spu"], repeat)
            rows.append({"framework": "spu", "config": spec, "batch": spu_n, **info,
                         **compare(logits, spu_plain, labels[:spu_n])})

    print(f"{args.model} on {n} {w['inputs_name']}; plaintext accuracy "
          f"{100 * (plain.argmax(1) == labels).double().mean().item():.1f}%, "
          f"plaintext PyTorch {1000 * plain_s:.1f} ms for all {n}")
    print("seconds and MB per request (median after the first request when there are several)")
    head = (f"{'framework':<9} {'config':<36} {'batch':>5} {'seconds':>8} {'MB sent':>9} "
            f"{'acc %':>6} {'agree %':>7} {'max |err|':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['framework']:<9} {r['config']:<36} {r['batch']:>5} {r['seconds']:>8.3f} "
              f"{r['bytes_sent'] / 1e6:>9.3f} {100 * r['accuracy']:>6.1f} "
              f"{100 * r['agreement']:>7.1f} {r['max_abs_logit_error']:>10.2e}")
    ours = [r for r in rows if r["framework"] == "secinfer"]
    spu_rows = {r["config"]: r for r in rows if r["framework"] == "spu"}
    head_row = spu_rows.get(HEADLINE) or next(iter(spu_rows.values()))
    fastest = min(spu_rows.values(), key=lambda r: r["seconds"])
    for ref in ours:
        which = ", ".join(ref["config"].split(", ")[-2:])
        tag = "" if len(ours) == 1 else f" (secinfer {which})"
        for spec, r in spu_rows.items():
            print(f"spu {spec}/secinfer latency ratio{tag}: {r['seconds'] / ref['seconds']:.3f}")
            print(f"spu {spec}/secinfer bytes ratio{tag}: "
                  f"{r['bytes_sent'] / ref['bytes_sent']:.3f}")
            print(f"spu {spec}/secinfer max error ratio{tag}: "
                  f"{r['max_abs_logit_error'] / max(ref['max_abs_logit_error'], 1e-30):.3f}")
        print(f"spu/secinfer latency ratio{tag}: {head_row['seconds'] / ref['seconds']:.3f}")
        print(f"spu/secinfer bytes ratio{tag}: {head_row['bytes_sent'] / ref['bytes_sent']:.3f}")
        print(f"fastest spu ({fastest['config']})/secinfer latency ratio{tag}: "
              f"{fastest['seconds'] / ref['seconds']:.3f}")
    out = RESULTS if args.model == "fmnist_cnn" else RESULTS.with_name(
        f"peer_spu_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "n": n, "batch": batch, "requests": repeat,
        "plaintext_seconds": plain_s,
        "plaintext_accuracy": (plain.argmax(1) == labels).double().mean().item(),
        "headline_spu_config": head_row["config"],
        "notes": "secinfer: 3 processes over mutual TLS, time of Client.predict calls, compiled "
                 "with calibration samples; SPU :brpc: 3 processes over plain TCP, :mem: 3 "
                 "threads with in-memory links; SPU time: input sharing to output "
                 "reconstruction (brpc: slowest party after a barrier); seconds and bytes per "
                 "request, median after the first request; compile time excluded for both",
        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
