"""The errors secinfer raises on purpose, under one base the CLI (and a caller) can catch.

::

    SecinferError
      NetworkError        a peer, a link, a frame, a handshake (net/errors.py: SecinferNetError)
      ConfigError         a topology or setting that cannot work (TopologyError)
      ArtifactError       an artifact folder missing, corrupt or of another kind (BundleError)
      ProtocolError       a party sent or asked for something the protocol forbids (StipError)
      IntegrityError      the TEE device's result failed the enclave's check
      UnsupportedOpError  a model op the capture (models/capture.py, MPC and TEE) cannot place

Every class keeps the built-in base its callers caught before this tree existed (``ValueError``
for a bad artifact or setting, ``RuntimeError`` for a network or integrity failure, both
``NotImplementedError`` and ``ValueError`` for an unsupported op, as the older captures raised),
so an ``except ValueError`` written against an older release still works. The messages are
written for the user: the CLI prints them without a traceback.
"""

from __future__ import annotations

__all__ = [
    "SecinferError", "NetworkError", "ConfigError", "ArtifactError", "ArtifactExistsError",
    "ProtocolError", "IntegrityError", "UnsupportedOpError",
]


class SecinferError(Exception):
    """Base of every error secinfer raises on purpose; its message is written for the user."""


class NetworkError(SecinferError, RuntimeError):
    """The party runtime failed: a peer timed out, hung up or aborted; a frame was malformed."""


class ConfigError(SecinferError, ValueError):
    """A configuration (topology file, limits, options) is malformed or inconsistent."""


class ArtifactError(SecinferError, ValueError):
    """An artifact folder is missing, corrupt, tampered with, or of another kind or party."""


class ArtifactExistsError(ArtifactError, FileExistsError):
    """The target folder already holds an artifact and overwriting was not asked for."""


class ProtocolError(SecinferError, RuntimeError):
    """A request or reply breaks the protocol (unknown op, wrong shapes, wrong order)."""


class IntegrityError(SecinferError, RuntimeError):
    """A computation's result fails its integrity check (the TEE device cheated or erred)."""


class UnsupportedOpError(SecinferError, NotImplementedError, ValueError):
    """A model op the capture cannot place; the message names the op, the node and the fix.

    ``what`` and ``node`` are set when the capture knows them (empty otherwise).
    """

    def __init__(self, message: str, what: str = "", node: str = "") -> None:
        super().__init__(message)
        self.what = what
        self.node = node
