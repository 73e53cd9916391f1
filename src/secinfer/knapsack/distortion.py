"""Distortion extraction: how much the network output moves when one channel uses one block size.

Paper: Gorski, Jevnisek, Avidan, arXiv 2304.10442 (seed code ``research/distortion/*``).

For every ReLU layer ``L``, channel ``c`` and candidate block ``b``:

1. Run the clean network on the sample images once; keep its output ``y``.
2. Run the part before ``L`` once (``graph_split``), keeping ``L``'s input and the values still
   needed later (residual branches).
3. Replace ``L``'s output by the ordinary ReLU except channel ``c``, which gets block ReLU ``b``;
   run the rest of the network to get ``y'``. Many channels run as one batch, each copy of the
   sample changing a different channel.
4. ``noise[c, b] = mean((y' - y)^2)`` over the samples and outputs (the seed's measure at the
   final output). ``(1, 1)`` is the ordinary ReLU, so its noise is 0 without running anything.

Work is split into units ``(layer, candidate)``, each written to its own safetensors file under
``<out>/units`` as soon as it is done: an interrupted run resumes where it stopped, and units run
in parallel worker processes. The sample images and a manifest (model, candidates) are stored in
``<out>`` first; a resumed run checks that both match. The result is
``<out>/distortion.safetensors`` (see :mod:`secinfer.knapsack.problem`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from secinfer.knapsack.graph_split import Split, split_at
from secinfer.knapsack.problem import LayerDistortion, default_candidates, save_distortion
from secinfer.models.block_relu import block_relu
from secinfer.models.block_spec import activation_shapes, relu_layers

__all__ = ["ModelRef", "extract", "iter_units", "layer_unit_noise", "stored_samples"]


@dataclass(frozen=True)
class ModelRef:
    """How a worker process rebuilds the model: a zoo name, its kwargs, a safetensors file."""

    name: str
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        from secinfer.models.zoo import build

        model = build(self.name, **self.kwargs)
        if self.weights is not None:
            from safetensors.torch import load_file as _load

            path = Path(self.weights)
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} not found")
            model.load_state_dict(_load(str(path)))
        return model.eval()


def _gated(pre: torch.Tensor, channels: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``pre`` is ``[m, N, C, H, W]`` (m copies of the sample); copy ``j`` gets block ReLU
    ``block`` on channel ``channels[j]`` and ordinary ReLU elsewhere."""
    m, n, c, h, w = pre.shape
    out = torch.relu(pre)
    rows = torch.arange(m)
    sel = pre[rows, :, channels]  # [m, N, H, W]
    bs = torch.tensor([block], dtype=torch.int32)
    out[rows, :, channels] = block_relu(sel.reshape(m * n, 1, h, w), bs).reshape(m, n, h, w)
    return out


@torch.no_grad()
def layer_unit_noise(
    split: Split, x: torch.Tensor, clean: torch.Tensor, block: tuple[int, int],
    copies: int = 8,
) -> np.ndarray:
    """Noise of every channel of the split layer for one candidate block: float64 ``[C]``."""
    pre, live = split.run_prefix(x)
    n, c = pre.shape[0], pre.shape[1]
    if tuple(block) == (1, 1):
        return np.zeros(c)
    noise = np.empty(c)
    for c0 in range(0, c, copies):
        chans = torch.arange(c0, min(c, c0 + copies))
        m = len(chans)
        rep = pre.unsqueeze(0).expand(m, *pre.shape)
        act = _gated(rep, chans, block).reshape(m * n, *pre.shape[1:])
        lives = [v.unsqueeze(0).expand(m, *v.shape).reshape(m * n, *v.shape[1:]) for v in live]
        y = split.suffix(act, *lives).reshape(m, n, -1)
        noise[c0:c0 + m] = ((y - clean.reshape(1, n, -1)) ** 2).mean(dim=(1, 2)).double().numpy()
    return noise


def _unit_path(out: Path, layer: str, k: int) -> Path:
    return out / "units" / f"{layer}__{k}.safetensors"


class _Worker:
    """Per-process state: the model, samples, clean output and splits (built lazily)."""

    def __init__(self, ref: ModelRef, out: Path, copies: int) -> None:
        self.model = ref.build()
        data = load_file(str(out / "samples.safetensors"))
        self.x = data["x"]
        self.out = out
        self.copies = copies
        with torch.no_grad():
            self.clean = self.model(self.x)
        self.splits: dict[str, Split] = {}

    def run(self, layer: str, k: int, block: tuple[int, int]) -> tuple[str, int, float]:
        start = time.perf_counter()
        if layer not in self.splits:
            self.splits[layer] = split_at(self.model, layer)
        noise = layer_unit_noise(self.splits[layer], self.x, self.clean, block, self.copies)
        path = _unit_path(self.out, layer, k)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"noise": torch.from_numpy(noise)}, str(tmp))
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written unit
        return layer, k, time.perf_counter() - start


def _run_batch(ref: dict[str, Any], out: str, copies: int, threads: int,
               units: list[tuple[str, int, tuple[int, int]]]) -> list[str]:
    """Worker entry point: rebuild the model from files, run a few units of one layer."""
    torch.set_num_threads(threads)
    worker = _Worker(ModelRef(**ref), Path(out), copies)
    return [worker.run(n, k, b)[0] for n, k, b in units]


