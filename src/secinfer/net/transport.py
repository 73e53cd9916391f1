"""Transports: how tensors move between one party and its peers.

One interface, :class:`Transport`, with two implementations that the same protocol code uses:

* :class:`InMemoryTransport` — parties are threads of one process (unit tests, simulation).
* :class:`TlsTransport` — parties are separate processes (or machines) connected by mutually
  authenticated TLS 1.3 over TCP.

Both enforce the frame discipline of :mod:`.framing`: every directed link carries a session id
and an op counter, checked on receipt. Each directed link ``i -> j`` is its own TLS connection
(dialed by ``i``, accepted by ``j``) so that a TLS object is only ever written by one thread and
read by another, never both, and so that a slow reader never blocks the opposite direction.
The one exception is at connect time, before any reader runs: the accepting side writes a
one-byte confirmation on each link a session claims, so a dial that reached a listener about to
close fails at once instead of leaving a half-open session.
"""

from __future__ import annotations

import errno
import hashlib
import json
import queue
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import framing
from .errors import (
    FrameError,
    HandshakeError,
    PeerAborted,
    PeerDisconnected,
    PeerTimeout,
    SecinferNetError,
)
from .tls import client_context, peer_identity, peer_party_id, server_context
from .topology import PartySpec, Topology, party_dns_name

__all__ = ["Transport", "InMemoryHub", "InMemoryTransport", "TlsTransport", "Listener",
           "UserArrival", "USER_UP", "USER_DOWN", "USER_HEALTH"]


class Transport(ABC):
    """All links of one party. ``send`` returns the wire size of the frame it sent."""

    party_id: int
    peers: list[int]
    session_id: bytes

    @abstractmethod
    def send(self, peer: int, tensor: torch.Tensor) -> int: ...

    @abstractmethod
    def recv(self, peer: int, timeout: float) -> tuple[torch.Tensor, int]: ...

    @abstractmethod
    def peer_name(self, peer: int) -> str: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def abort(self, reason: str) -> None:  # noqa: B027 - optional hook
        """Best effort: tell every peer that this party gives up, and why."""

    def wait_hangup(self, peer: int, timeout: float) -> bool:
        """Wait until ``peer`` has closed its end of the links; True if it did in time."""
        return True

    def broken_link(self) -> BaseException | None:
        """Without blocking or consuming anything: the error of a link already known to be
        dead (a peer that disconnected or aborted), if any. For a party idle between uses
        of a session, e.g. a server waiting for its next user while its peers may be gone."""
        return None


# --------------------------------------------------------------------------- in memory


class InMemoryHub:
    """Queues for every directed link among ``n`` in-process parties."""

    def __init__(self, n: int, max_payload: int = framing.DEFAULT_MAX_PAYLOAD) -> None:
        self.n = n
        self.max_payload = max_payload  # same frame limit as a TLS link: checked on receipt
        self.session_id = secrets.token_bytes(16)
        self.queues: dict[tuple[int, int], queue.Queue] = {
            (i, j): queue.Queue() for i in range(n) for j in range(n) if i != j
        }
        self.closed: set[int] = set()

    def transport(self, party_id: int) -> InMemoryTransport:
        return InMemoryTransport(self, party_id)


