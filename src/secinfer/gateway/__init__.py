"""The user's HTTP gateway: a REST API and a web page in front of :class:`~secinfer.serve.Client`.

Threat model: the gateway is the user's own trusted process on the user's machine. It holds the
user's certificate and key, sees the plaintext inputs and outputs, and does the secret sharing;
the servers see only shares, exactly as with the Python client. So it binds to loopback
(``127.0.0.1``) by default: anyone who can reach its port can query as this user. See
``docs/gateway.md``.
"""

from .app import GatewayConfig, create_app

__all__ = ["GatewayConfig", "create_app"]
