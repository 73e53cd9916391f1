"""Long-lived secure-inference servers and the user's client."""

from .client import Client
from .server import serve

__all__ = ["Client", "serve"]
