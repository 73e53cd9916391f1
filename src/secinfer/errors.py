"""The errors secinfer raises on purpose, under one base the CLI (and a caller) can catch.

Every class keeps the built-in base its callers caught before this tree existed (``ValueError``
for a bad artifact, ...), so ``except ValueError`` around an old call still works.
"""

from __future__ import annotations

__all__ = ["SecinferError", "ArtifactError", "ArtifactExistsError"]


class SecinferError(Exception):
    """Base of every error secinfer raises on purpose; its message is written for the user."""


class ArtifactError(SecinferError, ValueError):
    """An artifact folder is missing, corrupt, tampered with, or of another kind or party."""


class ArtifactExistsError(ArtifactError, FileExistsError):
    """The target folder already holds an artifact and overwriting was not asked for."""