class _Progress:
    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.start = time.perf_counter()
        self.started_at = done

    def update(self, what: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        el = time.perf_counter() - self.start
        rate = (self.done - self.started_at) / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        print(f"\rdistortion {self.done}/{self.total} units ({100 * self.done / self.total:.0f}%)"
              f" {el:.0f}s elapsed, eta {eta:.0f}s  {what[:40]:<40}", end="", file=sys.stderr,
              flush=True)
        if self.done == self.total:
            print(file=sys.stderr)


def _prepare(out: Path, ref: ModelRef, x: torch.Tensor, layers: list[str],
             cands: dict[str, list[tuple[int, int]]], shapes: dict[str, tuple[int, ...]]) -> None:
    manifest = {"model": asdict(ref), "layers": layers, "shapes": {k: list(v) for k, v in
                shapes.items()}, "candidates": {k: [list(b) for b in v] for k, v in cands.items()},
                "samples": int(x.shape[0])}
    (out / "units").mkdir(parents=True, exist_ok=True)
    mpath, spath = out / "manifest.json", out / "samples.safetensors"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != manifest:
            raise ValueError(f"{out} holds a distortion run with different settings; resume with "
                             f"the same model/layers/samples or use a new directory")
        if not torch.equal(load_file(str(spath))["x"], x):
            raise ValueError(f"{out}/samples.safetensors differs from the given samples")
        return
    save_file({"x": x.contiguous()}, str(spath))
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")


def stored_samples(out: Path | str) -> torch.Tensor | None:
    """The samples of an earlier (possibly interrupted) run in ``out``, to resume with."""
    path = Path(out) / "samples.safetensors"
    return load_file(str(path))["x"] if path.is_file() else None


def extract(
    ref: ModelRef,
    x: torch.Tensor,
    out: Path | str,
    layers: list[str] | None = None,  # default: every ReLU on a [C, H, W] activation
    candidates: Callable[[int, int], list[tuple[int, int]]] = default_candidates,
    workers: int = 1,
    threads: int = 1,
    copies: int = 8,
    progress: bool = True,
    per_batch: int = 4,
) -> Path:
    """Measure the distortion table of ``ref`` on samples ``x``; return the result file."""
    if workers < 1 or threads < 1 or copies < 1:
        raise ValueError("workers, threads and copies must be >= 1")
    out = Path(out)
    model = ref.build()
    names = relu_layers(model) if layers is None else list(layers)
    shapes = activation_shapes(model, tuple(x.shape[1:]), names)
    flat = [n for n, s in shapes.items() if len(s) != 3]
    if flat and layers is not None:
        raise ValueError(f"block ReLU needs [C, H, W] activations; not so for {flat}")
    # By default, ReLUs after linear layers (no spatial patches) stay ordinary ReLUs.
    names = [n for n in names if n not in flat]
    shapes = {n: shapes[n] for n in names}
    if not names:
        raise ValueError("the model has no ReLU on a [C, H, W] activation")
    cands = {n: candidates(shapes[n][1], shapes[n][2]) for n in names}
    _prepare(out, ref, x, names, cands, shapes)

    todo = [(n, k, cands[n][k]) for n in names for k in range(len(cands[n]))
            if not _unit_path(out, n, k).exists()]
    total = sum(len(v) for v in cands.values())
    bar = _Progress(total, total - len(todo), progress)
    # A batch is a few candidates of one layer: one split and one clean forward serve them all.
    batches = []
    for n in names:
        mine = [u for u in todo if u[0] == n]
        batches += [mine[i:i + per_batch] for i in range(0, len(mine), per_batch)]
    args = (asdict(ref), str(out), copies, threads)
    if workers == 1:
        for batch in batches:
            for name in _run_batch(*args, batch):
                bar.update(name)
    elif batches:
        # Workers rebuild everything from the stored files, so only names cross processes.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futs = [pool.submit(_run_batch, *args, batch) for batch in batches]
            for f in as_completed(futs):
                for name in f.result():
                    bar.update(name)
    return _collect(out, names, cands, shapes, ref)


def _collect(out: Path, names: list[str], cands: dict[str, list[tuple[int, int]]],
             shapes: dict[str, tuple[int, ...]], ref: ModelRef) -> Path:
    result = []
    for n in names:
        cols = [load_file(str(_unit_path(out, n, k)))["noise"].numpy()
                for k in range(len(cands[n]))]
        c, h, w = shapes[n]
        result.append(LayerDistortion(n, (c, h, w), np.array(cands[n], dtype=np.int32),
                                      np.stack(cols, axis=1).astype(np.float64)))
    meta = {"model": asdict(ref), "samples": int(load_file(str(out / "samples.safetensors"))
                                                  ["x"].shape[0])}
    return save_distortion(out / "distortion.safetensors", result, meta)


def iter_units(out: Path | str) -> Iterator[Path]:
    """Unit files written so far (for inspection)."""
    yield from sorted((Path(out) / "units").glob("*.safetensors"))
