"""Every failure of the gateway as ``(HTTP status, {"error": ..., "cause": ...})``.

* 422: the request is the caller's to fix (bad upload, shape, values out of range, a batch
  over the owner's limit: the servers' refusal of a malformed request).
* 429: the owner's query quota for this user is spent.
* 501: the endpoint's protocol has no long-lived server for a gateway to reach.
* 502: a server failed (dropped, aborted, broke the protocol) while answering.
* 503: the servers are unreachable, busy (all ``max_users`` slots taken), reconnecting or
  shutting down: try again later.
"""

from __future__ import annotations

from ..net import (
    HandshakeError,
    PeerAborted,
    PeerDisconnected,
    PeerTimeout,
    RequestRefused,
    SecinferNetError,
)

__all__ = ["GatewayError", "classify_error"]


class GatewayError(Exception):
    """An error with its HTTP status; ``error`` is a short kind, ``cause`` the details."""

    def __init__(self, status: int, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.status, self.error, self.cause = status, error, cause

    def body(self) -> dict[str, str]:
        return {"error": self.error, "cause": self.cause}


_RETRY_LATER = ("busy", "shutting down", "reconnect", "retry later", "idle")


def classify_error(e: BaseException) -> GatewayError:
    """Map a client-side exception to its status; the message is kept verbatim as the cause."""
    if isinstance(e, GatewayError):
        return e
    msg = str(e) or type(e).__name__
    if isinstance(e, (ValueError, TypeError)) and not isinstance(e, SecinferNetError):
        return GatewayError(422, "invalid input", msg)
    if isinstance(e, RequestRefused):
        low = msg.lower()
        if "quota" in low:
            return GatewayError(429, "query quota spent", msg)
        if any(w in low for w in _RETRY_LATER):
            return GatewayError(503, "servers busy", msg)
        if "failed" in low:
            return GatewayError(502, "a server failed", msg)
        return GatewayError(422, "request refused by the servers", msg)
    if isinstance(e, PeerTimeout) and "unreachable" in msg:
        return GatewayError(503, "servers unreachable", msg)
    if isinstance(e, PeerTimeout):
        return GatewayError(503, "servers did not answer in time", msg)
    if isinstance(e, HandshakeError):
        return GatewayError(502, "TLS handshake with a server failed", msg)
    if isinstance(e, (PeerDisconnected, PeerAborted)):
        return GatewayError(502, "a server failed", msg)
    if isinstance(e, SecinferNetError):
        return GatewayError(502, "a server failed", msg)
    if isinstance(e, OSError):
        return GatewayError(503, "servers unreachable", msg)
    return GatewayError(500, "gateway error", f"{type(e).__name__}: {msg}")
