"""The one user-side runtime of every backend: a user's connection to a deployment's servers.

Each backend's client (the MPC user, the TEE user, the STIP user) is this connection plus
what is particular to it: what to send each server and how to read the replies (shares to
add, a result to take, permuted activations to un-permute). Steps:

1. **connect**: dial two mutually authenticated TLS 1.3 links to each server
   (:func:`~.userlink.dial_user`; the user opens no port) and wait for the leader's welcome
   frames (:meth:`welcome`), failing at once, with the reason, when any server turns the
   session away (busy, another deployment) or drops it;
2. **request**: one request id; to every server its request header and tensors (the one
   request/reply protocol, :mod:`.rpc`), then each replying server's reply. A server that
   aborts the session names why (:class:`~.errors.RequestRefused`); a refused request names
   why and the session goes on; a send that hits a server which already gave up reports that
   server's reason, not a broken pipe; a silent server is named after the timeout, and the
   wait ends at once when any other link breaks (P1 and the helper tell of a frozen P0);
3. **close**: ``bye`` to every server (best effort), then the links close.

What the user sends and receives is the backend's: this layer adds 32-byte request headers
and 32-byte reply headers and keeps, with ``record_view``, every tensor received: the user's
whole view, for audits and tests.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ProtocolError
from . import rpc
from .errors import PeerAborted, PeerTimeout, RequestRefused, SecinferNetError
from .session import Session
from .topology import Topology
from .userlink import dial_user, user_credentials

__all__ = ["ServiceClient"]


class ServiceClient:
    """``with ServiceClient(topology, servers=(0,)) as c: c.request(op, {0: [x]}, (0,))``.

    ``servers``: the party ids to dial, in dialing order (the leader, who admits the session,
    last: when it sees this user's links, the others' are there). ``compute_timeout``: how
    long one request may take; the session's own timeout bounds every other wait.
    """

    def __init__(self, topology: Topology, servers: Sequence[int], *,
                 cert: str | Path | None = None, key: str | Path | None = None,
                 user_id: int | None = None, compute_timeout: float = 600.0,
                 record_view: bool = False) -> None:
        self.topology, self.servers = topology, tuple(servers)
        self.cert, self.key = user_credentials(topology, cert, key, user_id)
        self.compute_timeout = compute_timeout
        self.record_view = record_view
        self.view: list[tuple[int, torch.Tensor]] = []
        self.session: Session | None = None
        self._owns = True  # close() closes the session (not one given to over())
        self._next = 1

    @classmethod
    def over(cls, session: Session, servers: Sequence[int],
             compute_timeout: float | None = None) -> ServiceClient:
        """The same runtime over a session already open (in-memory tests, ``dial_cloud``)."""
        self = cls.__new__(cls)
        self.topology, self.servers = None, tuple(servers)  # type: ignore[assignment]
        self.cert = self.key = None  # type: ignore[assignment]
        self.compute_timeout = session.timeout if compute_timeout is None else compute_timeout
        self.record_view, self.view = False, []
        self.session, self._next, self._owns = session, 1, False
        return self

    def __enter__(self) -> ServiceClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self.session is not None

    def connect(self) -> None:
        links = dial_user(self.topology, self.cert, self.key, secrets.token_bytes(16),
                          servers=self.servers)
        self.session = Session(links, timeout=self.topology.timeout, role="user")

    def name(self, server: int) -> str:
        if self.topology is not None:
            return self.topology.party(server).name
        return f"party {server}"

    # ------------------------------------------------------------------ receiving
    def _wait(self, server: int, timeout: float, what: str) -> torch.Tensor:
        """The next frame from ``server``, failing at once when ANY link broke; a silent
        ``server`` is named after ``timeout``."""
        s = self._need()
        deadline = time.monotonic() + timeout
        while True:
            try:
                t = s.recv(server, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                break
            except PeerTimeout:
                broken = s.transport.broken_link()
                if broken is not None:
                    raise broken from None
                if time.monotonic() >= deadline:
                    raise PeerTimeout(self.name(server), timeout, what) from None
        if self.record_view:
            self.view.append((server, t.clone()))
        return t

    def recv(self, server: int, timeout: float | None = None, what: str = "sent nothing"
             ) -> torch.Tensor:
        """The next frame from ``server`` (timeout: the session's); an abort becomes
        :class:`RequestRefused` with the server's reason, and the session is closed."""
        wait = self._need().timeout if timeout is None else timeout
        try:
            return self._wait(server, wait, what)
        except PeerAborted as e:
            self.close()
            raise RequestRefused(f"{e.peer} refused the session: {e.reason}", e.reason) from e

    def welcome(self, server: int, frames: int, timeout: float | None = None
                ) -> list[torch.Tensor]:
        """The ``frames`` frames ``server`` sends an admitted session first."""
        try:
            return [self.recv(server, timeout if i == 0 else None, "did not admit this session")
                    for i in range(frames)]
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ one request
    def request(self, op: int, tensors: dict[int, list[torch.Tensor]],
                reply_from: Sequence[int], name: str | None = None
                ) -> dict[int, list[torch.Tensor]]:
        """Send request ``op`` (``tensors[server]`` to each server) and return the reply
        tensors of every server in ``reply_from``; a refusal raises :class:`RequestRefused`
        (the session goes on); an abort ends the session and raises it with the reason."""
        s = self._need()
        rid = self._next
        self._next += 1
        try:
            for server, ts in tensors.items():
                if len(ts) > rpc.MAX_TENSORS:
                    raise ValueError(f"a request holds at most {rpc.MAX_TENSORS} tensors")
                s.send(server, rpc.request_header(rid, op, len(ts)))
                for t in ts:
                    s.send(server, t.contiguous())
            out = {server: self._reply(server, rid, name) for server in reply_from}
        except RequestRefused:
            raise
        except PeerAborted as e:
            self.close()
            raise RequestRefused(f"{e.peer} refused the request: {e.reason}", e.reason) from e
        except PeerTimeout:
            self.close()
            raise
        except SecinferNetError as e:  # our send hit a server that already gave up: why?
            refusal = self._refusal()
            self.close()
            if refusal is not None:
                raise refusal from e
            raise
        refused = [r for r in out.values() if isinstance(r, RequestRefused)]
        if refused:
            raise refused[0]
        return out  # type: ignore[return-value]

    def _reply(self, server: int, rid: int, name: str | None
               ) -> list[torch.Tensor] | RequestRefused:
        who = self.name(server)
        head = self._wait(server, self.compute_timeout, "sent no result")
        status, n = rpc.parse_reply_header(head, rid, who)
        body = [self._wait(server, self.compute_timeout, "sent no result") for _ in range(n)]
        if status == rpc.REFUSED:
            return rpc.refusal(body[0], who, f"{name!r}" if name else "the request")
        return body

    def _refusal(self) -> RequestRefused | None:
        """Why a server that already gave up on this session did so (its abort reason)."""
        if self.session is None:
            return None
        for server in self.servers:
            try:
                self.session.recv(server, timeout=2.0)
            except PeerAborted as e:
                return RequestRefused(f"{e.peer} refused the request: {e.reason}", e.reason)
            except SecinferNetError:
                continue
        return None

    def _need(self) -> Session:
        if self.session is None:
            raise RuntimeError("client is not connected")
        return self.session

    def report(self) -> dict[str, dict]:
        """The session's cost counters (bytes, rounds, seconds per named op)."""
        return self.session.report() if self.session is not None else {}

    def close(self, bye_timeout: float = 0.0) -> None:
        """Say ``bye`` to every server (best effort; with ``bye_timeout`` > 0, wait that long
        for the replies), then close the links (a session given to :meth:`over` stays open:
        its owner closes it)."""
        s, self.session = self.session, None
        if s is None:
            return
        bye = rpc.request_header(self._next, rpc.BYE, 0)
        for server in self.servers:
            try:
                s.send(server, bye)
            except Exception:  # noqa: BLE001 - best effort goodbye; the server times out anyway
                pass
        if bye_timeout > 0:
            for server in self.servers:
                try:
                    s.recv(server, timeout=bye_timeout)  # the reply header (no tensors)
                except (SecinferNetError, ProtocolError):
                    pass
        if self._owns:
            s.close()
