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

import hashlib
import queue
import secrets
import socket
import ssl
import struct
import threading
import time
from abc import ABC, abstractmethod

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
from .listener import (
    _HELLO,
    _HELLO_MAGIC,
    _LINK_ACK,
    _PROTOCOL_VERSION,
    _SOCKET_BUFFER,
    USER_DOWN,
    USER_HEALTH,
    USER_UP,
    Listener,
    UserArrival,
    _recv_exact,
)
from .tls import client_context
from .topology import Topology, party_dns_name

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

def _topology_digest(topology: Topology, ids: list[int]) -> bytes:
    h = hashlib.sha256(topology.ca_cert.read_bytes())
    for i in sorted(ids):
        p = topology.party(i)
        h.update(f"{p.id}|{p.role}|{p.host}|{p.port};".encode())
    return h.digest()


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
        acked = {p for p, inc in arrivals.items() if inc.confirmed}
        try:
            self._confirm_links(deadline, acked)
        except SecinferNetError:
            if not self._own_listener:  # the peers we confirmed keep their links for a retry
                for peer in acked:
                    self.listener.hold_confirmed(arrivals[peer])
                    del self._in[peer]
            raise
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

    def _confirm_links(self, deadline: float, acked: set[int]) -> None:
        """Each side acknowledges the links it accepted and waits for its own dials to be
        acknowledged, so a dial that landed in a stale listener (a previous session's, about
        to close) fails here instead of leaving a half-open session that waits forever.

        ``acked``: the peers whose links were acknowledged in an earlier attempt (they are not
        acknowledged twice); it grows with every link acknowledged here, so a caller whose own
        dial then fails knows which links the peers already count as confirmed."""
        for peer, sock in self._in.items():
            if peer in acked:
                continue
            try:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                sock.sendall(_LINK_ACK)
                sock.settimeout(0.5)
            except OSError as e:
                raise PeerDisconnected(self.peer_name(peer), f"dropped the link ({e})") from e
            acked.add(peer)
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
                # a peer that gave up said why just before closing: that reason, not the EOF
                raise self._abort_sent_by(peer) or PeerDisconnected(self.peer_name(peer),
                                                                     str(e)) from e
            self._send_counter[peer] += 1
        return len(header) + payload.nbytes

    def _abort_sent_by(self, peer: int, wait: float = 0.5) -> PeerAborted | None:
        """The abort frame ``peer`` sent us, if our reader has it (or gets it within
        ``wait`` seconds); it stays queued for the next recv."""
        q = self._queues.get(peer)
        if q is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            with q.mutex:
                for item in q.queue:
                    if isinstance(item, PeerAborted):
                        return item
                    if isinstance(item, BaseException):
                        return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

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
        socks = [*self._out.values(), *self._in.values()]
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes our readers with EOF; the fd stays ours
            except OSError:
                pass
        # Close only once the readers are gone: a reader inside OpenSSL keeps the fd *number*
        # in its BIO, so closing under it lets a socket opened meanwhile (any thread of this
        # process) reuse that number and have its bytes stolen: seen as another link's TLS
        # handshake failing with WRONG_VERSION_NUMBER / UNEXPECTED_MESSAGE. Readers must also be
        # gone before the interpreter finalises (torch aborts otherwise).
        me = threading.current_thread()
        for t in self._readers:
            if t is not me:
                t.join(timeout=5.0)
        if any(t.is_alive() for t in self._readers if t is not me):
            return  # a stuck reader still holds a socket: the garbage collector closes it later
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
