"""The knapsack's input: measured distortion per layer, channel and candidate block size.

Stored as one safetensors file (no pickle): for each layer ``<name>.noise`` (float64 ``[C, K]``,
mean squared change of the network output when only that channel uses that block) and
``<name>.candidates`` (int32 ``[K, 2]``), plus a JSON ``layers`` entry in the metadata with the
activation shape ``[C, H, W]`` and the layer order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from secinfer.models.block_relu import IDENTITY, ZERO, block_cost, check_block_sizes

__all__ = ["LayerDistortion", "default_candidates", "load_distortion", "save_distortion"]


@dataclass(frozen=True)
class LayerDistortion:
    """Distortion table of one ReLU layer. ``noise[c, k] >= 0``; smaller is better."""

    name: str
    shape: tuple[int, int, int]  # C, H, W of the activation
    candidates: np.ndarray  # int32 [K, 2]
    noise: np.ndarray  # float64 [C, K]

    def __post_init__(self) -> None:
        c, h, w = self.shape
        check_block_sizes(torch.from_numpy(np.ascontiguousarray(self.candidates)))
        k = len(self.candidates)
        if self.noise.shape != (c, k):
            raise ValueError(f"layer {self.name!r}: noise shape {self.noise.shape} != ({c}, {k})")
        if not np.isfinite(self.noise).all():
            raise ValueError(f"layer {self.name!r}: noise has NaN or infinite entries")

    @property
    def costs(self) -> np.ndarray:
        """DReLUs per channel for each candidate, int64 ``[K]``."""
        _, h, w = self.shape
        return np.array([block_cost((int(a), int(b)), h, w) for a, b in self.candidates],
                        dtype=np.int64)

    @property
    def full_cost(self) -> int:
        """DReLUs of this layer with ordinary ReLU."""
        c, h, w = self.shape
        return c * h * w


def default_candidates(height: int, width: int) -> list[tuple[int, int]]:
    """Candidate block sizes for an activation of ``height x width``.

    Squares 1..8, 10 and 14, a few 1:2 / 1:3 / 2:3 rectangles, the whole channel as one patch,
    and the two sentinels identity and zero. The seed lists a similar mix in
    ``parameters/block_sizes.py``; ours is shorter so distortion extraction stays affordable on
    a CPU.
    """
    if height < 1 or width < 1:
        raise ValueError(f"activation size must be positive, got {height}x{width}")
    shapes = [(s, s) for s in (*range(1, 9), 10, 14)]
    shapes += [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2), (2, 4), (4, 2)]
    shapes += [(height, width)]
    out: list[tuple[int, int]] = []
    for h, w in shapes:
        # A block at least as large as the activation covers it in one patch along that axis,
        # so clamping makes such blocks identical candidates.
        blk = (min(h, height), min(w, width))
        if blk not in out:
            out.append(blk)
    return [*out, IDENTITY, ZERO]


def save_distortion(path: Path | str, layers: Sequence[LayerDistortion], meta: dict) -> Path:
    tensors = {}
    info = []
    for layer in layers:
        tensors[f"{layer.name}.noise"] = torch.from_numpy(np.ascontiguousarray(layer.noise))
        tensors[f"{layer.name}.candidates"] = torch.from_numpy(
            np.ascontiguousarray(layer.candidates, dtype=np.int32))
        info.append({"name": layer.name, "shape": list(layer.shape)})
    path = Path(path)
    save_file(tensors, str(path), metadata={"layers": json.dumps(info), "meta": json.dumps(meta)})
    return path


def load_distortion(path: Path | str) -> tuple[list[LayerDistortion], dict]:
    """Read a file written by :func:`save_distortion`: (layers in order, meta)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"distortion file {path} not found")
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    if "layers" not in md:
        raise ValueError(f"{path} is not a distortion file (no 'layers' metadata)")
    tensors = load_file(str(path))
    layers = []
    for entry in json.loads(md["layers"]):
        name = entry["name"]
        c, h, w = (int(v) for v in entry["shape"])
        layers.append(LayerDistortion(
            name, (c, h, w),
            tensors[f"{name}.candidates"].numpy().astype(np.int32),
            tensors[f"{name}.noise"].numpy().astype(np.float64),
        ))
    return layers, json.loads(md.get("meta", "{}"))
