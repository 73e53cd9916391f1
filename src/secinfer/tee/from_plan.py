"""The enclave split's one capture: a :class:`Program` built from the MPC capture's plan.

The TEE has no tracer of its own; every model (the shipped CNNs and users' models alike) goes
through the same capture as the secure (MPC) engine:

1. :func:`secinfer.models.capture.capture` traces the model (torch.fx, or torch.export for a
   forward with shape checks), folds every batch norm it can, and turns a batch norm it cannot
   fold (after a ReLU) into a depthwise 1x1 conv; an op it cannot place raises
   :class:`~secinfer.errors.UnsupportedOpError` naming the op and the node;
2. every ``conv2d`` / ``linear`` op of the plan becomes a :class:`LinearSpec` (device side,
   int8 on masked inputs);
3. every plan op that a native trusted-side step computes exactly (ReLU, ReLU6, max and
   average pools, the global average pool, flatten, residual add, identity: :func:`_native`)
   becomes that step, as fast as a hand-written program;
4. every other op becomes a trusted-side step ``plan_op`` that runs the plan op's float64
   reference executor (:func:`secinfer.models.secure.run_plain`) in the enclave; its
   parameters (and a layer norm's weights) are JSON in the bundle like every other step's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedOpError
from ..models.capture import capture as capture_plan
from ..models.plan import Plan, PlanOp
from ..models.secure import run_plain
from .program import LinearSpec, Program, Step

__all__ = ["UnsupportedOp", "program_from_plan", "capture_any", "run_plan_op"]

# a model op the enclave split cannot place: the MPC capture's error, under the TEE's old name
UnsupportedOp = UnsupportedOpError


def run_plan_op(*xs: torch.Tensor, kind: str, name: str, params: dict[str, Any],
                w: Any = None, b: Any = None) -> torch.Tensor:
    """Trusted-side executor of one plan op (float64, in the enclave)."""
    names = [f"__in{i}" for i in range(len(xs))]
    weights: dict[str, torch.Tensor] = {}
    roles: dict[str, list[int]] = {}
    if w is not None and b is not None:
        weights = {f"{name}.w": torch.tensor(w, dtype=torch.float64),
                   f"{name}.b": torch.tensor(b, dtype=torch.float64)}
        roles = {"w": list(weights[f"{name}.w"].shape), "b": list(weights[f"{name}.b"].shape)}
    sub = Plan(input_name="__in0", input_shape=[], output=name,
               ops=[PlanOp(kind, name, names, dict(params), roles)])
    extra = {n: x for n, x in zip(names, xs, strict=True)}
    return run_plain(sub, weights, xs[0], extra_inputs=extra).to(xs[0].dtype)


def _linear(op: PlanOp, weights: dict[str, torch.Tensor]) -> LinearSpec:
    w, b = weights[f"{op.name}.w"].double(), weights[f"{op.name}.b"].double()
    if op.kind == "linear":
        return LinearSpec(op.name, w, b, "linear")
    p = op.params
    return LinearSpec(op.name, w, b, "conv", tuple(p["stride"]), tuple(p["padding"]),
                      tuple(p["dilation"]), int(p["groups"]))


def _native(op: PlanOp) -> tuple[str, dict[str, Any]] | None:
    """The trusted-side step (``program._TRUSTED``) that computes plan op ``op`` exactly as the
    plan's reference executor (:func:`secinfer.models.secure.run_plain`) does, or None.

    The capture refuses max pools with ``ceil_mode`` or dilation and average pools with
    ``ceil_mode``, ``count_include_pad=False`` or a divisor override, so the plan's
    kernel / stride / padding are the whole geometry of its pools.
    """
    p = op.params
    if op.kind in ("relu", "relu6"):
        return op.kind, {}
    if op.kind == "maxpool2d":
        return "maxpool", {"kernel_size": tuple(p["kernel"]), "stride": tuple(p["stride"]),
                           "padding": tuple(p["padding"]), "dilation": (1, 1),
                           "ceil_mode": False}
    if op.kind == "avgpool2d":
        return "avgpool", {"kernel_size": tuple(p["kernel"]), "stride": tuple(p["stride"]),
                           "padding": tuple(p["padding"]), "ceil_mode": False,
                           "count_include_pad": True}
    if op.kind == "global_avgpool":  # the mean over H and W, keeping both (1 x 1)
        return "adaptive_avgpool", {"output_size": (1, 1)}
    if op.kind == "flatten":
        return "flatten", {"start_dim": int(p["start_dim"])}
    if op.kind == "add" and len(op.inputs) == 2:
        return "add", {}
    if op.kind == "identity" and len(op.inputs) == 1:
        return "identity", {}
    return None


def program_from_plan(plan: Plan, weights: dict[str, torch.Tensor],
                      shapes: dict[str, int] | None = None) -> Program:
    """The enclave program of a captured plan (see the module docstring)."""
    steps: list[Step] = []
    layers: list[LinearSpec] = []
    alias: dict[str, str] = {}  # identity ops: the value they forward

    def src(names: list[str]) -> tuple[str, ...]:
        return tuple(alias.get(n, n) for n in names)

    for op in plan.ops:
        ins = src(op.inputs)
        if op.kind in ("conv2d", "linear"):
            if op.kind == "linear" and shapes is not None and shapes.get(op.inputs[0], 2) != 2:
                raise UnsupportedOp(
                    f"linear layer {op.name!r} on a {shapes[op.inputs[0]]}-d input: the "
                    "enclave split's device runs 2-d linear layers (flatten the tokens first)",
                    op.kind, op.name)
            layers.append(_linear(op, weights))
            steps.append(Step("linear", ins, op.name, {}, len(layers) - 1))
            continue
        if op.kind == "identity" and len(ins) == 1 and op.name != plan.output:
            alias[op.name] = ins[0]
            continue
        native = _native(op)
        if native is not None:
            steps.append(Step(native[0], ins, op.name, native[1]))
            continue
        attrs: dict[str, Any] = {"kind": op.kind, "name": op.name, "params": op.params}
        if op.weights:
            attrs["w"] = weights[f"{op.name}.w"].tolist()
            attrs["b"] = weights[f"{op.name}.b"].tolist()
        steps.append(Step("plan_op", ins, op.name, attrs))
    return Program(steps, layers, plan.input_name, plan.output)


def capture_any(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> Program:
    """Trace ``model`` for inputs ``[batch, *input_shape]`` with the MPC capture and build its
    enclave program."""
    plan, weights = capture_plan(model, input_shape)
    shapes: dict[str, list[int]] = {plan.input_name: [1, *plan.input_shape]}
    zero = {k: torch.zeros_like(v) for k, v in weights.items()}
    run_plain(plan, zero, torch.zeros((1, *plan.input_shape), dtype=torch.float64),
              shapes=shapes)  # the rank of every value, for the device's 2-d linear layers
    return program_from_plan(plan, weights, {k: len(v) for k, v in shapes.items()})


def _check_data(x: torch.Tensor, input_shape: tuple[int, ...] | list[int], what: str) -> None:
    if x.dim() != len(input_shape) + 1 or list(x.shape[1:]) != list(input_shape):
        raise ValueError(f"{what} is {list(x.shape)}, the model takes "
                         f"[n, {', '.join(map(str, input_shape))}]: refusing to report on a "
                         "data set that does not match the model's input")


def provision_model(model: nn.Module, input_shape: tuple[int, ...] | list[int], out: Any,
                    calib: torch.Tensor, data: tuple[torch.Tensor, torch.Tensor | None] | None
                    = None, reduce_range: int = 0, permute: bool = True) -> dict[str, Any]:
    """Capture any model, quantize it on ``calib`` (the owner's samples), draw the secrets and
    write ``out/enclave`` and ``out/device``; with ``data`` (x, labels) report the float and
    int8 accuracy on it (refused when x does not match ``input_shape``)."""
    from pathlib import Path

    from .bundle import provision
    from .qat import accuracy
    from .quantize import QuantConfig, calibrate

    _check_data(calib, input_shape, "the calibration set")
    if data is not None:
        _check_data(data[0], input_shape, "the data file's 'x'")
    prog = capture_any(model, input_shape)
    qm = calibrate(prog, [calib.float()], QuantConfig(reduce_range))
    bundle = provision(qm, permute=permute)
    out = Path(out)
    bundle.save(out / "enclave")
    bundle.device_bundle().save(out / "device")
    report: dict[str, Any] = {"layers": len(prog.layers), "steps": len(prog.steps),
                              "reduce_range": reduce_range, "permute": permute,
                              "enclave": str(out / "enclave"), "device": str(out / "device")}
    if data is not None:
        x, y = data
        _check_data(x, input_shape, "the data file's 'x'")
        if y is not None:
            report["data_size"] = len(x)
            report["float_accuracy"] = accuracy(lambda t: model(t.float()), x.float(), y)
            report["int8_accuracy"] = accuracy(qm.forward, x.float(), y)
    return report
