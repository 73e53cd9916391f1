"""The Knapsack seed's MaxPool-to-AvgPool swap on the demo CNN: accuracy and secure cost.

In one run: the shipped ``fmnist_cnn`` (max pools) and the same network with its max pools
replaced by average pools (``secinfer.models.transforms.maxpool_to_avgpool``), fine-tuned by
distillation from the original (``secinfer.knapsack.finetune.distill``). Plaintext accuracy
on the full Fashion-MNIST test split for the original, the swap before fine-tuning and after;
then secure inference of the same test images through three server processes over mutual TLS
(``secinfer.serve.local.secure_eval``) for both networks, interleaved in one command: bytes
per image (exact), rounds, agreement with plaintext, seconds per image (noisy here). The
fine-tuned weights go to ``src/secinfer/assets/fmnist_cnn_avgpool.safetensors``, the zoo's
``fmnist_cnn_avgpool``.

    .venv/bin/python benchmarks/avgpool.py [--epochs 2] [--secure-images 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from secinfer.data import fashion_mnist
from secinfer.knapsack.finetune import FinetuneConfig, distill, evaluate
from secinfer.models import zoo
from secinfer.models.capture import capture
from secinfer.models.transforms import maxpool_to_avgpool
from secinfer.serve.local import secure_eval

RESULTS = Path(__file__).resolve().parent / "results" / "avgpool.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--secure-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x_tr, y_tr = fashion_mnist.load("train", limit=args.train_limit)
    x_te, y_te = fashion_mnist.load("test")
    original = zoo.pretrained("fmnist_cnn")
    swapped, n_swapped = maxpool_to_avgpool(original)
    acc = {"original": evaluate(original, x_te, y_te),
           "avgpool_no_finetune": evaluate(swapped, x_te, y_te)}
    print(f"replaced {n_swapped} max pools; test accuracy: original {acc['original']:.4f}, "
          f"average pools before fine-tuning {acc['avgpool_no_finetune']:.4f}", flush=True)

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}, {seconds:.0f} s", flush=True)

    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr)
    t0 = time.perf_counter()
    tuned = distill(original, swapped, x_tr, y_tr, cfg, on_epoch=report)
    finetune_s = time.perf_counter() - t0
    acc["avgpool_finetuned"] = evaluate(tuned, x_te, y_te)
    out = zoo.asset_path("fmnist_cnn_avgpool")
    save_file({k: v.detach().contiguous() for k, v in tuned.state_dict().items()}, str(out),
              metadata={"model": "fmnist_cnn_avgpool", "teacher": "fmnist_cnn",
                        "epochs": str(args.epochs), "lr": str(args.lr)})
    print(f"fine-tuned: test accuracy {acc['avgpool_finetuned']:.4f} "
          f"({100 * (acc['avgpool_finetuned'] - acc['original']):+.2f} points); wrote {out}",
          flush=True)

    n = args.secure_images
    xs, ys = x_te[:n], y_te[:n]
    secure = {}
    for name, model in (("maxpool", original), ("avgpool", tuned)):
        r = secure_eval(model, (1, 28, 28), xs, ys, batch=min(100, n))
        total = sum(int(c["servers"]["<total>"]["bytes_sent"]) for c in r.costs.values())
        secure[name] = {
            "bytes_per_image": total / n, "rounds_p1": int(r.costs[1]["servers"]["<total>"]
                                                           ["rounds"]),
            "seconds_per_image": r.seconds_per_image, "agreement": r.agreement,
            "secure_accuracy": r.secure_accuracy, "plain_accuracy": r.plain_accuracy,
            "max_abs_logit_error": r.max_abs_logit_error,
            "relus": capture(model, (1, 28, 28))[0].relu_count(),
        }
        print(f"secure {name}: {secure[name]}", flush=True)

    print(f"\n{'network':<28} {'test acc (10k)':>14} {'MB/image':>9} {'rounds':>7} "
          f"{'s/image':>8} {'agree':>7} {'ReLUs':>7}")
    for name, key in (("fmnist_cnn (max pools)", "original"),
                      ("avg pools, fine-tuned", "avgpool_finetuned")):
        s = secure["maxpool" if key == "original" else "avgpool"]
        print(f"{name:<28} {acc[key]:>14.4f} {s['bytes_per_image'] / 1e6:>9.3f} "
              f"{s['rounds_p1']:>7} {s['seconds_per_image']:>8.3f} {s['agreement']:>7.3f} "
              f"{s['relus']:>7}")
    bytes_ratio = secure["maxpool"]["bytes_per_image"] / secure["avgpool"]["bytes_per_image"]
    print(f"accuracy change: {100 * (acc['avgpool_finetuned'] - acc['original']):+.2f} points")
    print(f"avgpool/maxpool test accuracy ratio: "
          f"{acc['avgpool_finetuned'] / acc['original']:.4f}")
    print(f"maxpool/avgpool bytes per image ratio: {bytes_ratio:.3f}")
    print(f"maxpool/avgpool rounds ratio: "
          f"{secure['maxpool']['rounds_p1'] / secure['avgpool']['rounds_p1']:.3f}")
    print(f"maxpool/avgpool latency ratio: "
          f"{secure['maxpool']['seconds_per_image'] / secure['avgpool']['seconds_per_image']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "test_images": len(y_te), "secure_images": n, "replaced_pools": n_swapped,
        "accuracy": acc, "secure": secure, "finetune_seconds": finetune_s,
        "config": {"epochs": args.epochs, "lr": args.lr, "train_limit": args.train_limit},
    }, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
