"""Int8 quantization for the enclave split (TSQP's Quantization Manager).

The quantized model is defined here once, and both the single-process reference and the split
(``enclave.py``) use these functions, so "bit-identical" has one meaning: the split must recover
every linear layer's integer accumulator exactly, after which the same float64 code runs.

Per linear layer ``i`` (conv or fully connected, BatchNorm folded in):

1. Activation in: asymmetric uint8 in the reduced range ``[0, qmax]``, ``qmax = 255 - r``:
   ``q = clamp(round(x / s_x) + z, 0, qmax)``; the device-side value is ``c = q - z``.
2. Weights: per-output-channel symmetric int8, ``W_q = clamp(round(W / s_w), -127, 127)``,
   ``s_w[o] = max|W[o]| / 127``.
3. Accumulator (exact integer): ``acc = conv(c, W_q)``; ``|acc| <= fan_in * qmax * 127``.
4. Out: ``y = acc * s_x * s_w[o] + bias[o]`` in float64; trusted-side ops (ReLU, pooling,
   residual adds) run in float64 and the next linear layer requantizes.

``r`` (TSQP's ``reduce_range``) trades accuracy for accumulator headroom; ``sweep_reduce_range``
measures that trade. Calibration (PTQ) takes activation min/max over a calibration set;
quantization-aware training (``qat.py``) learns weights that survive the rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .program import LinearSpec, Program

__all__ = [
    "QuantConfig",
    "ActQuant",
    "QuantModel",
    "quantize_weight",
    "act_params",
    "calibrate",
    "from_ranges",
    "exact_linear",
    "sweep_reduce_range",
]

_EXACT = 2.0**53  # float64 represents every integer below this


@dataclass(frozen=True)
class QuantConfig:
    """``reduce_range`` r: activations use ``[0, 255 - r]`` (TSQP default 0..224 sweep)."""

    reduce_range: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.reduce_range <= 253:
            raise ValueError(f"reduce_range must be in [0, 253], got {self.reduce_range}")

    @property
    def qmax(self) -> int:
        return 255 - self.reduce_range


@dataclass(frozen=True)
class ActQuant:
    scale: float
    zero_point: int


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: returns ``(W_q int8, s_w float64 (O,))``."""
    w = w.to(torch.float64)
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    view = scale.view(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w / view), -127, 127).to(torch.int8), scale


def act_params(lo: float, hi: float, qmax: int) -> ActQuant:
    """Asymmetric parameters covering ``[min(lo, 0), max(hi, 0)]`` with ``qmax + 1`` levels."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax if hi > lo else 1.0
    zp = int(min(max(round(-lo / scale), 0), qmax))
    return ActQuant(float(scale), zp)


def exact_linear(layer: LinearSpec, c: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """Integer conv/matmul of int64 ``c`` with int8 ``w_q``, exact (float64 with |sum| < 2^53)."""
    bound = float(c.abs().max()) if c.numel() else 0.0
    if layer.fan_in * bound * 127.0 >= _EXACT:
        raise ValueError(f"layer {layer.name!r}: accumulator bound exceeds 2^53")
    return layer.apply(c.to(torch.float64), w_q.to(torch.float64)).to(torch.int64)


@dataclass
class QuantModel:
    """An int8 model: the float program's geometry plus integer weights and scales."""

    program: Program
    config: QuantConfig
    w_q: list[torch.Tensor]  # int8, per layer
    w_scale: list[torch.Tensor]  # float64 (O,)
    act: list[ActQuant]

    def __post_init__(self) -> None:
        n = len(self.program.layers)
        if not (len(self.w_q) == len(self.w_scale) == len(self.act) == n):
            raise ValueError("QuantModel needs one weight, scale and activation entry per layer")
        for layer in self.program.layers:
            if layer.fan_in * self.config.qmax * 127 >= 2**31:
                raise ValueError(
                    f"layer {layer.name!r}: fan-in {layer.fan_in} x {self.config.qmax} x 127 "
                    "may overflow a 32-bit accumulator; raise reduce_range"
                )

    # -- the three pieces of a quantized linear layer (shared with the enclave)
    def quantize_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Float activation -> centered integers ``q - z`` (int64)."""
        a = self.act[i]
        q = torch.clamp(torch.round(x.to(torch.float64) / a.scale) + a.zero_point,
                        0, self.config.qmax)
        return q.to(torch.int64) - a.zero_point

    def dequantize(self, i: int, acc: torch.Tensor) -> torch.Tensor:
        layer = self.program.layers[i]
        s = self.w_scale[i] * self.act[i].scale
        shape = (1, -1) if layer.kind == "linear" else (1, -1, 1, 1)
        return acc.to(torch.float64) * s.view(shape) + layer.bias.view(shape)

    def linear_int8(self, i: int, x: torch.Tensor) -> torch.Tensor:
        layer = self.program.layers[i]
        return self.dequantize(i, exact_linear(layer, self.quantize_input(i, x), self.w_q[i]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-process int8 inference (the reference the split must match bit for bit)."""
        return self.program.run(x.to(torch.float64), self.linear_int8)


def _ranges(program: Program, batches: Iterable[torch.Tensor]) -> list[tuple[float, float]]:
    lo = [math.inf] * len(program.layers)
    hi = [-math.inf] * len(program.layers)

    def observe(i: int, x: torch.Tensor) -> torch.Tensor:
        lo[i] = min(lo[i], float(x.min()))
        hi[i] = max(hi[i], float(x.max()))
        return program.layers[i].forward(x)

    seen = 0
    with torch.no_grad():
        for xb in batches:
            program.run(xb.to(torch.float64), observe)
            seen += 1
    if not seen:
        raise ValueError("calibration needs at least one batch")
    return list(zip(lo, hi, strict=True))


def from_ranges(program: Program, ranges: list[tuple[float, float]],
                config: QuantConfig) -> QuantModel:
    """Quantize weights and take activation parameters from given input ranges."""
    wq, ws = zip(*(quantize_weight(layer.weight) for layer in program.layers), strict=True)
    act = [act_params(lo, hi, config.qmax) for lo, hi in ranges]
    return QuantModel(program, config, list(wq), list(ws), act)


def calibrate(program: Program, batches: Iterable[torch.Tensor],
              config: QuantConfig | None = None) -> QuantModel:
    """Post-training quantization: min/max of each linear layer's input over ``batches``."""
    return from_ranges(program, _ranges(program, batches), config or QuantConfig())


def sweep_reduce_range(
    program: Program, calib: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
    values: Iterable[int], batch: int = 500,
) -> list[dict[str, float]]:
    """Accuracy of the int8 model against ``r``; first row is the float model (r = -1)."""
    def accuracy(fn: object) -> float:
        correct = 0
        for s in range(0, len(x), batch):
            correct += int((fn(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum())  # type: ignore[operator]
        return 100.0 * correct / len(x)

    ranges = _ranges(program, calib)
    with torch.no_grad():
        rows = [{"reduce_range": -1.0, "qmax": float("nan"),
                 "accuracy": accuracy(lambda t: program.run(t.double()))}]
        for r in values:
            qm = from_ranges(program, ranges, QuantConfig(int(r)))
            rows.append({"reduce_range": float(r), "qmax": float(255 - r),
                         "accuracy": accuracy(qm.forward)})
    return rows
