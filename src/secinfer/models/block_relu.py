"""Plaintext block ReLU: one sign per patch, per-channel patch sizes.

Paper: Gorski, Jevnisek, Avidan, "Securing Neural Networks with Knapsack Optimization",
arXiv 2304.10442 (seed code ``research/bReLU.py::BlockRelu``).

Semantics (the secure engine must match these exactly):

1. Channel ``c`` has a block size ``(h, w)``. Two sentinels: ``(0, 1)`` is the identity (the
   channel passes unchanged, no comparison) and ``(1, 0)`` is the zero channel (output 0, no
   comparison). Every other block has ``h >= 1`` and ``w >= 1``; ``(1, 1)`` is the ordinary ReLU.
2. The channel is cut into ``ceil(H / h) x ceil(W / w)`` patches starting at the top-left corner;
   patches on the bottom/right border are smaller (ceil mode, like ``avg_pool2d(ceil_mode=True)``).
3. Each patch's gate is ``1[sum of the patch > 0]``. The seed uses the sign of the patch *mean*;
   the mean is the sum divided by the (positive) number of elements in the patch, so its sign is
   the sign of the sum. The secure side therefore computes the sum on shares, which is local and
   exact, and never divides. A patch whose sum is exactly 0 gates to 0 (like ReLU at 0).
4. Every element of the patch is multiplied by the gate.
5. Gradients: the gate is a constant (computed under ``no_grad``), so ``d out / d x = gate``,
   the straight-through rule of the seed (``x * mask`` with the mask detached).

DReLU cost of a channel: ``ceil(H / h) * ceil(W / w)`` for a real block, 0 for both sentinels.

Threat model: none here; this is the plaintext reference used for training and for checking the
secure implementation.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IDENTITY", "ZERO", "BlockReLU", "block_cost", "block_gate", "block_relu", "check_block_sizes",
]

IDENTITY = (0, 1)
ZERO = (1, 0)


def check_block_sizes(block_sizes: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Validate a ``[C, 2]`` integer tensor of block sizes and return it as int32 (CPU)."""
    if not isinstance(block_sizes, torch.Tensor):
        block_sizes = torch.as_tensor(block_sizes)
    if block_sizes.ndim != 2 or block_sizes.shape[1] != 2:
        raise ValueError(f"block sizes must have shape [C, 2], got {list(block_sizes.shape)}")
    if block_sizes.is_floating_point() or block_sizes.is_complex():
        raise ValueError(f"block sizes must be integers, got {block_sizes.dtype}")
    if channels is not None and block_sizes.shape[0] != channels:
        raise ValueError(f"block sizes cover {block_sizes.shape[0]} channels, expected {channels}")
    bs = block_sizes.to(device="cpu", dtype=torch.int32)
    h, w = bs[:, 0], bs[:, 1]
    sentinel = ((h == 0) & (w == 1)) | ((h == 1) & (w == 0))
    bad = ~sentinel & ((h < 1) | (w < 1))
    if bool(bad.any()):
        c = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"channel {c}: invalid block size {bs[c].tolist()} (use h, w >= 1, or [0, 1] for "
            f"identity, [1, 0] for zero)"
        )
    return bs


def block_cost(block: tuple[int, int], height: int, width: int) -> int:
    """DReLUs one channel of size ``height x width`` needs with this block size."""
    h, w = block
    if (h, w) in (IDENTITY, ZERO):
        return 0
    if h < 1 or w < 1:
        raise ValueError(f"invalid block size {[h, w]}")
    return -(-height // h) * -(-width // w)


def _patch_gate(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Gate ``1[patch sum > 0]`` for ``x [N, C, H, W]``, expanded back to ``[N, C, H, W]``."""
    n, c, height, width = x.shape
    if h == 1 and w == 1:
        return (x > 0).to(x.dtype)
    ph, pw = -(-height // h), -(-width // w)
    # Zero padding on the bottom/right leaves each border patch's sum equal to the sum of its
    # real elements, which is exactly the ceil-mode patch.
    xp = F.pad(x, (0, pw * w - width, 0, ph * h - height))
    sums = xp.reshape(n, c, ph, h, pw, w).sum(dim=(3, 5))
    gate = (sums > 0).to(x.dtype)
    full = gate[:, :, :, None, :, None].expand(n, c, ph, h, pw, w).reshape(n, c, ph * h, pw * w)
    return full[:, :, :height, :width]


def block_gate(x: torch.Tensor, block_sizes: torch.Tensor) -> torch.Tensor:
    """The 0/1 gate tensor of :func:`block_relu` (no gradient)."""
    if x.ndim != 4:
        raise ValueError(f"block ReLU needs a 4-D [N, C, H, W] input, got shape {list(x.shape)}")
    bs = check_block_sizes(block_sizes, x.shape[1])
    with torch.no_grad():
        gate = torch.empty_like(x)
        uniq, inverse = torch.unique(bs, dim=0, return_inverse=True)
        for g, (h, w) in enumerate(uniq.tolist()):
            idx = (inverse == g).nonzero().flatten().to(x.device)
            if (h, w) == IDENTITY:
                gate[:, idx] = 1
            elif (h, w) == ZERO:
                gate[:, idx] = 0
            else:
                gate[:, idx] = _patch_gate(x[:, idx], h, w)
    return gate


def block_relu(x: torch.Tensor, block_sizes: torch.Tensor) -> torch.Tensor:
    """Block ReLU of ``x [N, C, H, W]`` with per-channel ``block_sizes [C, 2]`` (see module doc)."""
    return x * block_gate(x, block_sizes)


# Recorded as one call_function node by torch.fx instead of being traced into, so a model holding
# BlockReLU modules stays symbolically traceable (the body loops over the distinct block sizes).
torch.fx.wrap("block_relu")


class BlockReLU(nn.Module):
    """``nn.ReLU`` replacement with per-channel block sizes (``block_sizes``: int32 ``[C, 2]``).

    ``block_sizes`` is a persistent buffer, so a fine-tuned state dict records its own spec.
    Capture code can recognise the module by type and read ``block_sizes`` directly.
    """

    block_sizes: torch.Tensor

    def __init__(self, block_sizes: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("block_sizes", check_block_sizes(block_sizes).clone())

    @property
    def channels(self) -> int:
        return int(self.block_sizes.shape[0])

    def drelu_count(self, height: int, width: int) -> int:
        """DReLUs per image for an activation of ``height x width``."""
        return sum(block_cost((h, w), height, width) for h, w in self.block_sizes.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_relu(x, self.block_sizes)

    def extra_repr(self) -> str:
        uniq, counts = torch.unique(self.block_sizes, dim=0, return_counts=True)
        parts = [f"{h}x{w}:{n}" for (h, w), n in zip(uniq.tolist(), counts.tolist(), strict=True)]
        return f"channels={self.channels}, blocks={{{', '.join(parts)}}}"
