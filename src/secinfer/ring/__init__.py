"""Ring Z_{2^64} as int64 tensors: fixed-point encoding and exact fast linear algebra.

* :class:`FixedPoint`: encode reals as ``round(x * 2^f)``, decode back.
* :func:`ring_matmul`, :func:`ring_linear`, :func:`ring_conv2d`, :func:`ring_mul`: results
  mod 2^64 exactly equal to naive int64 wrap-around arithmetic, via PyTorch's int64 kernels or
  float64 limb products (``method=``), see :mod:`secinfer.ring.ops`.
"""

from .fixed import DEFAULT_FRAC_BITS, FixedPoint
from .limbs import MAX_TERMS
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
]
