"""A party's listening socket: accepts and authenticates incoming TLS links.

Peers' links (a hello naming the party, its nonce and the session digest, checked against the
certificate) wait here until a session claims them (:meth:`Listener.wait_for`); users' links
(:mod:`.userlink`: two per user session, ``up`` and ``down``) wait until the serving loop takes
them (:meth:`Listener.take_user`); a user's health probe is answered at once. Long-lived: a
serving party keeps one listener across many sessions, and stale links (a peer that gave up an
attempt) are dropped, so parties retrying on their own clocks still meet.
"""

from __future__ import annotations

import errno
import json
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import HandshakeError, PeerTimeout, SecinferNetError
from .tls import peer_identity, peer_party_id, server_context
from .topology import PartySpec, Topology

__all__ = ["Listener", "UserArrival", "USER_UP", "USER_DOWN", "USER_HEALTH"]

_TLS_RECORD = 1 << 14
_SOCKET_BUFFER = 4 << 20  # large kernel buffers keep bulk transfers streaming
_HELLO = struct.Struct("<4sBH16s32s")
_HELLO_MAGIC = b"SIH1"
_LINK_ACK = b"\x06"
_PROTOCOL_VERSION = 1


def _recv_exact(sock: ssl.SSLSocket, view: memoryview, closed: threading.Event) -> int:
    """Fill ``view``; returns bytes read (less than len(view) only at EOF)."""
    got = 0
    n = len(view)
    while got < n:
        try:
            # one TLS record at a time: measured faster here than asking for the whole rest
            k = sock.recv_into(view[got:], min(n - got, _TLS_RECORD))
        except (TimeoutError, ssl.SSLWantReadError):
            if closed.is_set():
                return got
            continue
        if k == 0:
            return got
        got += k
    return got


