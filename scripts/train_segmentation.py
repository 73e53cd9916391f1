"""Train the two DeepLabV3 variants on FashionDigits scenes; write their weights to the assets.

    .venv/bin/python scripts/train_segmentation.py [--model deeplabv3_resnet] [--train 20000]
        [--epochs 8] [--threads 1]

Prints the plaintext mIoU and pixel accuracy on the first ``--test`` test scenes and writes
``src/secinfer/assets/<model>.safetensors`` (loaded by ``zoo.pretrained(<model>)``) and
``benchmarks/results/<model>_train.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from secinfer.models import zoo
from secinfer.seg.scenes import CLASSES, load_scenes
from secinfer.seg.train import confusion, miou, pixel_accuracy, predict, train_segmenter

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="deeplabv3_resnet",
                    choices=["deeplabv3_resnet", "deeplabv3_mobilenet"])
    ap.add_argument("--train", type=int, default=20000, help="training scenes")
    ap.add_argument("--test", type=int, default=2000, help="test scenes for the mIoU")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_scenes("train", args.train)
    xt, yt = load_scenes("test", args.test)
    model = zoo.build(args.model)
    t0 = time.perf_counter()

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"{args.model} epoch {epoch}/{args.epochs}: loss {loss:.4f}, {seconds:.0f} s",
              flush=True)

    train_segmenter(model, x, y, epochs=args.epochs, lr=args.lr, on_epoch=report)
    conf = confusion(predict(model, xt), yt, len(CLASSES))
    result = {"model": args.model, "train_scenes": args.train, "test_scenes": args.test,
              "epochs": args.epochs, "train_seconds": time.perf_counter() - t0,
              "miou": miou(conf), "pixel_accuracy": pixel_accuracy(conf),
              "confusion": conf.tolist()}
    print(f"{args.model}: plaintext mIoU {100 * result['miou']:.2f}, pixel accuracy "
          f"{100 * result['pixel_accuracy']:.2f}% on {args.test} test scenes")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(zoo.asset_path(args.model)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.model}_train.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
