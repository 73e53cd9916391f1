"""User links: a user dials out to the servers; users open no listening port.

A user session is named by a random 16-byte ``token`` the user draws from the OS CSPRNG. For each
server the user dials two mutually authenticated TLS 1.3 connections, each starting with a
hello ``(magic "SIU1", version, kind, token, digest)``: kind ``up`` carries the user's frames,
kind ``down`` the server's (so, as on party links, one thread writes a TLS object and another
reads it, never both). A third kind, ``health``, asks the server for its status (one JSON
reply, then close). The digest is over the CA certificate and the three servers' entries of
the topology, so a user holding another deployment's topology is refused with that reason.

Who may connect: any certificate signed by the topology's CA whose role (subject OU) is
``user``; its DNS name (``party-3``, or ``user-alice`` from :func:`~.tls.issue_user_cert`)
is the user's identity for quotas and logs. Adding a user needs no topology edit and no
restart. The servers' certificates are checked by name (``party-<id>``) as on party links.

What a server learns from a user link: the user's identity, the token (random), frame sizes
and timing; the payloads are shares (see :mod:`secinfer.serve.server`).
"""

from __future__ import annotations

import hashlib
import json
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import HandshakeError, PeerTimeout, SecinferNetError
from .listener import (
    _HELLO,
    _PROTOCOL_VERSION,
    _SOCKET_BUFFER,
    _USER_MAGIC,
    USER_DOWN,
    USER_HEALTH,
    USER_UP,
    UserArrival,
)
from .tls import user_context
from .topology import Topology, party_dns_name
from .transport import TlsTransport

__all__ = ["UserLinks", "USER_PEER", "dial_user", "user_digest", "user_session_id",
           "user_credentials", "probe_health", "server_side"]

# the user's peer id inside a server's session with it (users have no topology id)
USER_PEER = 99
SERVERS = (0, 1, 2)


def user_digest(topology: Topology) -> bytes:
    """Which deployment a user link is for: a hash of the CA certificate and the servers'
    topology entries (a user with another deployment's topology is refused, saying so)."""
    h = hashlib.sha256(b"secinfer-user-links-v1")
    h.update(Path(topology.ca_cert).read_bytes())
    for p in sorted(topology.parties, key=lambda q: q.id):
        if p.role != "user":  # the servers of any backend (mpc: 0, 1, 2; tee: the enclave)
            h.update(f"{p.id}|{p.role}|{p.host}|{p.port};".encode())
    return h.digest()


def user_session_id(token: bytes) -> bytes:
    """The frame session id of a user session: a hash of its random token (fresh per session,
    so frames of one session are refused in another)."""
    return hashlib.sha256(b"secinfer-user-session-v1" + token).digest()[:16]


class UserLinks(TlsTransport):
    """A transport over already-open user links: ``links[peer] = (out socket, in socket)``.

    Server side: one peer, the user (:data:`USER_PEER`), out = the user's ``down`` link.
    User side: one peer per server, out = ``up``. Same framing, counters, abort and close as
    :class:`TlsTransport`, whose data path it reuses.
    """

    def __init__(self, topology: Topology, party_id: int,
                 links: dict[int, tuple[ssl.SSLSocket, ssl.SSLSocket]], names: dict[int, str],
                 token: bytes, max_payload: int | None = None) -> None:
        # deliberately not TlsTransport.__init__: the links exist, nothing is dialed
        self.topology = topology
        self.party_id = party_id
        self.peers = sorted(links)
        self._names = names
        self.max_payload = max_payload if max_payload is not None else topology.frame_limit
        self._own_listener = False
        self._closed = threading.Event()
        self._out = {p: out for p, (out, _) in links.items()}
        self._in = {p: inn for p, (_, inn) in links.items()}
        for sock in self._out.values():
            sock.settimeout(topology.timeout)
        for sock in self._in.values():
            sock.settimeout(0.5)
        self._queues = {p: queue.Queue() for p in self.peers}
        self._send_counter = dict.fromkeys(self.peers, 0)
        self._send_locks = {p: threading.Lock() for p in self.peers}
        self._readers = []
        self.session_id = user_session_id(token)
        self._start_readers()

    def peer_name(self, peer: int) -> str:
        return self._names.get(peer, f"party {peer}")

    def pending(self, peer: int) -> bool:
        """Whether a frame (or an error) from ``peer`` is waiting: a peek, nothing consumed."""
        return not self._queues[peer].empty()

    def peek(self, peer: int, index: int = 0) -> object:
        """The ``index``-th waiting item from ``peer`` (a (tensor, size) pair or an error), if
        it has arrived; nothing is consumed."""
        q = self._queues[peer]
        with q.mutex:
            return q.queue[index] if len(q.queue) > index else None

    def close(self) -> None:
        super().close()


