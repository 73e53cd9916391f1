"""One-time masks on Z_{2^32} and secret channel permutations for the device's linear layers.

Masking (our variant of TSQP's one-time pad, ``case_study.py`` in seed 004):

1. The enclave holds a centered int8 activation ``c`` (``|c| <= 255``) and draws a fresh mask
   ``m`` uniform on Z_{2^32} from its mask PRG (AES-128-CTR keyed from the OS CSPRNG, a key
   used for masks only: ``rand.py``), one per element and per query.
2. It sends ``u = c + m mod 2^32`` (int32 on the wire). ``u`` is uniform and independent of ``c``:
   a one-time pad, so the device learns nothing about activations, not even statistically
   (TSQP's bounded mask ``x_q + otp`` with ``otp in [-127, 127]`` leaks ``x_q`` near the edges).
3. The device computes ``r = conv(u, W_dev) mod 2^32`` exactly: int32 wrapping arithmetic, which
   the ring layer (:mod:`secinfer.ring.narrow`) emulates in float64 with input-channel chunks
   small enough that every partial sum stays below 2^53.
4. The enclave subtracts the decode key ``conv(m, W_dev) mod 2^32`` (independent of the input, so
   computed ahead of time, offline) and gets ``conv(c, W_dev) mod 2^32``. Because
   ``|conv(c, W)| <= fan_in * qmax * 127 < 2^31`` (checked per layer when quantizing), the signed
   residue is the exact integer accumulator.

Permutation (beyond the seed): each layer's int8 weight rows are stored on the device in a secret
order ``pi`` (``W_dev = W_q[pi]``), so the device's result comes back channel-permuted and the
enclave undoes it; the next layer's weights expect the true order, so the device's copy of the
network is mis-wired between every pair of layers. A depthwise conv (groups == channels) has its
input permuted by the same ``pi`` (the enclave permutes the masked input before sending), since
each output channel reads only its own input channel. Other grouped convs keep the identity.

Threat model: the device is malicious and sees every message, the int8 weights in its order,
and the layer geometry. It never sees scales, zero points, biases, masks, permutations, or any
activation or output in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..mpc.prg import PRG
from ..ring.narrow import narrow_conv2d, narrow_linear
from ..ring.narrow import wrap as ring_wrap
from .program import LinearSpec, Program

__all__ = [
    "RING_BITS",
    "LayerSecret",
    "wrap",
    "ring_random",
    "ring_linear",
    "draw_secrets",
    "device_weight",
    "permute_input",
    "unpermute_output",
]

RING_BITS = 32


def wrap(t: torch.Tensor) -> torch.Tensor:
    """Signed representative in ``[-2^31, 2^31)`` of an int64 tensor mod 2^32."""
    return ring_wrap(t, RING_BITS)


def ring_random(shape: tuple[int, ...], prg: PRG) -> torch.Tensor:
    """Uniform elements of Z_{2^32} (int64, signed representatives), exactly uniform."""
    return prg.ring(shape, RING_BITS)


def ring_linear(layer: LinearSpec, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``conv(u, w) mod 2^32`` exactly, for int32/int64 ``u`` in the signed range; int32 out
    (the ring layer's :mod:`secinfer.ring.narrow`, with this layer's geometry).

    ``layer`` supplies only the geometry (stride, padding, groups), so the device can call this
    with a spec that carries no float weights.
    """
    if w.dtype != torch.int8:
        raise TypeError(f"device weights must be int8, got {w.dtype}")
    if layer.kind == "linear":
        out = narrow_linear(u, w, RING_BITS)
    else:
        try:
            out = narrow_conv2d(u, w, RING_BITS, layer.stride, layer.padding, layer.dilation,
                                layer.groups)
        except ValueError as e:
            raise ValueError(f"layer {layer.name!r}: {e}") from None
    return out.to(torch.int32)


@dataclass(frozen=True)
class LayerSecret:
    """Per-layer permutation: output rows in device order, and the input order it expects."""

    out_perm: torch.Tensor  # int64 (O,): device row j holds true row out_perm[j]
    in_perm: torch.Tensor | None  # int64 (C,) for depthwise convs, else None

    @property
    def inverse(self) -> torch.Tensor:
        return torch.argsort(self.out_perm)


def _is_depthwise(layer: LinearSpec) -> bool:
    return layer.kind == "conv" and layer.groups > 1 and layer.groups == layer.out_channels \
        and int(layer.weight.shape[1]) == 1


def draw_secrets(program: Program, prg: PRG, permute: bool = True) -> list[LayerSecret]:
    """Fresh permutations for every layer (identity for all when ``permute`` is False).

    ``prg`` must be keyed for permutations only (``rand.permutation_prg``)."""
    out = []
    for layer in program.layers:
        n = layer.out_channels
        grouped = layer.kind == "conv" and layer.groups > 1
        if not permute or (grouped and not _is_depthwise(layer)):
            out.append(LayerSecret(torch.arange(n), None))
            continue
        p = prg.shuffles(1, n)[0]
        out.append(LayerSecret(p, p if _is_depthwise(layer) else None))
    return out


def device_weight(w_q: torch.Tensor, secret: LayerSecret) -> torch.Tensor:
    return w_q[secret.out_perm].contiguous()


def permute_input(u: torch.Tensor, secret: LayerSecret) -> torch.Tensor:
    return u if secret.in_perm is None else u[:, secret.in_perm].contiguous()


def unpermute_output(r: torch.Tensor, secret: LayerSecret) -> torch.Tensor:
    return r[:, secret.inverse]
