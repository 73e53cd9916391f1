"""The enclave split's program: linear layers for the device, trusted-side ops, and its executor.

A :class:`Program` lists a model's ops in execution order: every ``linear`` step is an integer
conv / fully connected layer (a :class:`LinearSpec`, batch norm folded in) that the untrusted
device computes on masked inputs; every other step is a trusted-side op from ``_TRUSTED``
(ReLU, ReLU6, max / average / adaptive pooling, flatten, residual add, identity) that the
enclave runs in float64, or ``plan_op``, which runs any other captured plan op through the
plan's float64 reference executor. Programs are built by the one capture,
:func:`secinfer.models.capture.capture`, through :func:`secinfer.tee.from_plan.capture_any`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["LinearSpec", "Step", "Program"]


@dataclass
class LinearSpec:
    """One conv / fully-connected layer with BN folded in: ``y = conv(x, weight) + bias``."""

    name: str
    weight: torch.Tensor  # float64, conv: (O, I/groups, kh, kw); linear: (O, I)
    bias: torch.Tensor  # float64, (O,)
    kind: str  # "conv" or "linear"
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def fan_in(self) -> int:
        """Products summed into one output: bounds every accumulator (see ``mask.py``)."""
        return int(self.weight[0].numel())

    def apply(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The bias-free linear map with this layer's geometry (dtype follows ``x``)."""
        w = (self.weight if weight is None else weight).to(x.dtype)
        if self.kind == "linear":
            return x @ w.t()
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The float layer with bias."""
        b = self.bias.to(x.dtype)
        return self.apply(x) + (b if self.kind == "linear" else b.view(1, -1, 1, 1))


@dataclass(frozen=True)
class Step:
    """One op: ``output = op(*inputs)``; ``layer`` indexes ``Program.layers`` for linear ops."""

    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)
    layer: int | None = None


@dataclass
class Program:
    """A captured model: steps in execution order, linear layers, one input and one output."""

    steps: list[Step]
    layers: list[LinearSpec]
    input: str
    output: str

    def run(
        self,
        x: torch.Tensor,
        linear: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Execute; ``linear(i, x)`` computes linear layer ``i`` (default: float, with bias).

        Trusted-side ops run in the dtype of ``x``; the caller picks it (float64 on the
        enclave, so that its results do not depend on thread count or BLAS order).
        """
        lin = linear or (lambda i, t: self.layers[i].forward(t))
        env = {self.input: x}
        last_use = _last_use(self.steps)
        for idx, s in enumerate(self.steps):
            args = [env[n] for n in s.inputs]
            if s.op == "linear":
                assert s.layer is not None
                env[s.output] = lin(s.layer, args[0])
            else:
                env[s.output] = _TRUSTED[s.op](*args, **s.attrs)
            for n in s.inputs:  # free activations early: ResNet50 at batch 32 is large
                if last_use.get(n) == idx and n != self.output:
                    env.pop(n, None)
        return env[self.output]


def _last_use(steps: list[Step]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, s in enumerate(steps):
        for n in s.inputs:
            out[n] = i
    return out


def _maxpool(x: torch.Tensor, **a: object) -> torch.Tensor:
    return F.max_pool2d(x, **a)  # type: ignore[arg-type, call-overload]


def _avgpool(x: torch.Tensor, **a: object) -> torch.Tensor:
    return F.avg_pool2d(x, **a)  # type: ignore[arg-type]


def _adaptive(x: torch.Tensor, output_size: object) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, output_size)  # type: ignore[arg-type]


_TRUSTED: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x: torch.relu(x),
    "relu6": lambda x: torch.clamp(x, 0.0, 6.0),
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "adaptive_avgpool": _adaptive,
    "flatten": lambda x, start_dim=1: torch.flatten(x, start_dim),
    "add": lambda a, b: a + b,
    "identity": lambda x: x,
    "plan_op": lambda *xs, **a: _plan_op(*xs, **a),
}


def _plan_op(*xs: torch.Tensor, **a: object) -> torch.Tensor:
    from .from_plan import run_plan_op  # the captured-plan route (from_plan.py)

    return run_plan_op(*xs, **a)  # type: ignore[arg-type]
