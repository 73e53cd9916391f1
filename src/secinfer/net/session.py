"""The session: one party's view of a run, with its links, its cost ledger and its lifecycle.

Use it as a context manager::

    with Session.connect(topology, party_id=0) as s:
        s.send(1, x)
        y = s.recv(1)
        print(s.cost_table())

Protocol code only ever talks to a :class:`Session`; whether the links are in-memory queues
or TLS sockets is the transport's business.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from .accounting import CostAccountant
from .errors import MessageError, SecinferNetError
from .topology import Topology
from .transport import InMemoryHub, Listener, TlsTransport, Transport

__all__ = ["Session", "run_in_memory", "run_tls_threads"]


class Session:
    """One party's links to its peers, plus accounting. Close it (or use ``with``)."""

    def __init__(
        self,
        transport: Transport,
        timeout: float = 30.0,
        accountant: CostAccountant | None = None,
        role: str = "party",
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.acct = accountant or CostAccountant()
        self.role = role
        self._closed = False

    # -- construction
    @classmethod
    def connect(
        cls,
        topology: Topology,
        party_id: int,
        peers: Sequence[int] | None = None,
        listener: Listener | None = None,
        max_payload: int | None = None,
    ) -> Session:
        """Connect over mutual TLS to ``peers`` (default: every other party of the topology).

        ``max_payload``: the largest frame payload accepted from these peers (default: the
        topology's ``[limits] max_frame_bytes``, else 4 GiB); a larger frame header fails the
        link with a :class:`~secinfer.net.errors.FrameError` naming the limit and the size.
        """
        transport = TlsTransport(topology, party_id, list(peers) if peers is not None else None,
                                 listener=listener, max_payload=max_payload)
        return cls(transport, timeout=topology.timeout, role=topology.party(party_id).role)

    # -- identity
    @property
    def party_id(self) -> int:
        return self.transport.party_id

    @property
    def peers(self) -> list[int]:
        return list(self.transport.peers)

    @property
    def session_id(self) -> bytes:
        return self.transport.session_id

    # -- messaging
    def send(self, peer: int, tensor: torch.Tensor, tag: str = "") -> None:
        """Send ``tensor`` to ``peer``. ``tag`` names the protocol message type (such as
        ``"beaver.open"``); it never travels, it lets a fault campaign
        (:mod:`secinfer.net.faults`) and per-message accounting tell messages apart."""
        wire = self.transport.send(peer, tensor)
        self.acct.on_send(peer, tensor.numel() * tensor.element_size(), wire)

    def recv(self, peer: int, timeout: float | None = None, tag: str = "",
             expect: tuple[Sequence[int], torch.dtype] | None = None) -> torch.Tensor:
        """Receive the next tensor from ``peer``. With ``expect=(shape, dtype)`` a message of
        another shape or dtype (malformed, or the next message after a dropped one) raises a
        :class:`~secinfer.net.errors.MessageError` naming the peer and ``tag``."""
        tensor, wire = self.transport.recv(peer, self.timeout if timeout is None else timeout)
        self.acct.on_recv(peer, tensor.numel() * tensor.element_size(), wire)
        if expect is not None:
            shape, dtype = tuple(expect[0]), expect[1]
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise MessageError(
                    f"party {peer} sent a message of shape {tuple(tensor.shape)} "
                    f"{str(tensor.dtype).removeprefix('torch.')} where the protocol expects "
                    f"{tag or 'a message'} of shape {shape} {str(dtype).removeprefix('torch.')}")
        return tensor

    def exchange(self, outgoing: Mapping[int, torch.Tensor], tag: str = "",
                 same_shape: bool = False) -> dict[int, torch.Tensor]:
        """Send one tensor to each named peer, then receive one from each: a single round.

        ``same_shape``: each peer must answer with a tensor of the shape and dtype it was sent
        (else :class:`~secinfer.net.errors.MessageError`), as in an opening of shares."""
        for peer, t in outgoing.items():
            self.send(peer, t, tag)
        return {peer: self.recv(peer, tag=tag,
                                expect=(t.shape, t.dtype) if same_shape else None)
                for peer, t in outgoing.items()}

    def op(self, name: str) -> AbstractContextManager[None]:
        """Charge everything inside to op ``name`` (nests as ``outer/inner``)."""
        return self.acct.op(name)

    def wait_hangup(self, peer: int, timeout: float) -> bool:
        """Wait until ``peer`` has closed its links to this party; True if it did in time."""
        return self.transport.wait_hangup(peer, timeout)

    # -- reporting
    def report(self) -> dict[str, dict[str, object]]:
        return self.acct.report()

    def cost_table(self) -> str:
        return self.acct.table()

    # -- lifecycle
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.fail(exc)
        self.close()

    def fail(self, exc: BaseException) -> None:
        """Tell the peers why this party gives up (runtime errors verbatim, others by type
        only, so that no value from an error message leaves the party)."""
        if self._closed:
            return
        if isinstance(exc, SecinferNetError):
            reason = str(exc)
        else:
            reason = f"party {self.party_id} failed with {type(exc).__name__}"
        self.transport.abort(reason)

    def __repr__(self) -> str:
        return f"Session(party={self.party_id}, peers={self.peers}, role={self.role!r})"


def run_in_memory(
    n_parties: int,
    program: Callable[..., Any],
    *args: Any,
    timeout: float = 30.0,
    party_args: Sequence[Sequence[Any]] | None = None,
    max_frame_bytes: int | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``program(session, *args, **kwargs)`` for every party as threads of this process.

    ``party_args[i]`` (optional) are extra positional arguments for party ``i`` only.
    ``max_frame_bytes`` (optional) is every link's frame limit, as on a TLS link. Returns
    the per-party results in party order; the first exception raised by any party is re-raised
    (the other parties then fail fast instead of waiting out their timeout).
    """
    hub = (InMemoryHub(n_parties) if max_frame_bytes is None
           else InMemoryHub(n_parties, max_payload=max_frame_bytes))
    results: list[Any] = [None] * n_parties
    errors: list[tuple[int, BaseException]] = []
    sessions = [Session(hub.transport(i), timeout=timeout) for i in range(n_parties)]

    def body(i: int) -> None:
        extra = tuple(party_args[i]) if party_args is not None else ()
        try:
            results[i] = program(sessions[i], *args, *extra, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append((i, e))
            sessions[i].fail(e)
            sessions[i].close()

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n_parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        errors.sort(key=lambda e: isinstance(e[1], SecinferNetError))  # root cause first
        party, err = errors[0]
        raise err
    return results



def run_tls_threads(
    n_parties: int,
    program: Callable[..., Any],
    *args: Any,
    timeout: float = 30.0,
    party_args: Sequence[Sequence[Any]] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Like :func:`run_in_memory`, but every party connects over real mutual-TLS sockets.

    A fresh CA and certificates are made in a temporary folder. The parties are threads of this
    process (cheap for tests); use :func:`secinfer.net.local_cluster` for separate processes.
    """
    import tempfile

    from .tls import make_certs
    from .topology import write_local_topology

    with tempfile.TemporaryDirectory(prefix="secinfer-tls-") as tmp:
        topo = Topology.load(write_local_topology(tmp, ["party"] * n_parties, timeout=timeout))
        make_certs(topo, overwrite=True)
        results: list[Any] = [None] * n_parties
        errors: list[tuple[int, BaseException]] = []

        def body(i: int) -> None:
            extra = tuple(party_args[i]) if party_args is not None else ()
            try:
                with Session.connect(topo, i) as s:
                    results[i] = program(s, *args, *extra, **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append((i, e))

        threads = [threading.Thread(target=body, args=(i,), daemon=True)
                   for i in range(n_parties)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            errors.sort(key=lambda e: isinstance(e[1], SecinferNetError))
            raise errors[0][1]
        return results
