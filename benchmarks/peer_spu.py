"""secinfer vs SecretFlow SPU: secure 3-party inference of the demo CNN on the same images.

One command measures, in one run, on the same N Fashion-MNIST test images and the same trained
weights (``fmnist_cnn``, ``src/secinfer/assets/fmnist_cnn.safetensors``):

1. plaintext PyTorch (the reference for accuracy, agreement and logit error);
2. secinfer: ``secinfer.serve.local.secure_eval`` (three server processes over mutual TLS, the
   user's client in this process), bytes summed over the three servers' accounting reports;
3. SPU (``.venv-spu``, made by ``make spu-venv``): ``benchmarks/spu_worker.py`` runs a JAX copy of
   the network with SPU's 3 parties, once per configuration PROTOCOL:FIELD:FRAC_BITS[:LINKS], in
   its own process; LINKS is ``brpc`` (three party processes over TCP on 127.0.0.1) or ``mem``
   (SPU's simulation: three threads, in-memory links). Bytes are the sum of the three parties'
   ``Link details: total send bytes`` lines that SPU's profiler logs.

Weights and images go to the worker as safetensors and logits come back the same way (no pickle).

    .venv/bin/python benchmarks/peer_spu.py [--n 50] [--batch 50] \
        [--configs ABY3:FM64:18:brpc,ABY3:FM64:18,ABY3:FM64:12,SEMI2K:FM64:18,SEMI2K:FM128:26]

Prints a table and ``<what> ratio: <number>`` lines (the headline pair is SPU ABY3/FM64, f=18,
three processes over brpc, over secinfer), and writes benchmarks/results/peer_spu.json. Without
``.venv-spu`` it says so and exits 0 without measuring anything (``make bench`` runs every
benchmark with the main venv only).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
            extra: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
    """One worker process per configuration, so every ``Link details`` line in its log is ours.
    ``extra``: more worker flags (``benchmarks/transformer.py --spu`` passes ``--model``)."""
    cmd = [str(SPU_PY), str(WORKER), "--data", str(data), "--out", str(out), "--configs", spec,
           "--timeout", str(timeout), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 120)
    process_s = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"SPU worker failed for {spec} (exit {proc.returncode}):\n{log[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    (info,) = manifest["runs"]
    links = [tuple(int(g) for g in m.groups()) for m in LINK_RE.finditer(log)]
    if len(links) != 3:
        raise RuntimeError(f"expected 3 parties' link statistics in SPU's log, found {len(links)}")
    info.update(spu_version=manifest["spu_version"], process_seconds=process_s,
                bytes_sent=sum(s for s, _, _, _ in links),
                bytes_sent_per_party=[s for s, _, _, _ in links],
                send_actions_per_party=[a for _, _, a, _ in links])
    return load_file(str(out / "logits.safetensors"))[info["key"]], info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="test images (the first N)")
    ap.add_argument("--batch", type=int, default=50, help="secinfer batch (SPU runs all N at once)")
    ap.add_argument("--frac-bits", type=int, default=12, help="secinfer fixed-point fraction bits")
    ap.add_argument("--configs",
                    default="ABY3:FM64:18:brpc,ABY3:FM64:18,ABY3:FM64:12,SEMI2K:FM64:18,"
                            "SEMI2K:FM128:26",
                    help="SPU PROTOCOL:FIELD:FRAC_BITS[:brpc|:mem] list (SPU's defaults: 18 "
                         "bits on FM64, 26 on FM128; 12 is secinfer's default; mem if omitted)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per secure run")
    args = ap.parse_args()
    if args.n <= 0 or args.batch <= 0:
        raise SystemExit(f"--n and --batch must be positive, got {args.n} and {args.batch}")
    configs = args.configs.split(",")
    if not SPU_PY.is_file():
        print(f"SPU not measured: {SPU_PY} is missing; create it with `make spu-venv`")
        return 0

    model = zoo.pretrained("fmnist_cnn")
    images, labels = fashion_mnist.load("test", limit=args.n)
    t0 = time.perf_counter()
    with torch.no_grad():
        plain = model(images).double()
    plain_s = time.perf_counter() - t0

    res = secure_eval(model, (1, 28, 28), images, labels, batch=args.batch,
                      frac_bits=args.frac_bits, timeout=args.timeout)
    total = CostAccountant.TOTAL
    sec_bytes = sum(int(res.costs[p]["servers"][total]["bytes_sent"]) for p in range(3))
    user_bytes = int(res.costs[0].get("user", {}).get(total, {}).get("bytes_sent", 0))
    rows = [{"framework": "secinfer", "config": f"3PC helper, Z_2^64, f={args.frac_bits}",
             "seconds": res.seconds, "bytes_sent": sec_bytes, "user_bytes_from_p0": user_bytes,
             "accuracy": res.secure_accuracy, "agreement": res.agreement,
             "max_abs_logit_error": res.max_abs_logit_error, "batch": args.batch}]

    with tempfile.TemporaryDirectory(prefix="peer-spu-") as tmp:
        data = Path(tmp) / "data.safetensors"
        tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
        tensors["images"] = images.float().contiguous()
        save_file(tensors, str(data))
        for spec in configs:
            logits, info = run_spu(spec, data, Path(tmp) / spec.replace(":", "_"), args.timeout)
            rows.append({"framework": "spu", "config": spec, "batch": args.n, **info,
                         **compare(logits, plain, labels)})

    print(f"fmnist_cnn on {args.n} Fashion-MNIST test images; plaintext accuracy "
          f"{100 * (plain.argmax(1) == labels).double().mean().item():.1f}%, "
          f"plaintext PyTorch {1000 * plain_s:.1f} ms")
    head = (f"{'framework':<9} {'config':<30} {'batch':>5} {'seconds':>8} {'MB sent':>9} "
            f"{'acc %':>6} {'agree %':>7} {'max |err|':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['framework']:<9} {r['config']:<30} {r['batch']:>5} {r['seconds']:>8.2f} "
              f"{r['bytes_sent'] / 1e6:>9.2f} {100 * r['accuracy']:>6.1f} "
              f"{100 * r['agreement']:>7.1f} {r['max_abs_logit_error']:>10.2e}")
    ref = rows[0]
    spu_rows = {r["config"]: r for r in rows[1:]}
    for spec, r in spu_rows.items():
        print(f"spu {spec}/secinfer latency ratio: {r['seconds'] / ref['seconds']:.3f}")
        print(f"spu {spec}/secinfer bytes ratio: {r['bytes_sent'] / ref['bytes_sent']:.3f}")
    head_row = spu_rows.get(HEADLINE) or next(iter(spu_rows.values()))
    print(f"spu/secinfer latency ratio: {head_row['seconds'] / ref['seconds']:.3f}")
    print(f"spu/secinfer bytes ratio: {head_row['bytes_sent'] / ref['bytes_sent']:.3f}")
    fastest = min(spu_rows.values(), key=lambda r: r["seconds"])
    print(f"fastest spu ({fastest['config']})/secinfer latency ratio: "
          f"{fastest['seconds'] / ref['seconds']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "model": "fmnist_cnn", "n": args.n, "plaintext_seconds": plain_s,
        "plaintext_accuracy": res.plain_accuracy, "headline_spu_config": head_row["config"],
        "notes": "secinfer: 3 processes over mutual TLS, time of Client.predict calls; SPU "
                 ":brpc: 3 processes over plain TCP, :mem: 3 threads with in-memory links; SPU "
                 "time: input sharing to output reconstruction (brpc: slowest party after a "
                 "barrier); compile time excluded for both",
        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