def _bind_with_retry(me: PartySpec, patience: float) -> socket.socket:
    """Bind the party's port, waiting briefly for a previous holder (a process or session that
    is shutting down) to let go; then fail naming the party and address."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return socket.create_server((me.host, me.port), reuse_port=False, backlog=64)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise SecinferNetError(
                    f"{me.name} cannot listen on {me.host}:{me.port}: {e.strerror}"
                ) from e
            time.sleep(0.1)


@dataclass
class _Incoming:
    peer: int
    sock: ssl.SSLSocket
    nonce: bytes
    digest: bytes
    # we confirmed it in a session attempt that then failed on our side (see hold_confirmed)
    confirmed: bool = False

    def stale(self) -> bool:
        """True when the dialer already gave up on this link: between its hello and our
        confirmation a dialer sends nothing, so anything readable is its close. A link we
        already confirmed may carry its dialer's frames: only a closed one is stale."""
        try:
            if self.confirmed:
                return self.sock.fileno() < 0
            return self.sock.fileno() < 0 or self.sock.pending() > 0 or bool(
                select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def discard(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# A user's links to a server are both dialed by the user (users open no port): "up" carries
# the user's frames, "down" the server's; same hello size as a party's, another magic.
_USER_MAGIC = b"SIU1"
USER_UP, USER_DOWN, USER_HEALTH = 0, 1, 2


@dataclass
class UserArrival:
    """A user's links to this server for one user session (``token``), as they arrive."""

    token: bytes
    identity: str  # the DNS name in the user's certificate (``party-3``, ``user-alice``)
    digest: bytes
    since: float
    up: ssl.SSLSocket | None = None
    down: ssl.SSLSocket | None = None

    @property
    def complete(self) -> bool:
        return self.up is not None and self.down is not None

    def close(self) -> None:
        for sock in (self.up, self.down):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


class Listener:
    """A party's listening TLS socket; accepts and authenticates incoming links.

    Long-lived: a serving party keeps one listener across many sessions.
    """

    def __init__(self, topology: Topology, me: PartySpec) -> None:
        self.topology = topology
        self.me = me
        self.ctx = server_context(topology, me)
        # the accepted side writes only the one-byte link confirmation: no session tickets
        self.ctx.num_tickets = 0
        self.sock = _bind_with_retry(me, min(5.0, topology.connect_timeout))
        self.sock.settimeout(0.2)
        self._arrivals: queue.Queue[_Incoming] = queue.Queue()
        self._held: dict[int, _Incoming] = {}  # arrived early, for a later session
        # user sessions' links by token, in order of arrival (see take_user / user_tokens)
        self._users: dict[bytes, UserArrival] = {}
        self._users_lock = threading.Condition()
        # arrivals not yet admitted or turned away (each holds sockets): a bound against floods
        self.max_pending_users = 4 * topology.max_users + 16
        # what a health probe is told (set by the serving loop; JSON-able values only)
        self.status: Callable[[], dict] = lambda: {"state": "starting"}
        # the latest only: a long-lived server must not grow with every rejected connection
        self.rejections: deque[str] = deque(maxlen=16)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"accept-{me.id}")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                raw, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(raw, addr), daemon=True).start()

    def _handshake(self, raw: socket.socket, addr: tuple) -> None:
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            raw.settimeout(self.topology.connect_timeout)
            tls = self.ctx.wrap_socket(raw, server_side=True)
            cert_id = peer_party_id(tls)
            buf = bytearray(_HELLO.size)
            if _recv_exact(tls, memoryview(buf), self._closed) != _HELLO.size:
                raise HandshakeError("connection closed during hello")
            magic, version, pid, nonce, digest = _HELLO.unpack(bytes(buf))
            if magic == _USER_MAGIC and version == _PROTOCOL_VERSION:
                self._user_hello(tls, pid, nonce, digest)
                return
            if magic != _HELLO_MAGIC or version != _PROTOCOL_VERSION:
                raise HandshakeError(f"bad hello (magic {magic!r}, version {version})")
            if cert_id != pid:
                raise HandshakeError(
                    f"hello claims party {pid} but the certificate is for party {cert_id}"
                )
            tls.settimeout(0.5)
            if self._closed.is_set():  # closed while we shook hands: nobody will claim it
                tls.close()
                return
            # the digest is checked by the session, which knows which parties take part
            self._arrivals.put(_Incoming(pid, tls, nonce, digest))
        except (OSError, ssl.SSLError, HandshakeError) as e:
            self.rejections.append(f"rejected connection from {addr[0]}:{addr[1]}: {e}")
            try:
                raw.close()
            except OSError:
                pass

    def _user_hello(self, tls: ssl.SSLSocket, kind: int, token: bytes, digest: bytes) -> None:
        identity, role = peer_identity(tls)
        if role != "user" or identity is None:
            raise HandshakeError(f"a user link needs a certificate with role 'user' (this one: "
                                 f"{identity or 'no name'}, role {role or 'none'})")
        if kind == USER_HEALTH:
            body = json.dumps(self.status()).encode()
            tls.sendall(struct.pack("<I", len(body)) + body)
            tls.close()
            return
        if kind not in (USER_UP, USER_DOWN):
            raise HandshakeError(f"unknown user link kind {kind}")
        tls.settimeout(0.5)
        with self._users_lock:
            if self._closed.is_set():
                tls.close()
                return
            got = self._users.get(token)
            if got is None:
                if len(self._users) >= self.max_pending_users:
                    tls.close()
                    raise HandshakeError(f"{len(self._users)} user sessions are already "
                                         f"waiting at this server; refused {identity}'s")
                got = self._users[token] = UserArrival(token, identity, digest, time.monotonic())
            if got.identity != identity or (got.up if kind == USER_UP else got.down) is not None:
                tls.close()  # another certificate, or a second link of one kind: not ours
                raise HandshakeError(f"user link for session {token.hex()[:8]} from "
                                     f"{identity} does not match the session's first link")
            if kind == USER_UP:
                got.up = tls
            else:
                got.down = tls
            self._users_lock.notify_all()

    def user_tokens(self) -> list[bytes]:
        """Tokens of user sessions whose two links have arrived, oldest first."""
        with self._users_lock:
            return [t for t, a in self._users.items() if a.complete]

    def take_user(self, token: bytes, deadline: float) -> UserArrival | None:
        """The user session ``token``'s links, waiting until ``deadline``; None if they never
        came. Taken links leave the listener (the caller owns them)."""
        with self._users_lock:
            while True:
                got = self._users.get(token)
                if got is not None and got.complete:
                    return self._users.pop(token)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    return None
                self._users_lock.wait(min(left, 0.2))

    def drop_user(self, token: bytes) -> None:
        with self._users_lock:
            got = self._users.pop(token, None)
        if got is not None:
            got.close()

    def expire_users(self, older_than: float) -> list[str]:
        """Close user links that waited longer than ``older_than`` seconds; their identities."""
        now = time.monotonic()
        with self._users_lock:
            old = [t for t, a in self._users.items() if now - a.since > older_than]
            gone = [self._users.pop(t) for t in old]
        for a in gone:
            a.close()
        return [a.identity for a in gone]

    def wait_for(self, peers: list[int], deadline: float) -> dict[int, _Incoming]:
        """One live incoming link from each of ``peers``, waiting until ``deadline``.

        A peer that gave up a session attempt leaves its link behind here (queued, or held
        for a later session); such stale links are dropped and the newest link of each peer
        wins, so parties retrying on their own clocks still meet.
        """
        got: dict[int, _Incoming] = {}

        def take(inc: _Incoming) -> None:
            if inc.stale():
                inc.discard()
                return
            box = got if inc.peer in peers else self._held
            old = box.pop(inc.peer, None)
            if old is not None:  # a reconnect supersedes the earlier link
                old.discard()
            box[inc.peer] = inc

        for p in peers:
            if p in self._held:
                take(self._held.pop(p))
        while True:
            while True:  # everything already queued, oldest first, so the newest is kept
                try:
                    take(self._arrivals.get_nowait())
                except queue.Empty:
                    break
            for p in [p for p, inc in got.items() if inc.stale()]:
                got.pop(p).discard()
            if len(got) == len(peers):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [self.topology.party(p).name for p in peers if p not in got]
                why = ("; " + "; ".join(list(self.rejections)[-3:])) if self.rejections else ""
                raise PeerTimeout(", ".join(missing), self.topology.connect_timeout,
                                  "never connected" + why)
            try:
                take(self._arrivals.get(timeout=min(left, 0.2)))
            except queue.Empty:
                continue

    def hold_confirmed(self, inc: _Incoming) -> None:
        """Keep a link this party confirmed in a session attempt that then failed on its own
        side (its own dial was not confirmed), for the next attempt.

        The dialer took our confirmation and may now consider the session up (waiting for our
        next dial, or already sending on this link); dropping the link would leave it waiting
        for a link it already has, and the next attempt would wait out its whole connect
        timeout. A newer link from the same peer still supersedes this one."""
        inc.confirmed = True
        old = self._held.pop(inc.peer, None)
        if old is not None:
            old.discard()
        self._held[inc.peer] = inc

    def close(self) -> None:
        """Stop accepting; when this returns the port refuses new connections.

        A plain ``close`` is not enough: the accept thread's pending poll keeps the kernel
        socket alive, and a peer dialling in that window would land in a dead listener.
        """
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread on Linux
        except OSError:
            pass
        # join before close: an accept blocked on a closed fd number could pick up a listening
        # socket that another thread opened meanwhile with the same number
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        try:
            self.sock.close()
        except OSError:
            pass
        with self._users_lock:
            users = list(self._users.values())
            self._users.clear()
        for a in users:
            a.close()
        stale = list(self._held.values())
        self._held.clear()
        while True:
            try:
                stale.append(self._arrivals.get_nowait())
            except queue.Empty:
                break
        for inc in stale:
            try:
                inc.sock.close()
            except OSError:
                pass
