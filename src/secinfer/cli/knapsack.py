"""``secinfer knapsack distortion|solve|finetune``: choose block-ReLU sizes under a DReLU budget.

    secinfer knapsack distortion --model fmnist_resnet --samples 32 --out runs/ks
    secinfer knapsack solve runs/ks/distortion.safetensors --ratio 0.06 --out runs/ks/spec.json
    secinfer knapsack finetune --model fmnist_resnet --spec runs/ks/spec.json --epochs 2 \\
        --out runs/ks/finetuned.safetensors

Data: Fashion-MNIST (Debian package ``dataset-fashion-mnist``). Weights default to the
project's trained ones in ``secinfer/assets``.
"""

from __future__ import annotations

import argparse
import copy
import json
import secrets
import shlex
import sys
import time
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knapsack", help="block-ReLU sizes by multiple-choice knapsack (issue 6)")
    ks = p.add_subparsers(dest="knapsack_command", required=True, metavar="STEP")

    d = ks.add_parser("distortion", help="measure per-channel distortion of each block size")
    _model_args(d)
    d.add_argument("--out", required=True, type=Path, help="run directory (resumable)")
    d.add_argument("--samples", type=int, default=32, help="training images to measure on")
    d.add_argument("--layers", default=None, help="comma-separated ReLU module names (default all)")
    d.add_argument("--workers", type=int, default=1, help="worker processes")
    d.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    d.add_argument("--copies", type=int, default=8, help="channels evaluated per forward batch")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(handler=_distortion)

    s = ks.add_parser("solve", help="exact multiple-choice knapsack -> JSON spec")
    s.add_argument("distortion", type=Path, help="distortion.safetensors (or its run directory)")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--ratio", type=float, help="budget as a fraction of the ReLU DReLUs")
    budget.add_argument("--count", type=int, help="budget as an absolute DReLU count per image")
    s.add_argument("--out", required=True, type=Path, help="spec file to write (JSON)")
    s.set_defaults(handler=_solve)

    f = ks.add_parser("finetune", help="fine-tune with a spec (knowledge distillation)")
    _model_args(f)
    f.add_argument("--spec", required=True, type=Path)
    f.add_argument("--out", required=True, type=Path, help="fine-tuned weights (.safetensors)")
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--batch", type=int, default=128)
    f.add_argument("--alpha", type=float, default=0.9, help="distillation weight (0 = plain CE)")
    f.add_argument("--temperature", type=float, default=4.0)
    f.add_argument("--train-limit", type=int, default=None, help="use the first N train images")
    f.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N")
    f.add_argument("--threads", type=int, default=1,
                   help="torch threads (more than one is slower on a busy machine)")
    f.set_defaults(handler=_finetune)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="fmnist_resnet", help="zoo model name")
    p.add_argument("--weights", type=Path, default=None,
                   help="safetensors state dict (default: the project's trained weights)")


def _weights(args: argparse.Namespace) -> Path:
    from secinfer.models.zoo import asset_path

    path = args.weights or asset_path(args.model)
    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found (train with scripts/train_fmnist.py "
                                f"--model {args.model}, or pass --weights)")
    return path


def _load(model: str, split: str, limit: int | None = None):
    """Training / test data for ``model``: FashionDigits scenes for the segmentation nets
    (``deeplabv3_*``, the first ``limit`` or 10,000 of the split), else Fashion-MNIST."""
    if model.startswith("deeplabv3"):
        from secinfer.seg.scenes import load_scenes

        return load_scenes(split, limit or 10000)  # type: ignore[arg-type]
    from secinfer.data import load

    return load(split, limit)  # type: ignore[arg-type]


def _command() -> str:
    return "secinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _distortion(args: argparse.Namespace) -> int:
    import torch

    from secinfer.knapsack.distortion import ModelRef, extract, stored_samples

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    ref = ModelRef(args.model, str(_weights(args).resolve()))
    x = stored_samples(args.out)
    if x is not None:
        print(f"resuming the run in {args.out} ({x.shape[0]} stored samples)", flush=True)
    else:
        xs, _ = _load(args.model, "train")
        gen = torch.Generator().manual_seed(secrets.randbits(63))
        x = xs[torch.randperm(len(xs), generator=gen)[: args.samples]].contiguous()
    layers = args.layers.split(",") if args.layers else None
    start = time.perf_counter()
    path = extract(ref, x, args.out, layers=layers, workers=args.workers, threads=args.threads,
                   copies=args.copies, progress=not args.quiet)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


