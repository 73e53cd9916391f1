"""Rings Z_{2^64} (and narrower Z_{2^k}) as int64 tensors: fixed-point encoding and exact
fast linear algebra. The one ring layer of the MPC engine (mod 2^64) and of the TEE's masks
(mod 2^32, :mod:`.narrow`).

* :class:`FixedPoint`: encode reals as ``round(x * 2^f)``, decode back.
* :func:`ring_matmul`, :func:`ring_linear`, :func:`ring_conv2d`, :func:`ring_mul`: results
  mod 2^64 exactly equal to naive int64 wrap-around arithmetic, via PyTorch's int64 kernels or
  float64 limb products (``method=``), see :mod:`secinfer.ring.ops`.
* :func:`wrap`, :func:`narrow_linear`, :func:`narrow_conv2d`: mod 2^k for k < 64 with int8
  weights, in one float64 kernel call per chunk, see :mod:`secinfer.ring.narrow`.
"""

from .fixed import DEFAULT_FRAC_BITS, FixedPoint
from .limbs import MAX_TERMS
from .narrow import narrow_conv2d, narrow_linear, wrap
from .ops import RingMethod, resolve_method, ring_conv2d, ring_linear, ring_matmul, ring_mul

__all__ = [
    "DEFAULT_FRAC_BITS",
    "FixedPoint",
    "MAX_TERMS",
    "RingMethod",
    "resolve_method",
    "ring_conv2d",
    "ring_linear",
    "ring_matmul",
    "ring_mul",
    "narrow_conv2d",
    "narrow_linear",
    "wrap",
]
