"""Train a zoo model on Fashion-MNIST and store its weights under src/secinfer/assets.

    .venv/bin/python scripts/train_fmnist.py --model fmnist_cnn --epochs 3
    .venv/bin/python scripts/train_fmnist.py --model fmnist_resnet --epochs 4

Writes ``<out>/<model>.safetensors`` (float32 state dict, BN buffers included) and
``<out>/<model>.json`` (measured test accuracy, the command, the seed drawn from the OS CSPRNG,
wall time). Adam with a one-cycle learning rate; no augmentation.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from secinfer.data import FMNIST_MEAN, FMNIST_STD, load
from secinfer.models.zoo import build

ASSETS = Path(__file__).resolve().parents[1] / "src" / "secinfer" / "assets"


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="fmnist_cnn",
                    choices=["fmnist_cnn", "fmnist_resnet", "lenet"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seed = secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    x_tr, y_tr = load("train")
    x_te, y_te = load("test")
    model = build(args.model)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(x_tr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), args.batch):
            idx = perm[i:i + args.batch]
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = accuracy(model, x_te, y_te)
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(x_tr):.4f}, "
              f"test acc {acc:.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    wall = time.perf_counter() - start
    acc = accuracy(model, x_te, y_te)
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / f"{args.model}.safetensors"), metadata={"model": args.model})
    meta = {
        "model": args.model,
        "dataset": "fashion-mnist (Debian dataset-fashion-mnist), 60000 train / 10000 test",
        "normalisation": {"mean": FMNIST_MEAN, "std": FMNIST_STD},
        "test_accuracy": acc,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "seed": seed,
        "train_seconds": round(wall, 1),
        "torch": torch.__version__,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.model}: test accuracy {acc:.4f} in {wall:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
