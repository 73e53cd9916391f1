"""A cryptographic pseudo-random generator producing torch tensors.

AES-128 in counter mode (pyca/cryptography) keyed by a 16-byte seed from the OS CSPRNG. Two
parties holding the same seed draw identical streams as long as they request the same shapes in
the same order, which is how correlated randomness is "seed-compressed": whatever one party can
derive from a shared seed is never sent. There are no default or hard-coded seeds.
"""

from __future__ import annotations

import math
import secrets

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["PRG", "new_seed"]

SEED_BYTES = 16


def new_seed() -> bytes:
    """A fresh PRG key from the OS CSPRNG (``secrets``)."""
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

    # -- sampling helpers for secret values (masks, shuffles, fingerprints, checksum vectors).
    # Each is either exactly uniform or has a stated bias bound; none calls a torch RNG.

    def uniform_bits(self, shape: tuple[int, ...] | torch.Size, bits: int) -> torch.Tensor:
        """Integers uniform on ``[0, 2^bits)`` (int64), ``0 <= bits <= 63``. Exactly uniform.

        The low ``bits`` bits of a uniform 64-bit word are uniform and independent of the rest.
        """
        if not 0 <= bits <= 63:
            raise ValueError(f"bits must be in [0, 63], got {bits}")
        return self.int64(shape) & ((1 << bits) - 1)

    def ring(self, shape: tuple[int, ...] | torch.Size, bits: int = 32) -> torch.Tensor:
        """Uniform elements of Z_{2^bits} as signed representatives in ``[-2^(bits-1),
        2^(bits-1))`` (int64), ``1 <= bits <= 64``. Exactly uniform (a bijection of
        ``bits`` uniform bits)."""
        if not 1 <= bits <= 64:
            raise ValueError(f"bits must be in [1, 64], got {bits}")
        if bits == 64:
            return self.int64(shape)
        if bits == 32:  # 4 keystream bytes per element, not 8
            n = math.prod(int(d) for d in shape)
            return self.bytes(4 * n).view(torch.int32).to(torch.int64).reshape(tuple(shape))
        half = 1 << (bits - 1)
        return self.uniform_bits(shape, bits) - half

    def uniform_int(self, shape: tuple[int, ...] | torch.Size, low: int, high: int) -> torch.Tensor:
        """Integers uniform on ``[low, high)`` (int64), exactly, by rejection sampling.

        Draws ``w = ceil(log2(high - low))``-bit words and keeps those below ``high - low``;
        each word is accepted with probability > 1/2, so the expected number of rounds is
        below 2 and the loop stops with overwhelming probability. No modulo bias.
        """
        span = high - low
        if span < 1 or span > 1 << 62:
            raise ValueError(f"need 1 <= high - low <= 2^62, got [{low}, {high})")
        n = math.prod(int(d) for d in shape)
        bits = max(0, (span - 1).bit_length())
        out = torch.empty(n, dtype=torch.int64)
        filled = 0
        while filled < n:
            need = n - filled
            cand = self.uniform_bits((2 * need + 16,), bits)
            cand = cand[cand < span][:need]
            out[filled:filled + cand.numel()] = cand
            filled += cand.numel()
        return (out + low).reshape(tuple(shape))

    def unit_float64(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """float64 uniform on the grid ``{k / 2^53 : 0 <= k < 2^53}``, i.e. on ``[0, 1)``."""
        return self.uniform_bits(shape, 53).to(torch.float64) * (2.0 ** -53)

    def normal(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Standard normal float64 samples (Box-Muller on 53-bit uniforms).

        ``1 - u`` lies in ``(0, 1]``, so the logarithm is finite; the tails are cut at
        ``sqrt(2 * 53 ln 2) ~ 8.6`` standard deviations (probability ~1e-17), the only departure
        from a Gaussian beyond float64 rounding.
        """
        n = math.prod(int(d) for d in shape)
        m = (n + 1) // 2
        u1 = 1.0 - self.unit_float64((m,))
        u2 = self.unit_float64((m,))
        rad = torch.sqrt(-2.0 * torch.log(u1))
        z = torch.cat([rad * torch.cos(2 * math.pi * u2), rad * torch.sin(2 * math.pi * u2)])
        return z[:n].reshape(tuple(shape))

    def shuffles(self, rows: int, width: int) -> torch.Tensor:
        """``rows`` independent uniform permutations of ``range(width)`` (int64 ``[rows, width]``).

        Sorts by a 64-bit random key, ties broken by a second, independent 62-bit key; the
        order is non-uniform only if both keys tie for some pair, so its statistical distance
        from a uniform permutation is at most ``C(width, 2) 2^-126`` per row.
        """
        k1 = self.int64((rows, width))
        k2 = self.uniform_bits((rows, width), 62)
        # lexicographic sort on (k1, k2): a stable sort by the minor key, then by the major key
        idx = torch.argsort(k2, dim=1, stable=True)
        major = torch.gather(k1, 1, idx)
        return torch.gather(idx, 1, torch.argsort(major, dim=1, stable=True))