class InMemoryTransport(Transport):
    """One party's end of an :class:`InMemoryHub`: queues in one process, for tests."""

    def __init__(self, hub: InMemoryHub, party_id: int) -> None:
        self.hub = hub
        self.party_id = party_id
        self.peers = [i for i in range(hub.n) if i != party_id]
        self.session_id = hub.session_id
        self._sent = dict.fromkeys(self.peers, 0)
        self._recvd = dict.fromkeys(self.peers, 0)

    def peer_name(self, peer: int) -> str:
        return f"party {peer}"

    def send(self, peer: int, tensor: torch.Tensor) -> int:
        if peer not in self._sent:
            raise SecinferNetError(f"party {self.party_id} has no link to party {peer}")
        if tensor.dtype not in framing.DTYPE_CODES:
            raise FrameError(f"dtype {tensor.dtype} is not supported on the wire")
        # a copy, as on a real wire: the receiver must never alias the sender's memory
        msg = (self.session_id, self._sent[peer], tensor.detach().cpu().clone())
        self._sent[peer] += 1
        self.hub.queues[(self.party_id, peer)].put(msg)
        return framing.header_size(tensor.dim()) + tensor.numel() * tensor.element_size()

    def recv(self, peer: int, timeout: float) -> tuple[torch.Tensor, int]:
        if peer not in self._recvd:
            raise SecinferNetError(f"party {self.party_id} has no link to party {peer}")
        try:
            item = self.hub.queues[(peer, self.party_id)].get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeout(self.peer_name(peer), timeout) from None
        if isinstance(item, BaseException):
            raise item
        session, counter, tensor = item
        if session != self.session_id or counter != self._recvd[peer]:
            raise FrameError(f"out-of-order message from party {peer}")
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > self.hub.max_payload:
            raise FrameError(f"frame from {self.peer_name(peer)}: payload of {nbytes} bytes "
                             f"exceeds the frame limit max_frame_bytes = {self.hub.max_payload}")
        self._recvd[peer] += 1
        return tensor, framing.header_size(tensor.dim()) + tensor.numel() * tensor.element_size()

    def close(self) -> None:
        for peer in self.peers:
            self.hub.queues[(self.party_id, peer)].put(
                PeerDisconnected(self.peer_name(self.party_id), "closed its session")
            )

    def abort(self, reason: str) -> None:
        for peer in self.peers:
            self.hub.queues[(self.party_id, peer)].put(
                PeerAborted(self.peer_name(self.party_id), reason))


# --------------------------------------------------------------------------- TLS sockets

_SMALL_FRAME = 1 << 16
_SEND_SLICE = 1 << 16
_TLS_RECORD = 1 << 14
_SOCKET_BUFFER = 4 << 20  # large kernel buffers keep bulk transfers streaming
_HELLO = struct.Struct("<4sBH16s32s")
_HELLO_MAGIC = b"SIH1"
_LINK_ACK = b"\x06"
_PROTOCOL_VERSION = 1


def _topology_digest(topology: Topology, ids: list[int]) -> bytes:
    h = hashlib.sha256(topology.ca_cert.read_bytes())
    for i in sorted(ids):
        p = topology.party(i)
        h.update(f"{p.id}|{p.role}|{p.host}|{p.port};".encode())
    return h.digest()


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

    def stale(self) -> bool:
        """True when the dialer already gave up on this link: between its hello and our
        confirmation a dialer sends nothing, so anything readable is its close."""
        try:
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
        try:
            self.sock.close()
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
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


