"""Secure 3-party CNN inference vs plaintext PyTorch, in one run.

Three party processes over mutual TLS on this machine run each model's compiled plan on a
random batch-1 input; plaintext PyTorch runs the same weights in this process. SecretFlow SPU is
compared when ``import spu`` works (optional extra); otherwise its column says so.

    .venv/bin/python benchmarks/cnn.py [--models small,resnet18,resnet50] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import SPU_NOTE, spu_available
from secinfer.models import zoo
from secinfer.models.bundle import compile_model
from secinfer.net import local_cluster

RESULTS = Path(__file__).resolve().parent / "results" / "cnn.json"

MODELS = {
    "small": (lambda: zoo.vgg(11, 10), (3, 32, 32), "VGG-11 style (CIFAR shape)"),
    "resnet18": (lambda: zoo.resnet18(10), (3, 32, 32), "ResNet18, CIFAR stem"),
    "resnet50": (lambda: zoo.resnet50(1000), (3, 224, 224), "ResNet50, ImageNet stem"),
}


def plaintext_seconds(model: torch.nn.Module, shape: tuple[int, ...], reps: int) -> float:
    x = torch.randn(1, *shape)
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(max(reps, 3)):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def secure_run(model: torch.nn.Module, shape: tuple[int, ...], reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        compile_model(model, shape, Path(tmp) / "b")
        with local_cluster(roles=["server", "server", "helper"], workdir=tmp,
                           timeout=600) as cluster:
            out = cluster.run("secinfer.serve.programs:plan_latency",
                              kwargs={"bundle_root": str(Path(tmp) / "b"), "reps": reps},
                              timeout=3600)
    return {
        "seconds": statistics.median(out[0]["seconds"].tolist()),
        "bytes": sum(int(out[p]["bytes_sent"]) for p in out),
        "rounds": int(out[1]["rounds"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="small,resnet18,resnet50")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for key in args.models.split(","):
        factory, shape, label = MODELS[key]
        torch.manual_seed(0)
        model = factory().eval()
        plain = plaintext_seconds(model, shape, args.reps)
        sec = secure_run(model, shape, args.reps)
        rows.append({"model": key, "label": label, "input": [1, *shape],
                     "plaintext_s": plain, "secure_s": sec["seconds"],
                     "secure_bytes": sec["bytes"], "secure_rounds": sec["rounds"],
                     "secure_over_plaintext": sec["seconds"] / plain,
                     "spu": "installed" if spu_available() else "not in this venv"})
    print(f"{'model':<34} {'input':<16} {'plain ms':>9} {'secure s':>9} {'MB':>10} "
          f"{'rounds':>7} {'ratio':>8}")
    for r in rows:
        print(f"{r['label']:<34} {'x'.join(map(str, r['input'])):<16} "
              f"{1000 * r['plaintext_s']:>9.2f} {r['secure_s']:>9.2f} "
              f"{r['secure_bytes'] / 1e6:>10.1f} {r['secure_rounds']:>7} "
              f"{r['secure_over_plaintext']:>8.0f}")
    for r in rows:
        print(f"{r['model']} secure/plaintext latency ratio: {r['secure_over_plaintext']:.1f}")
    if not spu_available():
        print(SPU_NOTE)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