def server_side(topology: Topology, party_id: int, arrival: UserArrival,
                max_payload: int | None = None) -> UserLinks:
    """A server's end of an arrived user session (its two links), as a transport."""
    assert arrival.up is not None and arrival.down is not None
    return UserLinks(topology, party_id, {USER_PEER: (arrival.down, arrival.up)},
                     {USER_PEER: f"user {arrival.identity}"}, arrival.token, max_payload)


def _dial_one(topology: Topology, ctx: ssl.SSLContext, server: int, kind: int, token: bytes,
              digest: bytes, deadline: float) -> ssl.SSLSocket:
    spec = topology.party(server)
    last: Exception | None = None
    while time.monotonic() < deadline:
        raw = None
        try:
            raw = socket.create_connection((spec.host, spec.port), timeout=2.0)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            raw.settimeout(max(1.0, deadline - time.monotonic()))
            tls = ctx.wrap_socket(raw, server_hostname=party_dns_name(server))
            tls.sendall(_HELLO.pack(_USER_MAGIC, _PROTOCOL_VERSION, kind, token, digest))
            return tls
        except ssl.SSLError as e:
            if raw is not None:
                raw.close()
            raise HandshakeError(f"TLS handshake with {spec.name} failed: {e}") from e
        except OSError as e:  # refused / not up yet: retry until the deadline
            last = e
            if raw is not None:
                raw.close()
            time.sleep(0.1)
    raise PeerTimeout(spec.name, topology.connect_timeout, f"was unreachable ({last})")


def dial_user(topology: Topology, cert: str | Path, key: str | Path, token: bytes,
              servers: Sequence[int] = SERVERS, max_payload: int | None = None) -> UserLinks:
    """The user's side: dial up and down links to every server; one transport for all."""
    ctx = user_context(topology, cert, key)
    digest = user_digest(topology)
    deadline = time.monotonic() + topology.connect_timeout
    links: dict[int, tuple[ssl.SSLSocket, ssl.SSLSocket]] = {}
    try:
        for s in servers:
            up = _dial_one(topology, ctx, s, USER_UP, token, digest, deadline)
            try:
                down = _dial_one(topology, ctx, s, USER_DOWN, token, digest, deadline)
            except BaseException:
                up.close()
                raise
            links[s] = (up, down)
    except BaseException:
        for up, down in links.values():
            up.close()
            down.close()
        raise
    names = {s: topology.party(s).name for s in servers}
    return UserLinks(topology, -1, links, names, token, max_payload)


_HEALTH_MAX = 1 << 20


def user_credentials(topology: Topology, cert: str | Path | None = None,
                     key: str | Path | None = None,
                     user_id: int | None = None) -> tuple[Path, Path]:
    """The user certificate and key to dial with: the ones given (both, from ``secinfer certs
    user``), else topology user ``user_id``'s (default: the first user party); clear errors
    for half a pair, a topology without users, a party that is not a user, a missing file."""
    if (cert is None) != (key is None):
        raise ValueError("give both --cert and --key (cert= and key=: a user certificate "
                         "from `secinfer certs user` and its key), or neither to use a "
                         "topology user's")
    if cert is None or key is None:
        users = [p.id for p in topology.parties if p.role == "user"]
        if user_id is None:
            if not users:
                raise ValueError(f"{topology.source or 'the topology'} has no user party (no "
                                 "party with role 'user'): give --cert and --key (from "
                                 "`secinfer certs user`)")
            user_id = users[0]
        me = topology.party(user_id)
        if me.role != "user":
            raise ValueError(f"party {user_id} has role {me.role!r}, not 'user'")
        cert, key = me.cert, me.key
    for f in (cert, key):
        if not Path(f).is_file():
            raise FileNotFoundError(f"user certificate file {f} does not exist")
    return Path(cert), Path(key)


def probe_health(topology: Topology, cert: str | Path, key: str | Path, server: int,
                 timeout: float = 5.0) -> dict:
    """Ask one server for its status (what :attr:`Listener.status` returns there)."""
    ctx = user_context(topology, cert, key)
    deadline = time.monotonic() + timeout
    tls = _dial_one(topology, ctx, server, USER_HEALTH, bytes(16), user_digest(topology),
                    deadline)
    try:
        tls.settimeout(max(0.5, deadline - time.monotonic()))
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack("<I", buf[:4])[0]:
            if len(buf) >= 4 and struct.unpack("<I", buf[:4])[0] > _HEALTH_MAX:
                raise SecinferNetError(f"{topology.party(server).name} announced a health "
                                       f"answer over {_HEALTH_MAX} bytes")
            chunk = tls.recv(65536)
            if not chunk:
                raise SecinferNetError(f"{topology.party(server).name} closed the health probe "
                                       "without an answer")
            buf += chunk
        n = struct.unpack("<I", buf[:4])[0]
        return json.loads(buf[4:4 + n].decode())
    except TimeoutError:
        raise PeerTimeout(topology.party(server).name, timeout, "did not answer the health "
                          "probe") from None
    finally:
        tls.close()