def _solve(args: argparse.Namespace) -> int:
    import torch

    from secinfer.knapsack.problem import load_distortion
    from secinfer.knapsack.solve import resolve_budget, solve
    from secinfer.models.block_spec import save_spec

    src = args.distortion / "distortion.safetensors" if args.distortion.is_dir() \
        else args.distortion
    layers, meta = load_distortion(src)
    full = sum(la.full_cost for la in layers)
    budget = resolve_budget(full, ratio=args.ratio, count=args.count)
    sol = solve(layers, budget)
    print(f"{'layer':<24}{'C x H x W':>14}{'ReLU':>10}{'block':>10}{'ratio':>8}  top blocks")
    for la in layers:
        uniq, counts = torch.unique(sol.spec[la.name], dim=0, return_counts=True)
        top = sorted(zip(counts.tolist(), uniq.tolist(), strict=True), reverse=True)[:4]
        shape = "x".join(map(str, la.shape))
        print(f"{la.name:<24}{shape:>14}{la.full_cost:>10}{sol.per_layer[la.name]:>10}"
              f"{sol.per_layer[la.name] / la.full_cost:>8.3f}  "
              + ", ".join(f"{b[0]}x{b[1]}:{n}" for n, b in top))
    print(f"DReLUs per image: {sol.drelus} of {full} (budget {budget}); "
          f"predicted noise {sol.noise:.4g}; solved in {sol.seconds:.2f} s")
    save_spec(args.out, sol.spec, {
        "budget": budget, "drelus": sol.drelus, "full_drelus": full, "noise": sol.noise,
        "per_layer": sol.per_layer, "model": meta.get("model"), "command": _command(),
    })
    print(f"wrote {args.out}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from secinfer.knapsack.distortion import ModelRef
    from secinfer.knapsack.finetune import FinetuneConfig, evaluate, finetune
    from secinfer.models.block_spec import activation_shapes, apply_spec, drelu_counts, load_spec

    torch.set_num_threads(args.threads)
    cfg = FinetuneConfig(args.epochs, args.lr, args.batch, args.temperature, args.alpha)
    teacher = ModelRef(args.model, str(_weights(args))).build()
    spec = load_spec(args.spec)
    x_tr, y_tr = _load(args.model, "train", args.train_limit)
    x_te, y_te = _load(args.model, "test", args.test_limit)
    shapes = activation_shapes(teacher, tuple(x_te.shape[1:]))
    full = sum(drelu_counts({}, shapes).values())
    blocked = sum(drelu_counts(spec, shapes).values())
    before = evaluate(teacher, x_te, y_te)
    print(f"original: test accuracy {before:.4f}, DReLUs per image {full}", flush=True)
    no_ft = evaluate(apply_spec(copy.deepcopy(teacher), spec), x_te, y_te)
    print(f"block ReLU before fine-tuning: test accuracy {no_ft:.4f}, DReLUs per image "
          f"{blocked} ({blocked / full:.4f} of the original)", flush=True)

    def report(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch}/{cfg.epochs}: loss {loss:.4f}, {seconds:.0f} s", flush=True)

    student = finetune(teacher, spec, x_tr, y_tr, cfg, on_epoch=report)
    after = evaluate(student, x_te, y_te)
    print(f"fine-tuned: test accuracy {after:.4f} (original {before:.4f}, "
          f"change {100 * (after - before):+.2f} points)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(args.out), metadata={"model": args.model, "spec": str(args.spec)})
    summary = {
        "model": args.model, "spec": str(args.spec), "test_images": len(y_te),
        "accuracy_original": before, "accuracy_block_relu_no_finetune": no_ft,
        "accuracy_finetuned": after, "drelus_original": full, "drelus_block": blocked,
        "drelu_ratio": blocked / full, "config": cfg.__dict__, "command": _command(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
