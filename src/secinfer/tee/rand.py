"""Where every secret random value of the enclave split comes from.

One source: the AES-128-CTR PRG of :mod:`secinfer.mpc.prg`, keyed by :func:`new_seed` (16 bytes
from the OS CSPRNG, ``secrets.token_bytes``), with a **separate key per purpose**:

=============== ================================================================ ===========
purpose         values                                                           drawn by
=============== ================================================================ ===========
``mask``        one-time pads on Z_{2^32}, one per element of every item sent     enclave
``shuffle``     the secret order of real items and fingerprints in a layer batch  enclave
``fingerprint`` the fingerprint values (Gaussian like real inputs)                enclave
``checksum``    the secret checksum vectors (never sent)                          enclave
``permutation`` the per-layer channel permutations (once, at provisioning)       model owner
=============== ================================================================ ===========

Keys are drawn when an :class:`EnclaveRandomness` is created (one per :class:`Enclave`), live
only in that process's memory and are never stored, logged or sent. Separate keys mean that the
stream of one purpose is independent of the others (computationally, under AES as a PRF): a
device that somehow learnt the checksum vectors (say, from a side channel) would still learn
nothing about masks, and the number of masks drawn does not shift where checksum vectors come
from in a shared stream. Nothing here is seeded from ``random``, numpy or a ``torch.Generator``
(whose Mersenne Twister keeps 32 bits of its seed and is predictable from its output);
``tests/test_randomness_sources.py`` enforces that statically for every module that draws secrets.

Training, QAT and experiments keep torch generators for **non-secret** choices (data shuffling,
weight initialisation, calibration subsets): :func:`secinfer.tee.qat.training_generator`.
"""

from __future__ import annotations

import torch

from ..mpc.prg import PRG, new_seed

__all__ = ["PURPOSES", "EnclaveRandomness", "permutation_prg", "CHECKSUM_ENTRY_BITS"]

PURPOSES = ("mask", "shuffle", "fingerprint", "checksum")
CHECKSUM_ENTRY_BITS = 16


def permutation_prg() -> PRG:
    """A PRG under a fresh key, for the channel permutations drawn at provisioning only."""
    return PRG(new_seed())


class EnclaveRandomness:
    """The enclave's secret randomness: one fresh AES-CTR key per purpose (see module doc).

    Subclass and override a method only in tests (e.g. a deliberately broken mask source, the
    negative control of ``tests/tee/test_view.py``); production code never passes one.
    """

    def __init__(self) -> None:
        self._prg = {p: PRG(new_seed()) for p in PURPOSES}

    def prg(self, purpose: str) -> PRG:
        if purpose not in self._prg:
            raise ValueError(f"unknown randomness purpose {purpose!r}; known: {PURPOSES}")
        return self._prg[purpose]

    def drawn(self) -> dict[str, int]:
        """Bytes drawn so far per purpose (for accounting and tests)."""
        return {p: g.drawn for p, g in self._prg.items()}

    def masks(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One-time pads, uniform on Z_{2^32} (int64 signed representatives), exactly uniform."""
        return self._prg["mask"].ring(shape, 32)

    def shuffles(self, rows: int, width: int) -> torch.Tensor:
        """``rows`` uniform permutations of ``range(width)`` (distance from uniform
        <= C(width, 2) 2^-126 each)."""
        return self._prg["shuffle"].shuffles(rows, width)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal float64 draws for fingerprint values."""
        return self._prg["fingerprint"].normal(shape)

    def checksum_vectors(self, trials: int, checksums: int, out_channels: int,
                         bits: int = CHECKSUM_ENTRY_BITS) -> torch.Tensor:
        """``(T, k, O)`` int64 entries uniform on ``[0, 2^bits)``, exactly uniform."""
        return self._prg["checksum"].uniform_bits((trials, checksums, out_channels), bits)
