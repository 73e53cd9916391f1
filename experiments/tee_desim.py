"""Parameter de-similarity and the model-stealing experiment (TSQP component 2, seed 004).

The seed's ``desimilarity()`` returns 0 ("coming soon"); this is our construction.

Idea: the enclave already holds each layer's per-channel scale, so the scale may be *signed* and
*learned*. We parametrise every linear layer as ``W = diag(g) V`` with ``V`` the tensor the
device will hold (int8 after quantization) and ``g`` a secret per-channel gain, initialised to
random signs. Training minimises

    L = CE(f_true(x), y) + lambda * (log K - H(softmax(f_thief(x))))

where ``f_true`` uses ``(g, V, bias)`` and ``f_thief`` is the network a thief builds from the
device's view alone: ``V`` rescaled per layer to a standard initialisation, no biases, no gains
(the information-bottleneck flavour: the device-side view should carry no label information,
pushed here at the output, where it is cheap to measure). The true model keeps its accuracy; the
device's weights become a poor starting point. Combined with the secret row permutations
(``secinfer/tee/mask.py``), the thief also faces a mis-wired network.

Stealing experiment (:func:`steal`): an attacker with ``frac`` of the training data fine-tunes a
float network of the public architecture, initialised from (a) nothing (scratch), (b) the full
int8 model with scales and biases (no shielding: an upper reference), (c) the device's int8
weights without scales or biases, (d) the same with secret row permutations, (e) the
de-similarity-trained model's device weights with permutations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from secinfer.mpc.prg import PRG, new_seed
from secinfer.tee.mask import LayerSecret
from secinfer.tee.program import LinearSpec, Program
from secinfer.tee.qat import _RoundSTE, accuracy, train_classifier
from secinfer.tee.quantize import QuantConfig, QuantModel, _ranges, act_params, quantize_weight

__all__ = ["DesimProgram", "desim_train", "thief_init", "steal"]


def _fake_rows(v: torch.Tensor) -> torch.Tensor:
    amax = v.detach().reshape(v.shape[0], -1).abs().amax(1).clamp_min(1e-12)
    s = (amax / 127.0).view(-1, *([1] * (v.dim() - 1)))
    return torch.clamp(_RoundSTE.apply(v / s), -127, 127) * s


def _std_scale(v: torch.Tensor) -> torch.Tensor:
    """Rescale a device tensor to PyTorch's default init spread (the thief's best guess)."""
    fan_in = v[0].numel()
    target = 1.0 / math.sqrt(3.0 * fan_in)
    return v * (target / v.std().clamp_min(1e-12))


class DesimProgram(nn.Module):
    """``W = diag(g) V``: trainable device tensors ``V``, secret signed gains ``g``, biases."""

    def __init__(self, program: Program) -> None:
        super().__init__()
        self.program = program
        # the initial gain signs become part of the secret scales: drawn from a CSPRNG-keyed
        # AES-CTR PRG, not from the training generator (which only shuffles data)
        prg = PRG(new_seed())
        signs = [prg.uniform_bits((lay.out_channels,), 1).float() * 2.0 - 1.0
                 for lay in program.layers]
        shape = [(-1, *([1] * (lay.weight.dim() - 1))) for lay in program.layers]
        self.v: nn.ParameterList = nn.ParameterList(
            [nn.Parameter((lay.weight.float() * s.view(sh)).clone())
             for lay, s, sh in zip(program.layers, signs, shape, strict=True)])
        self.g: nn.ParameterList = nn.ParameterList([nn.Parameter(s.clone()) for s in signs])
        self.b: nn.ParameterList = nn.ParameterList([nn.Parameter(lay.bias.float().clone())
                                   for lay in program.layers])

    def _layer(self, i: int, x: torch.Tensor, thief: bool) -> torch.Tensor:
        lay = self.program.layers[i]
        v = _fake_rows(self.v[i])
        if thief:
            return lay.apply(x, _std_scale(v))
        y = lay.apply(x, v * self.g[i].view(-1, *([1] * (v.dim() - 1))))
        return y + (self.b[i] if lay.kind == "linear" else self.b[i].view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, thief: bool = False) -> torch.Tensor:
        return self.program.run(x.float(), lambda i, t: self._layer(i, t, thief))

    def export(self, calib: torch.Tensor, config: QuantConfig) -> QuantModel:
        """Int8 model whose device tensors are ``quant(V)`` and whose scales carry ``g``."""
        layers, wq, ws = [], [], []
        for lay, v, g, b in zip(self.program.layers, self.v, self.g, self.b, strict=True):
            q, s = quantize_weight(v.detach())
            g64 = g.detach().double()
            w_true = q.double() * (s * g64).view(-1, *([1] * (v.dim() - 1)))
            layers.append(LinearSpec(lay.name, w_true, b.detach().double(), lay.kind, lay.stride,
                                     lay.padding, lay.dilation, lay.groups))
            wq.append(q)
            ws.append(s * g64)
        prog = Program(self.program.steps, layers, self.program.input, self.program.output)
        act = [act_params(lo, hi, config.qmax) for lo, hi in _ranges(prog, [calib])]
        return QuantModel(prog, config, wq, ws, act)


def desim_train(program: Program, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
                epochs: int = 1, lam: float = 1.0, lr: float = 5e-4,
                batch: int = 128) -> DesimProgram:
    """Fine-tune ``program`` with the de-similarity objective (module docstring)."""
    model = DesimProgram(program)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    k = math.log(float(program.layers[-1].out_channels))
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            ce = nn.functional.cross_entropy(model(x[idx]), y[idx])
            p = torch.log_softmax(model(x[idx], thief=True), dim=1)
            ent = -(p.exp() * p).sum(1).mean()
            (ce + lam * (k - ent)).backward()
            opt.step()
    return model.eval()


def thief_init(model: nn.Module, qm: QuantModel, secrets: list[LayerSecret] | None,
               white_box: bool = False) -> nn.Module:
    """Load what the thief sees into ``model`` (same architecture, captured layer order).

    ``white_box``: true int8 weights times scales, with biases (no shielding). Otherwise the
    device's int8 rows (in the secret order when ``secrets`` is given), rescaled to the default
    init spread, biases zero.
    """
    mods = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if len(mods) != len(qm.w_q):
        raise ValueError(f"model has {len(mods)} linear layers, the int8 model {len(qm.w_q)}; "
                         "BatchNorm models are not supported by thief_init")
    with torch.no_grad():
        for i, mod in enumerate(mods):
            q = qm.w_q[i].double()
            if white_box:
                w = q * qm.w_scale[i].view(-1, *([1] * (q.dim() - 1)))
                mod.weight.copy_(w.to(mod.weight.dtype))
                if mod.bias is not None:
                    mod.bias.copy_(qm.program.layers[i].bias.to(mod.bias.dtype))
                continue
            if secrets is not None:
                q = q[secrets[i].out_perm]
            mod.weight.copy_(_std_scale(q).to(mod.weight.dtype))
            if mod.bias is not None:
                mod.bias.zero_()
    return model


def steal(make: type[nn.Module] | object, start: nn.Module | None, x: torch.Tensor,
          y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, epochs: int,
          gen: torch.Generator) -> float:
    """Fine-tune ``start`` (or a fresh ``make()`` model) on ``(x, y)``; test accuracy in %."""
    model = start if start is not None else make()  # type: ignore[operator]
    train_classifier(model, x, y, epochs=epochs, lr=1e-3, batch=64, gen=gen)
    return accuracy(model, xt, yt)
