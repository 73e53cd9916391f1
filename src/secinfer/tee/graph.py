"""Capture a PyTorch CNN as a flat program of linear layers and trusted-side ops.

The enclave split needs to know, for every op, whether it is an integer linear layer (conv or
fully connected: sent to the untrusted device) or anything else (kept on the trusted side). We
trace the model with ``torch.fx``, fold every BatchNorm into the convolution in front of it (a
frozen BN is an affine map per output channel, so it belongs to the layer's secret scale and
bias), and list the remaining nodes in execution order.

Supported ops: Conv2d (any stride, padding, dilation, groups), Linear, BatchNorm2d after a conv,
ReLU, ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout/Identity (eval: no-ops),
residual ``+``. Anything else is a :class:`UnsupportedOp` naming the node; support is added in
:func:`_trusted_step` (trusted side) or :func:`_linear_step` (device side).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedOpError

__all__ = ["LinearSpec", "Step", "Program", "UnsupportedOp", "capture"]


# a model op the enclave split cannot place: the same error as the MPC capture's
UnsupportedOp = UnsupportedOpError


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


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _linear_step(name: str, mod: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | None) -> LinearSpec:
    w = mod.weight.detach().to(torch.float64).clone()
    b = (mod.bias.detach().to(torch.float64).clone() if mod.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    if bn is not None:
        # BN(y) = gamma (y - mean) / sqrt(var + eps) + beta: an affine map per channel.
        assert bn.running_var is not None and bn.running_mean is not None
        g = (bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b))
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
        inv = g / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * inv.view(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean.double()) * inv + beta
    if isinstance(mod, nn.Linear):
        return LinearSpec(name, w, b, "linear")
    assert isinstance(mod, nn.Conv2d)
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        raise UnsupportedOp(f"conv {name!r}: only explicit zero padding is supported")
    return LinearSpec(name, w, b, "conv", _pair(mod.stride), _pair(mod.padding),
                      _pair(mod.dilation), int(mod.groups))


def _trusted_step(node: fx.Node, mod: nn.Module | None) -> tuple[str, dict]:
    t = node.target
    if mod is not None:
        if isinstance(mod, nn.ReLU):
            return "relu", {}
        if isinstance(mod, nn.ReLU6):
            return "relu6", {}
        if isinstance(mod, nn.MaxPool2d):
            return "maxpool", dict(kernel_size=mod.kernel_size, stride=mod.stride,
                                   padding=mod.padding, dilation=mod.dilation,
                                   ceil_mode=mod.ceil_mode)
        if isinstance(mod, nn.AvgPool2d):
            return "avgpool", dict(kernel_size=mod.kernel_size, stride=mod.stride,
                                   padding=mod.padding, ceil_mode=mod.ceil_mode,
                                   count_include_pad=mod.count_include_pad)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return "adaptive_avgpool", dict(output_size=mod.output_size)
        if isinstance(mod, nn.Flatten):
            if mod.end_dim != -1:
                raise UnsupportedOp(f"node {node.name!r}: Flatten with end_dim != -1")
            return "flatten", dict(start_dim=mod.start_dim)
        if isinstance(mod, nn.Dropout | nn.Identity):
            return "identity", {}
    elif t in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
        return "add", {}
    elif t in (torch.relu, F.relu):
        return "relu", {}
    elif t is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return "flatten", dict(start_dim=int(start))  # type: ignore[arg-type]
    what = type(mod).__name__ if mod is not None else getattr(t, "__name__", str(t))
    raise UnsupportedOp(
        f"op {what} at node {node.name!r} is not supported by the enclave split; add it to "
        "secinfer.tee.graph (_trusted_step for trusted-side ops, _linear_step for linear ones)"
    )


def capture(model: nn.Module) -> Program:
    """Trace ``model`` (in eval mode) into a :class:`Program` with BatchNorm folded."""
    model = model.eval()
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    steps: list[Step] = []
    layers: list[LinearSpec] = []
    alias: dict[str, str] = {}  # BN / no-op node name -> the value it stands for
    inp = out = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if inp is not None:
                raise UnsupportedOp("the enclave split supports models with a single input")
            inp = node.name
            continue
        if node.op == "output":
            out = alias.get(node.args[0].name, node.args[0].name)
            continue
        if node.op == "get_attr":
            raise UnsupportedOp(f"node {node.name!r} reads a raw parameter; use a module")
        ins = tuple(alias.get(a.name, a.name) for a in node.all_input_nodes)
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.Conv2d | nn.Linear):
            bn = _following_bn(node, modules)
            layers.append(_linear_step(str(node.target), mod, bn))
            name = node.name
            if bn is not None:
                alias[next(iter(node.users)).name] = name
            steps.append(Step("linear", ins, name, {}, len(layers) - 1))
            continue
        if isinstance(mod, nn.BatchNorm2d):
            if node.name not in alias:
                raise UnsupportedOp(
                    f"BatchNorm {node.name!r} does not follow a conv it can fold into")
            continue
        op, attrs = _trusted_step(node, mod)
        if op == "identity" and len(ins) == 1:
            alias[node.name] = ins[0]
            continue
        steps.append(Step(op, ins, node.name, attrs))
    if inp is None or out is None:
        raise UnsupportedOp("model graph has no input or no output")
    return Program(steps, layers, inp, out)


def _following_bn(node: fx.Node, modules: dict[str, nn.Module]) -> nn.BatchNorm2d | None:
    if len(node.users) != 1:
        return None
    (user,) = node.users
    mod = modules.get(str(user.target)) if user.op == "call_module" else None
    return mod if isinstance(mod, nn.BatchNorm2d) else None
