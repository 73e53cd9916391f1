"""Short training loops: float training and quantization-aware training (QAT) on a Program.

QAT follows the seed's ``reduce_range_adaptive_training/qat.py`` in spirit (FX QAT with
per-channel symmetric int8 weights and activations fake-quantized to ``[0, 255 - r]`` with
moving-average min/max observers), written directly on our captured :class:`Program`, whose
BatchNorms are already folded (the seed freezes BN near the end of QAT; we start frozen).
Rounding uses the straight-through estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .program import LinearSpec, Program
from .quantize import QuantConfig, QuantModel, from_ranges

__all__ = ["train_classifier", "accuracy", "FakeQuantProgram", "qat", "training_generator"]


def training_generator() -> torch.Generator:
    """A torch generator for NON-SECRET training choices only: data shuffling, weight and
    gain initialisation, calibration subsets, benchmark inputs.

    Seeded from the OS CSPRNG so runs differ, but a Mersenne Twister keeps only 32 bits of its
    seed and is predictable from its output: never use it for masks, shuffles of a layer batch,
    fingerprints, checksum vectors or permutations (those come from ``rand.py``).
    """
    import secrets

    return torch.Generator().manual_seed(secrets.randbits(63))


def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch: int = 500) -> float:
    """Top-1 accuracy in percent."""
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            correct += int((fn(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum())
    return 100.0 * correct / max(1, len(x))


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 2,
                     lr: float = 1e-3, batch: int = 128,
                     gen: torch.Generator | None = None) -> nn.Module:
    """Adam on cross-entropy; shuffles with ``gen`` (tests pass a seeded one)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(t)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


def fake_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization (values stay float)."""
    amax = w.detach().reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12)
    s = (amax / 127.0).view(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(_RoundSTE.apply(w / s), -127, 127) * s


class FakeQuantProgram(nn.Module):
    """A trainable float copy of a Program whose linear layers see fake-quantized tensors."""

    def __init__(self, program: Program, config: QuantConfig, momentum: float = 0.1) -> None:
        super().__init__()
        self.program, self.config, self.momentum = program, config, momentum
        self.weights: nn.ParameterList = nn.ParameterList(
            [nn.Parameter(lay.weight.float().clone()) for lay in program.layers])
        self.biases: nn.ParameterList = nn.ParameterList(
            [nn.Parameter(lay.bias.float().clone()) for lay in program.layers])
        n = len(program.layers)
        self.lo: torch.Tensor
        self.hi: torch.Tensor
        self.register_buffer("lo", torch.full((n,), float("nan")))
        self.register_buffer("hi", torch.full((n,), float("nan")))

    def _act(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if torch.isnan(self.lo[i]):
                self.lo[i], self.hi[i] = lo, hi
            else:
                self.lo[i] += self.momentum * (lo - self.lo[i])
                self.hi[i] += self.momentum * (hi - self.hi[i])
        lo, hi = min(float(self.lo[i]), 0.0), max(float(self.hi[i]), 0.0)
        s = (hi - lo) / self.config.qmax if hi > lo else 1.0
        z = round(-lo / s)
        q = torch.clamp(_RoundSTE.apply(x / s) + z, 0, self.config.qmax)
        return (q - z) * s

    def _linear(self, i: int, x: torch.Tensor) -> torch.Tensor:
        lay: LinearSpec = self.program.layers[i]
        y = lay.apply(self._act(i, x), fake_weight(self.weights[i]))
        b = self.biases[i]
        return y + (b if lay.kind == "linear" else b.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program.run(x.float(), self._linear)

    def export(self) -> QuantModel:
        """The trained int8 model (weights quantized, activation ranges from the observers)."""
        layers = [
            LinearSpec(lay.name, w.detach().double(), b.detach().double(), lay.kind, lay.stride,
                       lay.padding, lay.dilation, lay.groups)
            for lay, w, b in zip(self.program.layers, self.weights, self.biases, strict=True)
        ]
        prog = Program(self.program.steps, layers, self.program.input, self.program.output)
        ranges = [(float(lo), float(hi)) for lo, hi in zip(self.lo, self.hi, strict=True)]
        return from_ranges(prog, ranges, self.config)


def qat(program: Program, x: torch.Tensor, y: torch.Tensor, config: QuantConfig,
        epochs: int = 1, lr: float = 1e-4, batch: int = 128,
        gen: torch.Generator | None = None) -> QuantModel:
    """Quantization-aware fine-tuning of ``program``; returns the exported int8 model."""
    fq = FakeQuantProgram(program, config)
    with torch.no_grad():  # initialise the observers on one batch before training moves them
        fq.train()
        fq(x[:batch])
    train_classifier(fq, x, y, epochs=epochs, lr=lr, batch=batch, gen=gen)
    return fq.export()
