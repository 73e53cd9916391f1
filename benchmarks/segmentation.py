"""Secure semantic segmentation (DeepLabV3 heads), the knapsack on it, and a DReLU budget sweep.

Phases (each writes its part of ``benchmarks/results/segmentation.json``, merged with what an
earlier run left, so they can run one at a time):

``secure``: both DeepLabV3 variants (``zoo.pretrained``, trained by
``scripts/train_segmentation.py``) on the first ``--secure-images`` FashionDigits test scenes
through three server processes over mutual TLS (``secinfer.seg.secure.secure_segment``):
plaintext and secure mIoU, pixel agreement, bytes per image, rounds per request. Also the
plaintext mIoU on the first ``--plain-images`` test scenes, and a PNG of scenes, labels,
plaintext and secure masks.

``knapsack``: for ``deeplabv3_resnet``: distortion extraction on ``--samples`` training scenes
(a short candidate list), the exact knapsack at each ``--budgets`` ratio of its ReLU DReLUs,
fine-tuning by distillation, plaintext mIoU; then the 6% network securely on the same test
scenes (mIoU loss against the full-ReLU network, comparison traffic reduction).

``sweep``: the same budgets on ``fmnist_resnet`` (Fashion-MNIST accuracy on the test split).

``plots``: PNGs (matplotlib) of mIoU / accuracy against the budget and of comparisons per layer
before and after, from the JSON.

    .venv/bin/python benchmarks/segmentation.py --phase secure [--secure-images 500]
    .venv/bin/python benchmarks/segmentation.py --phase knapsack
    .venv/bin/python benchmarks/segmentation.py --phase sweep
    .venv/bin/python benchmarks/segmentation.py --phase plots
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from secinfer.knapsack.distortion import ModelRef, extract
from secinfer.knapsack.finetune import FinetuneConfig, distill, evaluate
from secinfer.knapsack.problem import load_distortion
from secinfer.knapsack.solve import resolve_budget, solve
from secinfer.models import zoo
from secinfer.models.block_spec import activation_shapes, apply_spec, drelu_counts
from secinfer.models.capture import capture
from secinfer.seg.scenes import CLASSES, load_scenes
from secinfer.seg.secure import secure_segment
from secinfer.seg.train import confusion, miou, pixel_accuracy, predict

RESULTS = Path(__file__).resolve().parent / "results"
JSON = RESULTS / "segmentation.json"
SEG = ("deeplabv3_resnet", "deeplabv3_mobilenet")
SHAPE = (1, 32, 32)


def _few_candidates(h: int, w: int) -> list[tuple[int, int]]:
    sizes = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (4, 4), (8, 8), (h, w), (0, 1)]
    return sorted({(min(a, h), min(b, w)) if a else (a, b) for a, b in sizes})


def _save(part: str, value: object) -> None:
    data = json.loads(JSON.read_text()) if JSON.is_file() else {}
    data[part] = value
    data["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    JSON.write_text(json.dumps(data, indent=1) + "\n")


def _progress(what: str):
    def bar(done: int, total: int, seconds: float) -> None:
        width = 30
        fill = width * done // total
        print(f"\r{what} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {seconds:.0f} s",
              end="\n" if done == total else "", file=sys.stderr, flush=True)
    return bar


def _plain_miou(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    conf = confusion(predict(model, x), y, len(CLASSES))
    return {"miou": miou(conf), "pixel_accuracy": pixel_accuracy(conf)}


def _secure(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            spec=None) -> dict:
    plan, _ = capture(apply_spec(copy.deepcopy(model), spec) if spec else model, SHAPE)
    res = secure_segment(model, SHAPE, x, y, len(CLASSES), batch=50, relu_spec=spec,
                         progress=_progress(name))
    out = res.summary()
    out["drelus_per_image"] = plan.relu_count()
    out["drelus_per_layer"] = {op.name: int(op.params["drelus"]) for op in plan.ops
                               if op.params.get("drelus")}
    return out, res.secure_labels


def phase_secure(args: argparse.Namespace) -> None:
    x, y = load_scenes("test", max(args.plain_images, args.secure_images))
    xs, ys = x[:args.secure_images], y[:args.secure_images]
    rows, masks = {}, {}
    for name in SEG:
        model = zoo.pretrained(name)
        row, labels = _secure(name, model, xs, ys)
        row["plain_full"] = {"images": args.plain_images, **_plain_miou(model, x, y)}
        rows[name], masks[name] = row, labels
        print(f"{name}: secure mIoU {100 * row['secure_miou']:.2f} vs plaintext "
              f"{100 * row['plain_miou']:.2f} on {row['n']} scenes; pixel agreement "
              f"{100 * row['pixel_agreement']:.3f}%; {row['bytes_per_image'] / 1e6:.2f} MB per "
              f"image; {row['seconds_per_image']:.2f} s per image", flush=True)
        print(f"{name} secure-vs-plain mIoU ratio: {row['secure_miou'] / row['plain_miou']:.4f}")
        print(f"{name} pixel agreement ratio: {row['pixel_agreement']:.5f}")
        _save("secure", rows)
    _mask_png(xs[:8], ys[:8], {n: m[:8] for n, m in masks.items()})


def _mask_png(x: torch.Tensor, y: torch.Tensor, masks: dict[str, torch.Tensor]) -> None:
    plt = _plt()
    rows = 2 + len(masks)
    fig, ax = plt.subplots(rows, len(x), figsize=(1.2 * len(x), 1.3 * rows))
    for j in range(len(x)):
        ax[0, j].imshow(x[j, 0], cmap="gray")
        ax[1, j].imshow(y[j], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        for i, m in enumerate(masks.values()):
            ax[2 + i, j].imshow(m[j], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    for i, label in enumerate(["scene", "label", *(f"secure\n{n[10:]}" for n in masks)]):
        ax[i, 0].set_ylabel(label, fontsize=7)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(RESULTS / "segmentation_masks.png", dpi=110)
    print(f"wrote {RESULTS / 'segmentation_masks.png'}")


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("the plots need matplotlib: pip install -e '.[bench]' "
                         "(make bench installs it)") from e
    return plt


def _budget_run(name: str, x_tr, y_tr, x_te, y_te, metric, args) -> tuple[dict, dict]:
    """Distortion on a few samples, knapsack at each budget, fine-tune; the metric of each."""
    ref = ModelRef(name, str(zoo.asset_path(name)))
    teacher = ref.build()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        dist = extract(ref, x_tr[:args.samples], Path(tmp) / "d", candidates=_few_candidates,
                       progress=True)
        layers, _ = load_distortion(dist)
        t_dist = time.perf_counter() - t0
    full = sum(la.full_cost for la in layers)
    shapes = activation_shapes(teacher, tuple(x_te.shape[1:]))
    out = {"full_relu": metric(teacher, x_te, y_te), "relu_drelus": full,
           "distortion_seconds": t_dist, "samples": args.samples, "budgets": {}}
    specs = {}
    cfg = FinetuneConfig(epochs=args.finetune_epochs, lr=args.lr, batch=64)
    for r in args.budgets:
        sol = solve(layers, resolve_budget(full, ratio=r))
        spec = sol.spec
        before = metric(apply_spec(copy.deepcopy(teacher), spec), x_te, y_te)
        t0 = time.perf_counter()
        student = apply_spec(copy.deepcopy(teacher), spec)
        for p in student.parameters():  # distill froze the teacher it was copied from
            p.requires_grad_(True)
        student = distill(teacher, student, x_tr, y_tr, cfg)
        after = metric(student, x_te, y_te)
        blocked = sum(drelu_counts(spec, shapes).values())
        out["budgets"][str(r)] = {"drelus": blocked, "no_finetune": before, "finetuned": after,
                                  "finetune_seconds": time.perf_counter() - t0,
                                  "change_points": 100 * (after - out["full_relu"])}
        print(f"{name} at {100 * r:g}%: {blocked} of {full} DReLUs, metric {after:.4f} "
              f"(before fine-tuning {before:.4f}, full ReLU {out['full_relu']:.4f})", flush=True)
        specs[r] = (spec, student)
    return out, specs


def _miou_metric(model, x, y) -> float:
    return _plain_miou(model, x, y)["miou"]


def phase_knapsack(args: argparse.Namespace) -> None:
    name = "deeplabv3_resnet"
    x_tr, y_tr = load_scenes("train", args.train)
    x_te, y_te = load_scenes("test", args.plain_images)
    out, specs = _budget_run(name, x_tr, y_tr, x_te, y_te, _miou_metric, args)
    if 0.06 in specs:
        spec, student = specs[0.06]
        sec, _ = _secure(f"{name} 6%", student, x_te[:args.secure_images],
                         y_te[:args.secure_images], spec)
        out["secure_6pct"] = sec
        full = json.loads(JSON.read_text()).get("secure", {}).get(name) if JSON.is_file() else None
        if full:
            loss = 100 * (full["secure_miou"] - sec["secure_miou"])
            out["secure_6pct"]["miou_loss_points"] = loss
            cut = full["bytes_per_image"] / sec["bytes_per_image"]
            print(f"{name} 6% secure mIoU {100 * sec['secure_miou']:.2f} (full ReLU "
                  f"{100 * full['secure_miou']:.2f}, loss {loss:.2f} points)")
            print(f"{name} 6% traffic reduction ratio: {cut:.3f}")
            print(f"{name} 6% comparison reduction ratio: "
                  f"{full['drelus_per_image'] / sec['drelus_per_image']:.3f}")
    _save("knapsack_" + name + args.tag, out)


def phase_sweep(args: argparse.Namespace) -> None:
    from secinfer.data import fashion_mnist

    x_tr, y_tr = fashion_mnist.load("train", limit=args.train)
    x_te, y_te = fashion_mnist.load("test")
    out, _ = _budget_run("fmnist_resnet", x_tr, y_tr, x_te, y_te, evaluate, args)
    _save("sweep_fmnist_resnet", out)


def phase_plots(_args: argparse.Namespace) -> None:
    plt = _plt()
    data = json.loads(JSON.read_text())
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("knapsack_deeplabv3_resnet", "DeepLabV3-ResNet mIoU"),
                       ("sweep_fmnist_resnet", "fmnist_resnet accuracy")):
        if key not in data:
            continue
        b = data[key]["budgets"]
        rs = sorted(b, key=float)
        ax.plot([100 * float(r) for r in rs], [100 * b[r]["finetuned"] for r in rs], "o-",
                label=f"{label} (fine-tuned)")
        ax.axhline(100 * data[key]["full_relu"], ls="--", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xticks([3, 6, 12, 25], ["3", "6", "12", "25"])
    ax.minorticks_off()
    ax.set_xlabel("DReLU budget (% of the ReLU network)")
    ax.set_ylabel("% (dashed: full ReLU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "segmentation_budget.png", dpi=110)
    name = "deeplabv3_resnet"
    full = data.get("secure", {}).get(name, {}).get("drelus_per_layer")
    low = data.get("knapsack_" + name, {}).get("secure_6pct", {}).get("drelus_per_layer")
    if full and low:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        names = list(full)
        ax.bar(range(len(names)), [full[n] for n in names], label="ReLU")
        ax.bar(range(len(names)), [low.get(n, 0) for n in names], label="knapsack 6%")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
        ax.set_ylabel("comparisons per image")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "segmentation_layers.png", dpi=110)
    print(f"wrote the PNGs under {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", required=True, choices=["secure", "knapsack", "sweep", "plots"])
    ap.add_argument("--secure-images", type=int, default=500)
    ap.add_argument("--plain-images", type=int, default=2000)
    ap.add_argument("--budgets", type=lambda s: [float(v) for v in s.split(",")],
                    default=[0.03, 0.06, 0.12, 0.25])
    ap.add_argument("--samples", type=int, default=16, help="distortion samples")
    ap.add_argument("--train", type=int, default=8000, help="fine-tuning images")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the knapsack phase's JSON key")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    {"secure": phase_secure, "knapsack": phase_knapsack, "sweep": phase_sweep,
     "plots": phase_plots}[args.phase](args)


if __name__ == "__main__":
    main()
