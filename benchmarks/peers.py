"""secinfer beside SecretFlow SPU on issue 17's three workloads, interleaved in one command.

Workloads (the same weights and inputs for both systems):

* ``mlp``: MLP 784-512-10 on Fashion-MNIST test images, batch 1 (``peer_spu.workload``);
* ``small_cnn``: conv16 - pool - conv32 - pool - fc on 1x3x32x32 inputs, batch 1;
* ``bert_layer``: one BERT layer (hidden 384, 12 heads, FFN 1536, sequence 128) on seeded
  random weights and input (``transformer.spu_layer_eval``: secinfer's ``layer`` row, exact
  DReLU, f = 16), against SPU with its default approximations (``spu``) and with PUMA's
  (``spu+puma``: exp clipped below -14, PUMA's piecewise GELU form, one reciprocal per softmax
  row broadcast; ``spu_worker.py --model bert_layer_puma``).

Each round runs, per workload, secinfer then SPU (A B A B ...), so a machine shared with other
work slows both alike; the figure of each system is the median over rounds of its per-round
figure. secinfer: three server processes over mutual TLS (CNNs: compiled with calibration
samples and the inputs' range, so with the proven comparison window, at ``--frac-bits``);
SPU 0.9.5: ``--spu-config`` (default ABY3 on FM64 at 18 fractional bits, three processes over
plain TCP). CNN seconds and bytes are per request, the median after a warm-up request, the
servers' one-time weight masking excluded as SPU's weight sharing is; the BERT layer's are
the best of two runs per round, weight sharing excluded likewise. Error: max |secure -
float64 plaintext|.

    make spu-venv
    .venv/bin/python benchmarks/peers.py [--rounds 2] [--n 6] [--frac-bits 18] \
        [--workloads mlp,small_cnn,bert_layer]

Prints a table, and per workload ``<workload> spu/secinfer latency ratio:``, ``bytes ratio:``
and ``error ratio:`` lines (``bert_layer puma ...`` for the PUMA variant; SPU over secinfer:
above 1 means secinfer is faster, sends less, errs less); writes
``benchmarks/results/peers.json``. Without ``.venv-spu`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from peer_spu import SPU_PY, compare, run_spu, secinfer_measure, spu_data, workload

RESULTS = Path(__file__).resolve().parent / "results" / "peers.json"
WORKLOADS = ("mlp", "small_cnn", "bert_layer")


def secinfer_cnn(w: dict, frac_bits: int, timeout: float) -> dict:
    got = secinfer_measure(w, frac_bits, 1, timeout)
    return {"seconds": got["seconds"], "bytes": got["bytes_sent"],
            "error": got["max_abs_logit_error"], "agreement": got["agreement"]}


def spu_cnn(w: dict, spec: str, timeout: float, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="peers-spu-") as tmp:
        logits, info = run_spu(spec, spu_data(w, Path(tmp)), Path(tmp) / "run", timeout,
                               w["spu"], repeat=n)
    with torch.no_grad():
        plain = w["model"](w["spu_input"]).double()
    got = compare(logits, plain, w["labels"][: len(plain)])
    return {"seconds": info["seconds"], "bytes": info["bytes_sent"],
            "error": got["max_abs_logit_error"], "agreement": got["agreement"]}


def bert_round(spec: str, timeout: float) -> tuple[dict, dict, dict]:
    """secinfer, then SPU with its default approximations, then SPU with PUMA's."""
    from transformer import spu_layer_eval

    r = spu_layer_eval(128, 2, 0, [spec], timeout, ("bert_layer", "bert_layer_puma"))
    ours, default, puma = ({"seconds": x["seconds"], "bytes": x["bytes"],
                            "error": x["max_abs_err"]} for x in (r["secinfer"], *r["spu"]))
    return ours, default, puma


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds per workload")
    ap.add_argument("--n", type=int, default=6, help="CNN requests per round (first: warm-up)")
    ap.add_argument("--frac-bits", type=int, default=18, help="secinfer's CNN fraction bits")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--spu-config", default="ABY3:FM64:18:brpc")
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    names = [x for x in args.workloads.split(",") if x]
    if args.rounds < 1 or args.n < 2 or not names or any(x not in WORKLOADS for x in names):
        raise SystemExit(f"need --rounds >= 1, --n >= 2 and --workloads among {WORKLOADS}")
    if not SPU_PY.is_file():
        print(f"SPU not measured: {SPU_PY} is missing; create it with `make spu-venv`")
        return 0
    runs: dict[str, dict[str, list[dict]]] = {x: {"secinfer": [], "spu": []} for x in names}
    if "bert_layer" in runs:
        runs["bert_layer"]["spu+puma"] = []
    for r in range(args.rounds):
        for name in names:
            if name == "bert_layer":
                ours, theirs, puma = bert_round(args.spu_config, args.timeout)
                runs[name]["spu+puma"].append(puma)
            else:
                w = workload(name, args.n)
                ours = secinfer_cnn(w, args.frac_bits, args.timeout)
                theirs = spu_cnn(w, args.spu_config, args.timeout, args.n)
            runs[name]["secinfer"].append(ours)
            runs[name]["spu"].append(theirs)
            print(f"round {r + 1}/{args.rounds} {name}: secinfer {ours['seconds']:.3f} s, "
                  f"spu {theirs['seconds']:.3f} s", flush=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    summary = {}
    head = f"{'workload':<11} {'system':<9} {'s / request':>12} {'MB / request':>13} {'max err':>9}"
    print(head)
    print("-" * len(head))
    for name in names:
        got = {who: {k: med(rows, k) for k in ("seconds", "bytes", "error")}
               for who, rows in runs[name].items()}
        summary[name] = got
        for who, g in got.items():
            print(f"{name:<11} {who:<9} {g['seconds']:>12.3f} {g['bytes'] / 1e6:>13.3f} "
                  f"{g['error']:>9.2e}")
    for name, got in summary.items():
        s = got["secinfer"]
        for who in [k for k in got if k != "secinfer"]:
            p, what = got[who], name + (" puma" if who == "spu+puma" else "")
            print(f"{what} spu/secinfer latency ratio: {p['seconds'] / s['seconds']:.3f}")
            print(f"{what} spu/secinfer bytes ratio: {p['bytes'] / s['bytes']:.3f}")
            print(f"{what} spu/secinfer error ratio: {p['error'] / max(s['error'], 1e-30):.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rounds": args.rounds, "n": args.n, "frac_bits": args.frac_bits,
        "spu_config": args.spu_config, "summary": summary, "runs": runs,
        "notes": "per round: secinfer then SPU on each workload; figures: median over rounds; "
                 "CNNs per request (median after a warm-up), BERT layer best of 2 per round; "
                 "weight sharing excluded for both; spu+puma: SPU with PUMA's approximations"},
        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
