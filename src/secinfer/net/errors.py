"""Errors raised by the party runtime. Each one names the peer or the frame field at fault.

They sit under :class:`secinfer.errors.NetworkError` (so under ``SecinferError``); each keeps
its built-in base (``TimeoutError``, ``ConnectionError``, ``ValueError``) for older callers.
"""

from __future__ import annotations

from ..errors import ConfigError, NetworkError

__all__ = [
    "SecinferNetError",
    "PeerTimeout",
    "PeerDisconnected",
    "PeerAborted",
    "FrameError",
    "MessageError",
    "HandshakeError",
    "TopologyError",
    "RequestRefused",
]


# the runtime's base is the tree's network error itself: ``except SecinferNetError`` and
# ``except NetworkError`` catch the same errors
SecinferNetError = NetworkError


class TopologyError(SecinferNetError, ConfigError):
    """The topology file is malformed or inconsistent."""


class PeerTimeout(SecinferNetError, TimeoutError):
    """A peer sent nothing (or accepted nothing) within the configured timeout."""

    def __init__(self, peer: str, seconds: float, what: str = "sent nothing") -> None:
        super().__init__(f"{peer} {what} for {seconds:.1f} s (timeout); is it alive?")
        self.peer = peer
        self.seconds = seconds


class PeerDisconnected(SecinferNetError, ConnectionError):
    """A peer closed its connection or its process died."""

    def __init__(self, peer: str, detail: str = "") -> None:
        msg = f"{peer} disconnected"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.peer = peer


class PeerAborted(SecinferNetError, ConnectionError):
    """A peer gave up (its own peer failed, or its program raised) and said why."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"{peer} aborted: {reason}")
        self.peer = peer
        self.reason = reason


class FrameError(SecinferNetError, ValueError):
    """A frame on the wire is malformed: wrong magic, session, counter, size or dtype."""


class MessageError(SecinferNetError, ValueError):
    """A peer's message is well framed but not the one the protocol expects at this point
    (another shape or dtype: a malformed, dropped or replayed message). The text names the
    peer, the message type and both shapes; it holds no value, so peers get it verbatim."""


class HandshakeError(SecinferNetError, ConnectionError):
    """TLS or hello handshake failed: wrong CA, wrong identity, wrong topology."""


class RequestRefused(SecinferNetError):
    """A server refused a user's request: a limit (batch, frame), the query quota, or a
    malformed request. The message names the limit and the value; the servers send it to the
    user verbatim (it holds no secret: only sizes, counts and the user's id). ``reason``: the
    server's own text, without who refused."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason
