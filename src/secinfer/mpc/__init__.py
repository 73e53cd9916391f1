"""3-party secret-sharing engine: shares mod 2^64, helper-dealt randomness, comparisons."""

from .compare import (
    argmax_along,
    check_drelu_window,
    drelu,
    drelu_bytes,
    max_along,
    maxpool2d,
    relu,
    relu6,
)
from .config import HELPER, P0, P1, MPCConfig, NonlinearConfig
from .engine import MPCEngine, PreparedWeight, decode, encode
from .prg import PRG, new_seed
from .share import Share, cat

__all__ = [
    "HELPER", "P0", "P1", "MPCConfig", "NonlinearConfig", "MPCEngine", "PreparedWeight", "PRG",
    "Share",
    "argmax_along", "cat", "check_drelu_window", "decode", "drelu", "drelu_bytes", "encode",
    "max_along", "maxpool2d", "new_seed", "relu", "relu6",
]
