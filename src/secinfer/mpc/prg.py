"""A cryptographic pseudo-random generator producing torch tensors.

AES-128 in counter mode (pyca/cryptography) keyed by a 16-byte seed from the OS CSPRNG. Two
parties holding the same seed draw identical streams as long as they request the same shapes in
the same order, which is how correlated randomness is "seed-compressed": whatever one party can
derive from a shared seed is never sent. There are no default or hard-coded seeds.
"""

from __future__ import annotations

import secrets

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["PRG", "new_seed"]

SEED_BYTES = 16


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


class PRG:
    """Deterministic stream of random tensors from a secret seed (AES-128-CTR)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        self._zeros = b""
        self.drawn = 0

    def bytes(self, n: int) -> torch.Tensor:
        """``n`` random bytes as a uint8 tensor (the CTR keystream, encrypted in place)."""
        self.drawn += n
        if n == 0:
            return torch.empty(0, dtype=torch.uint8)
        if len(self._zeros) < n:
            self._zeros = bytes(max(n, 2 * len(self._zeros)))
        out = torch.empty(n + 15, dtype=torch.uint8)  # update_into needs a block of slack
        self._enc.update_into(memoryview(self._zeros)[:n], out.numpy().data.cast("B"))
        return out[:n]

    def int64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_{2^64} (as int64, two's complement)."""
        n = 1
        for d in shape:
            n *= int(d)
        return self.bytes(8 * n).view(torch.int64).reshape(tuple(shape))

    def mod(self, shape: tuple[int, ...] | torch.Size, p: int) -> torch.Tensor:
        """Elements of Z_p (int64). Bias is below p / 2^63, negligible for small p."""
        x = self.int64(shape)
        return torch.remainder(x, p)

    def bits(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform bits as int64 0/1."""
        return self.int64(shape) & torch.tensor(1, dtype=torch.int64)

    def permutations(self, rows: int, width: int) -> torch.Tensor:
        """``rows`` independent uniform permutations of ``range(width)`` (int64 [rows, width])."""
        keys = self.int64((rows, width))
        return torch.argsort(keys, dim=1)
