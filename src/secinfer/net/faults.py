"""Fault injection: one party's outgoing protocol messages corrupted on purpose.

This is the attacker's tool of the integrity work (``docs/integrity.md``): a campaign wraps one
server's :class:`~secinfer.net.session.Session` in a :class:`FaultySession` that corrupts one
chosen message, then checks what the user got. Messages are told apart by the ``tag`` that the
protocol code gives each :meth:`Session.send` (``"beaver.open"``, ``"drelu.terms"``, ...); the
tag never travels.

Corruptions (:data:`CORRUPTIONS`), each applied to one message:

- ``flip_bit``: one bit of one element, both chosen at random;
- ``add_const``: a random non-zero constant added to every element (the "+8 on the output share"
  attack, generalised);
- ``random``: every element replaced by uniform random bits of the same dtype and shape;
- ``replay``: the previous message of the same tag to the same peer sent again (or, for the
  first of its tag, the previous message to that peer of any tag);
- ``drop``: the message is not sent at all.

The choices come from SHAKE-256 of a per-fault seed: reproducible from the seed, and not a secret
of the protocol (the attacker's randomness is the attacker's business).

Threat model: this module *is* the malicious party; it is only used by tests and campaigns.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field

import torch

from .session import Session

__all__ = ["CORRUPTIONS", "Fault", "FaultySession", "corrupt"]

CORRUPTIONS = ("flip_bit", "add_const", "random", "replay", "drop")


@dataclass(frozen=True)
class Fault:
    """Corrupt occurrence ``occurrence`` (0 = first) of message type ``tag`` with ``corruption``."""

    tag: str
    occurrence: int
    corruption: str
    seed: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {self.corruption!r}; one of {CORRUPTIONS}")
        if self.occurrence < 0:
            raise ValueError(f"occurrence must be >= 0, got {self.occurrence}")


class _Draws:
    """Deterministic bytes and integers from a seed (SHAKE-256, one stream per draw)."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.ctr = seed, 0

    def bytes(self, n: int) -> bytes:
        # one XOF call per draw: a whole replacement tensor (megabytes) in one go
        self.ctr += 1
        return hashlib.shake_256(self.ctr.to_bytes(8, "little") + self.seed).digest(n)

    def below(self, m: int) -> int:
        # 128-bit draw reduced mod m: bias below m / 2^128, irrelevant for an attacker's choice
        return int.from_bytes(self.bytes(16), "little") % m


def corrupt(tensor: torch.Tensor, corruption: str, seed: bytes,
            previous: torch.Tensor | None = None) -> torch.Tensor | None:
    """``tensor`` corrupted as ``corruption`` says (None for ``drop``); never in place."""
    d = _Draws(seed)
    if corruption == "drop":
        return None
    if corruption == "replay":
        return previous.clone() if previous is not None else tensor.clone()
    raw = tensor.detach().contiguous().clone()
    flat = raw.reshape(-1).view(torch.uint8)
    if flat.numel() == 0:
        return raw
    if corruption == "flip_bit":
        i = d.below(flat.numel())
        flat[i] ^= 1 << d.below(8)
        return raw
    if corruption == "random":
        flat.copy_(torch.frombuffer(bytearray(d.bytes(flat.numel())), dtype=torch.uint8))
        return raw
    if corruption == "add_const":
        bits = 8 * raw.element_size()
        c = 1 + d.below((1 << min(bits, 63)) - 1)
        if raw.is_floating_point():
            return raw + float(c)
        # two's complement wrap-around: the constant is taken mod 2^bits of the dtype
        c_signed = c - (1 << bits) if c >= 1 << (bits - 1) else c
        if raw.dtype == torch.uint8:
            return raw + (c % 256)
        return raw + torch.tensor(c_signed, dtype=raw.dtype)
    raise ValueError(f"unknown corruption {corruption!r}")


class FaultySession(Session):
    """A :class:`Session` that sends like ``inner`` but corrupts the message ``fault`` names.

    With ``fault=None`` it corrupts nothing and only counts: :attr:`counts` (messages per tag)
    and :attr:`sizes` (bytes per tag) of an honest run, from which a campaign picks its faults.
    :attr:`fired` says what was done, once it was.
    """

    def __init__(self, inner: Session, fault: Fault | None = None) -> None:
        super().__init__(inner.transport, timeout=inner.timeout, accountant=inner.acct,
                         role=inner.role)
        self.fault = fault
        self.counts: Counter[str] = Counter()
        self.sizes: Counter[str] = Counter()
        self.fired: str | None = None
        self._last_by_tag: dict[tuple[int, str], torch.Tensor] = {}
        self._last_by_peer: dict[int, torch.Tensor] = {}

    def send(self, peer: int, tensor: torch.Tensor, tag: str = "") -> None:
        n = self.counts[tag]
        self.counts[tag] += 1
        self.sizes[tag] += tensor.numel() * tensor.element_size()
        f = self.fault
        out: torch.Tensor | None = tensor
        if f is not None and self.fired is None and tag == f.tag and n == f.occurrence:
            prev = self._last_by_tag.get((peer, tag), self._last_by_peer.get(peer))
            out = corrupt(tensor, f.corruption, f.seed, prev)
            self.fired = f"{f.corruption} on {tag} #{n} to party {peer}"
        self._last_by_tag[(peer, tag)] = tensor
        self._last_by_peer[peer] = tensor
        if out is not None:
            super().send(peer, out, tag)