class TlsTransport(Transport):
    """Mutually authenticated TLS 1.3 links to each peer (see module docstring)."""

    def __init__(
        self,
        topology: Topology,
        party_id: int,
        peers: list[int] | None = None,
        listener: Listener | None = None,
        max_payload: int | None = None,
    ) -> None:
        self.topology = topology
        self.me = topology.party(party_id)
        self.party_id = party_id
        self.peers = [p for p in (peers if peers is not None else topology.ids) if p != party_id]
        for p in self.peers:
            topology.party(p)
        # the largest frame payload accepted from a peer (default: the topology's [limits])
        self.max_payload = max_payload if max_payload is not None else topology.frame_limit
        self._own_listener = listener is None
        self.listener = listener or Listener(topology, self.me)
        self._closed = threading.Event()
        self._out: dict[int, ssl.SSLSocket] = {}
        self._in: dict[int, ssl.SSLSocket] = {}
        self._queues: dict[int, queue.Queue] = {p: queue.Queue() for p in self.peers}
        self._send_counter = dict.fromkeys(self.peers, 0)
        self._send_locks = {p: threading.Lock() for p in self.peers}
        self._readers: list[threading.Thread] = []
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def peer_name(self, peer: int) -> str:
        return self.topology.party(peer).name

    # -- connect
    def _dial(self, peer: int, nonce: bytes, digest: bytes, deadline: float) -> ssl.SSLSocket:
        spec = self.topology.party(peer)
        ctx = client_context(self.topology, self.me)
        last: Exception | None = None
        while time.monotonic() < deadline:
            raw = None
            try:
                raw = socket.create_connection((spec.host, spec.port), timeout=2.0)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                raw.settimeout(max(1.0, deadline - time.monotonic()))
                tls = ctx.wrap_socket(raw, server_hostname=party_dns_name(peer))
                tls.sendall(_HELLO.pack(_HELLO_MAGIC, _PROTOCOL_VERSION, self.party_id, nonce,
                                        digest))
                tls.settimeout(self.topology.timeout)
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
        raise PeerTimeout(spec.name, self.topology.connect_timeout, f"was unreachable ({last})")

    def _connect(self) -> None:
        ids = sorted([self.party_id, *self.peers])
        digest = _topology_digest(self.topology, ids)
        nonce = secrets.token_bytes(16)
        deadline = time.monotonic() + self.topology.connect_timeout
        for peer in self.peers:
            self._out[peer] = self._dial(peer, nonce, digest, deadline)
        arrivals = self.listener.wait_for(self.peers, deadline)
        nonces = {self.party_id: nonce}
        for peer, inc in arrivals.items():
            if inc.digest != digest:
                raise HandshakeError(
                    f"{self.peer_name(peer)} runs a different topology or session membership"
                )
            nonces[peer] = inc.nonce
            self._in[peer] = inc.sock
        self._confirm_links(deadline)
        # fresh per session and equal at every party: hash of every member's random nonce
        h = hashlib.sha256(b"secinfer-session-v1")
        for i in ids:
            h.update(struct.pack("<H", i) + nonces[i])
        self.session_id = h.digest()[:16]
        self._start_readers()

    def _start_readers(self) -> None:
        for peer in self.peers:
            t = threading.Thread(target=self._reader, args=(peer,), daemon=True,
                                 name=f"reader-{self.party_id}<-{peer}")
            t.start()
            self._readers.append(t)

    def _confirm_links(self, deadline: float) -> None:
        """Each side acknowledges the links it accepted and waits for its own dials to be
        acknowledged, so a dial that landed in a stale listener (a previous session's, about
        to close) fails here instead of leaving a half-open session that waits forever."""
        for peer, sock in self._in.items():
            try:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                sock.sendall(_LINK_ACK)
                sock.settimeout(0.5)
            except OSError as e:
                raise PeerDisconnected(self.peer_name(peer), f"dropped the link ({e})") from e
        for peer, sock in self._out.items():
            try:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                got = sock.recv(len(_LINK_ACK))
            except TimeoutError:
                raise PeerTimeout(self.peer_name(peer), self.topology.connect_timeout,
                                  "never confirmed our link") from None
            except OSError as e:
                raise PeerDisconnected(self.peer_name(peer),
                                       f"dropped our link before confirming it ({e})") from e
            if got != _LINK_ACK:
                raise PeerDisconnected(self.peer_name(peer),
                                       "closed our link before confirming it (a stale listener?)")
            sock.settimeout(self.topology.timeout)

    # -- data path
    def send(self, peer: int, tensor: torch.Tensor) -> int:
        if peer not in self._out:
            raise SecinferNetError(f"party {self.party_id} has no link to party {peer}")
        payload = framing.tensor_payload(tensor)
        with self._send_locks[peer]:
            h = framing.FrameHeader(tensor.dtype, tuple(tensor.shape), self.session_id,
                                    self._send_counter[peer], payload.nbytes)
            header = framing.encode_header(h)
            sock = self._out[peer]
            try:
                if payload.nbytes <= _SMALL_FRAME:
                    sock.sendall(header + bytes(payload))
                else:
                    sock.sendall(header)
                    # one TLS record's worth per call: measured faster than one huge write
                    for start in range(0, payload.nbytes, _SEND_SLICE):
                        sock.sendall(payload[start : start + _SEND_SLICE])
            except TimeoutError:
                raise PeerTimeout(self.peer_name(peer), self.topology.timeout,
                                  "accepted no data") from None
            except OSError as e:
                raise PeerDisconnected(self.peer_name(peer), str(e)) from e
            self._send_counter[peer] += 1
        return len(header) + payload.nbytes

    def _reader(self, peer: int) -> None:
        sock = self._in[peer]
        q = self._queues[peer]
        name = self.peer_name(peer)
        counter = 0
        fixed = bytearray(framing.HEADER_FIXED)
        try:
            while not self._closed.is_set():
                got = _recv_exact(sock, memoryview(fixed), self._closed)
                if got == 0:
                    q.put(PeerDisconnected(name, "closed the connection"))
                    return
                if got < len(fixed):
                    q.put(FrameError(f"truncated frame header from {name}"))
                    return
                ndim = framing.peek_ndim(fixed)
                shape_bytes = bytearray(8 * ndim)
                if _recv_exact(sock, memoryview(shape_bytes), self._closed) < len(shape_bytes):
                    q.put(FrameError(f"truncated frame header from {name}"))
                    return
                try:
                    h = framing.decode_header(bytes(fixed), bytes(shape_bytes), self.max_payload)
                except FrameError as e:
                    raise FrameError(f"frame from {name}: {e}") from None
                framing.check_expected(h, self.session_id, counter, name)
                buf, view = framing.empty_for(h)
                if h.nbytes and _recv_exact(sock, view, self._closed) < h.nbytes:
                    q.put(FrameError(f"truncated frame payload from {name}"))
                    return
                if h.control:
                    q.put(PeerAborted(name, bytes(view).decode("utf-8", "replace")))
                    return
                counter += 1
                q.put((framing.finish(buf, h), framing.header_size(ndim) + h.nbytes))
        except FrameError as e:
            q.put(e)
        except (OSError, ssl.SSLError) as e:
            if not self._closed.is_set():
                q.put(PeerDisconnected(name, str(e)))

    def recv(self, peer: int, timeout: float) -> tuple[torch.Tensor, int]:
        if peer not in self._queues:
            raise SecinferNetError(f"party {self.party_id} has no link to party {peer}")
        try:
            item = self._queues[peer].get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeout(self.peer_name(peer), timeout) from None
        if isinstance(item, BaseException):
            self._queues[peer].put(item)  # sticky: every later recv fails the same way
            raise item
        return item

    def broken_link(self) -> BaseException | None:
        for q in self._queues.values():
            with q.mutex:  # a peek: the item stays for the recv that would raise it
                for item in q.queue:
                    if isinstance(item, BaseException):
                        return item
        return None

    def wait_hangup(self, peer: int, timeout: float) -> bool:
        """Wait for ``peer`` to close our outgoing link (nothing else is ever read from it).

        Works whatever state the reader of the incoming link is in (it stops at a bad frame),
        so a server that refused a user can wait until the user has really gone before dialing
        that user's address again.
        """
        sock = self._out.get(peer)
        if sock is None or self._closed.is_set():
            return True
        deadline = time.monotonic() + timeout
        with self._send_locks[peer]:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    sock.settimeout(min(left, 0.5))
                    if not sock.recv(1):
                        return True
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                except OSError:  # reset, or EOF without close_notify
                    return True
        return False

    def abort(self, reason: str) -> None:
        if self._closed.is_set():
            return
        for peer, sock in self._out.items():
            with self._send_locks[peer]:
                try:
                    sock.settimeout(1.0)  # never hang on a dead peer while giving up
                    sock.sendall(framing.abort_frame(self.session_id, self._send_counter[peer],
                                                     reason))
                    self._send_counter[peer] += 1
                except OSError:
                    pass

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        # the listener first: once a peer sees our links drop it may dial again at once, and
        # must find the port closed rather than a listener that is about to go
        if self._own_listener and self.listener is not None:
            self.listener.close()
        for sock in [*self._out.values(), *self._in.values()]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        # readers must be gone before the interpreter finalises (torch aborts otherwise)
        for t in self._readers:
            t.join(timeout=2.0)
