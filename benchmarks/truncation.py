"""Local (SecureML) vs exact (wrap-bit) truncation on the transformer path, in one run.

Two questions, both on all-MiniLM-L6-v2 with real weights at 128 tokens, the three parties as
threads of this process over the in-memory transport (one torch thread each):

1. *Risk*: how often would the free local truncation corrupt an article? INSECURE debug mode
   opens every truncated value between P0 and P1 and adds |x| / 2^64 (the probability that
   the local protocol gets that element wrong by ~2^(64 - f)) per op; the sum is the expected
   number of corrupted elements per article. One is enough to wreck a LayerNorm row.
2. *Cost*: seconds, bytes and rounds of one BERT layer (random weights) and of the whole
   MiniLM with pooling, local vs exact truncation, same weights and input.
3. *The CNN path* (f = 12, local truncation by default): the same risk per Fashion-MNIST test
   image for the demo CNN and the ResNet-style CNN (``--cnn-images`` real test images).

    .venv/bin/python benchmarks/truncation.py [--articles 2] [--cnn-images 20]

Writes ``benchmarks/results/truncation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from secinfer.net import run_in_memory
from secinfer.transformer.programs import encoder_latency

RESULTS = Path(__file__).resolve().parent / "results" / "truncation.json"


def _bbc_texts(n: int) -> list[str]:
    from secinfer.seclmm.tasks import load_bbc

    data = load_bbc()
    return [data.texts[i] for i in range(n)]


def risk(texts: list[str]) -> dict:
    out = run_in_memory(3, encoder_latency, timeout=3600, weights="minilm", texts=texts,
                        pool=True, drelu_high_bits=32, truncation="local",
                        debug_truncation_risk=True)[0]
    per_op = {k.split("/", 1)[1]: float(v) / len(texts) for k, v in out.items()
              if k.startswith("risk/")}
    return {"articles": len(texts), "per_article_by_op": per_op,
            "per_article": sum(per_op.values())}


def _cnn_risk_program(session, bundle_root: str, images: torch.Tensor) -> dict[str, float]:
    from secinfer.models.bundle import load_bundle
    from secinfer.models.secure import SecureModel
    from secinfer.mpc import MPCConfig, MPCEngine

    torch.set_num_threads(1)
    pid = session.party_id
    plan, shares, _ = load_bundle(f"{bundle_root}/party{pid}", expect_party=pid)
    engine = MPCEngine(session, MPCConfig(frac_bits=plan.frac_bits, debug_reveal_insecure=True))
    model = SecureModel(engine, plan, shares)
    x = engine.share_input(images if pid == 0 else None, 0, tuple(images.shape))
    model.forward(x)
    return engine.debug_truncation_risk


def cnn_risk(names: list[str], n_images: int) -> dict:
    import logging
    import tempfile

    from secinfer.data import fashion_mnist
    from secinfer.models import zoo
    from secinfer.models.bundle import compile_model

    logging.getLogger("secinfer").setLevel(logging.ERROR)  # debug mode logs every op
    images, _ = fashion_mnist.load("test", limit=n_images)
    out = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            compile_model(zoo.pretrained(name), tuple(images.shape[1:]), f"{tmp}/b")
            per_op = run_in_memory(3, _cnn_risk_program, f"{tmp}/b", images, timeout=3600)[0]
        out[name] = {"images": n_images, "per_image": sum(per_op.values()) / n_images,
                     "worst_op": max(per_op, key=per_op.get) if per_op else None}
    return out


def cost(row: str, texts: list[str], truncation: str) -> dict:
    kw = ({"weights": "minilm", "texts": texts, "pool": True} if row == "minilm"
          else {"weights": "random", "weight_seed": 1, "input_seed": 2})
    out = run_in_memory(3, encoder_latency, timeout=3600, drelu_high_bits=32,
                        truncation=truncation, reps=1, **kw)
    return {"seconds": float(out[0]["seconds"].min()),
            "bytes": sum(int(o["bytes_sent"]) for o in out),
            "rounds": max(int(o["rounds"]) for o in out),
            "output": out[1]["output"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--articles", type=int, default=2, help="BBC articles for the risk part")
    ap.add_argument("--cnn-images", type=int, default=20,
                    help="Fashion-MNIST test images for the CNN risk part")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    texts = _bbc_texts(args.articles)
    r = risk(texts)
    print(f"local truncation, expected corrupted elements per MiniLM article "
          f"({r['articles']} BBC articles, 128 tokens):")
    for op, v in sorted(r["per_article_by_op"].items(), key=lambda kv: -kv[1]):
        print(f"  {op:<12} {v:.2e}")
    print(f"  {'total':<12} {r['per_article']:.2e}  (one article in {1 / r['per_article']:.0f})")
    rows = {}
    print(f"\n{'model':<8} {'truncation':<10} {'seconds':>8} {'MB':>9} {'rounds':>7}")
    for row in ("layer", "minilm"):
        res = {t: cost(row, texts[:1], t) for t in ("local", "exact")}
        diff = float((res["local"].pop("output") - res["exact"].pop("output")).abs().max())
        rows[row] = {**res, "max_abs_diff_local_vs_exact": diff}
        for t, c in res.items():
            print(f"{row:<8} {t:<10} {c['seconds']:>8.2f} {c['bytes'] / 1e6:>9.1f} "
                  f"{c['rounds']:>7}")
    for row, res in rows.items():
        for what, label in (("seconds", "time"), ("bytes", "bytes"), ("rounds", "rounds")):
            ratio = res["exact"][what] / res["local"][what]
            res[f"exact/local {label}"] = ratio
            print(f"{row} exact/local {label} ratio: {ratio:.3f}")
    cnn = cnn_risk(["fmnist_cnn", "fmnist_resnet"], args.cnn_images)
    print(f"\nCNN path (f = 12, local truncation), expected corrupted elements per image "
          f"({args.cnn_images} Fashion-MNIST test images):")
    for name, c in cnn.items():
        print(f"  {name:<14} {c['per_image']:.2e}  (worst op: {c['worst_op']})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"risk": r, "cost": rows, "cnn_risk": cnn}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
