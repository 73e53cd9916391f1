"""The user's side: share inputs to the servers, reconstruct outputs. Only the user sees them.

Threat model: the user trusts no server; P0 and P1 each see one uniformly random share of the
input and of the output, the helper sees only shapes. The user must trust that the servers do not
collude (semi-honest, non-colluding 3-party setting).

What the user gets is the model owner's output policy, announced by P0 on connect: float64
logits ``[batch, C]``, the int64 indices of the top k ``[batch, k]`` (best first), or the
int64 label ``[batch]``; with ``topk`` and ``label`` the user never receives a share of a
logit. A refused request (batch over the limit, query quota spent, malformed input) raises
:class:`~secinfer.net.RequestRefused` with the servers' reason and ends the session; so does
"busy" (all ``max_users`` slots taken). A server that dies or freezes is named in the error
(P1 and the helper notice a frozen P0 and tell the user); a later ``connect`` works again
once the servers have recovered.

The user opens no port: it dials two TLS links to each server (:mod:`secinfer.net.userlink`)
with a certificate of role ``user``: a topology user's (``user_id``) or one from
``secinfer certs user`` (``cert`` / ``key``), which needs no topology entry.
"""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path

import torch

from ..errors import ProtocolError
from ..models.bundle import OUTPUT_MODES, OutputPolicy
from ..models.ranges import range_slack
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from ..net import (
    PeerAborted,
    PeerTimeout,
    RequestRefused,
    SecinferNetError,
    Session,
    Topology,
    rpc,
)
from ..net.userlink import dial_user, user_credentials
from .handler import OP_INFER, parse_entries
from .output import decode_policy_output

__all__ = ["Client"]


class Client:
    """``with Client(topology) as c: y = c.predict(x)`` (logits, top-k indices or labels).

    ``record_view=True`` keeps every tensor received from the servers in ``self.view`` as
    ``(server, tensor)``: the user's whole view, for audits and tests.
    ``admit_timeout``: how long to wait for P0 to admit this session (default: the topology's
    session timeout); ``compute_timeout``: how long one request may take.
    """

    def __init__(self, topology: Topology, user_id: int | None = None,
                 compute_timeout: float = 600.0, record_view: bool = False,
                 cert: str | Path | None = None, key: str | Path | None = None,
                 admit_timeout: float | None = None) -> None:
        cert, key = user_credentials(topology, cert, key, user_id)
        self.topology, self.user_id = topology, user_id
        self.cert, self.key = cert, key
        # waiting for a result is waiting for a whole secure inference, not for a silent peer
        self.compute_timeout = compute_timeout
        self.admit_timeout = topology.timeout if admit_timeout is None else admit_timeout
        self._session: Session | None = None
        self._prg = PRG(new_seed())
        self._next_request = 1
        self.frac_bits = 0
        self.input_shape: tuple[int, ...] = ()
        # every input shape the servers take (CLIP: image patches and packed prompts)
        self.entries: tuple[tuple[int, ...], ...] = ()
        self.policy = OutputPolicy()
        self.max_batch = 0
        self.queries_left: int | None = None
        self.input_range: tuple[float, float] | None = None
        self.classes = 0
        self.record_view = record_view
        self.view: list[tuple[int, torch.Tensor]] = []

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, server: int, timeout: float | None = None) -> torch.Tensor:
        assert self._session is not None
        t = self._session.recv(server, timeout=timeout)
        if self.record_view:
            self.view.append((server, t.clone()))
        return t

    def connect(self) -> None:
        # the helper and P1 first: when P0 sees our links and admits us, theirs are there
        links = dial_user(self.topology, self.cert, self.key, secrets.token_bytes(16),
                          servers=(2, 1, 0))
        self._session = Session(links, timeout=self.topology.timeout, role="user")
        try:
            meta = self._await(0, self.admit_timeout, "did not admit this session").tolist()
            pol = [int(v) for v in self._recv(0).tolist()]
            rng = self._recv(0)
            entries = self._recv(0)
        except PeerAborted as e:
            self.close()
            raise RequestRefused(f"{e.peer} refused the session: {e.reason}") from e
        except BaseException:
            self.close()
            raise
        self.frac_bits, self.input_shape = int(meta[0]), tuple(int(v) for v in meta[1:])
        mode, k, self.max_batch, left, self.classes = pol
        self.policy = OutputPolicy(OUTPUT_MODES[mode], k if OUTPUT_MODES[mode] == "topk" else None)
        self.queries_left = None if left < 0 else left
        if rng.dtype != torch.float64 or rng.shape != (2,):
            self.close()
            raise SecinferNetError(f"server 0 sent an input range of {rng.dtype} "
                                   f"{tuple(rng.shape)}, expected float64 (2,)")
        lo, hi = (float(v) for v in rng)
        self.input_range = None if math.isnan(lo) else (lo, hi)
        try:
            self.entries = parse_entries(entries)
        except ValueError as e:
            self.close()
            raise SecinferNetError(f"server 0 sent {e}") from None

    def _await(self, server: int, timeout: float, what: str) -> torch.Tensor:
        """Receive from ``server``, but fail at once when ANY server has aborted or dropped
        (P1 and the helper tell us when P0 froze); a silent ``server`` is named on timeout."""
        assert self._session is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._recv(server, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except PeerTimeout:
                broken = self._session.transport.broken_link()
                if broken is not None:
                    raise broken from None
                if time.monotonic() >= deadline:
                    raise PeerTimeout(self.topology.party(server).name, timeout, what) from None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Secure inference on a batch ``[batch, *input_shape]``.

        Returns float64 logits, or int64 indices, as the owner's output policy says.
        """
        if self._session is None:
            raise RuntimeError("client is not connected")
        s = self._session
        enc = self._validate(x)
        header = torch.tensor(list(x.shape), dtype=torch.int64)
        rid = self._next_request
        self._next_request += 1
        try:
            for server in (0, 1, 2):  # [batch, *shape] to all, then a share to P0 and P1
                s.send(server, rpc.request_header(rid, OP_INFER, 1 if server == 2 else 2))
                s.send(server, header)
            r = self._prg.int64(enc.shape)
            s.send(0, enc - r)
            s.send(1, r)
            out = self._reply(0, rid) + self._reply(1, rid)
        except PeerAborted as e:
            self.close()
            raise RequestRefused(f"{e.peer} refused the request: {e.reason}") from e
        except SecinferNetError as e:  # our send hit a server that already gave up: why?
            refusal = self._refusal()
            self.close()
            if refusal is not None:
                raise refusal from e
            raise
        if self.queries_left is not None:
            self.queries_left -= len(x)
        return decode_policy_output(out, self.policy, self.frac_bits, self.classes)

    def _reply(self, server: int, rid: int) -> torch.Tensor:
        """``server``'s reply to request ``rid``: its output share."""
        who = self.topology.party(server).name
        head = self._await(server, self.compute_timeout, "sent no result")
        status, n = rpc.parse_reply_header(head, rid, who)
        if n != 1:
            raise ProtocolError(f"{who} replied with {n} tensors, expected its output share")
        body = self._await(server, self.compute_timeout, "sent no result")
        if status == rpc.REFUSED:
            raise rpc.refusal(body, who)
        return body

    def _validate(self, x: torch.Tensor) -> torch.Tensor:
        """The encoded batch, or a ValueError/TypeError naming what is wrong with ``x``.

        Everything is checked before the first byte goes out: once the servers have the
        request header they expect shares, so a bad value found later would end the session.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"input must hold real numbers, got {x.dtype}")
        if tuple(x.shape[1:]) not in (self.entries or (self.input_shape,)):
            takes = " or ".join(f"[batch, {', '.join(map(str, e))}]"
                                for e in (self.entries or (self.input_shape,)))
            raise ValueError(f"input of shape {tuple(x.shape)}; the model takes {takes}")
        if x.shape[0] == 0:
            raise ValueError("empty batch: send at least one input")
        # the batch limit and the quota are the servers' to enforce (they refuse the request
        # cleanly, with the reason); values the servers cannot check on shares are ours
        enc = encode(x, self.frac_bits)
        if self.input_range is not None:
            lo, hi = self.input_range
            xmin, xmax = float(x.min()), float(x.max())
            eps = range_slack(lo, hi)
            if xmin < lo - eps or xmax > hi + eps:
                raise ValueError(
                    f"input values in [{xmin:.4g}, {xmax:.4g}] leave the model's valid range "
                    f"[{lo:.4g}, {hi:.4g}] (set by its owner at compile time: outside it the "
                    "fixed point could wrap and give a wrong answer)")
        return enc

    def _refusal(self) -> RequestRefused | None:
        if self._session is None:
            return None
        for server in (0, 1, 2):
            try:
                self._session.recv(server, timeout=2.0)
            except PeerAborted as e:
                return RequestRefused(f"{e.peer} refused the request: {e.reason}")
            except SecinferNetError:
                continue
        return None

    def report(self) -> dict[str, dict]:
        return self._session.report() if self._session is not None else {}

    def close(self) -> None:
        if self._session is None:
            return
        bye = rpc.request_header(self._next_request, rpc.BYE, 0)
        for server in (0, 1, 2):
            try:
                self._session.send(server, bye)
            except Exception:  # noqa: BLE001 - best effort goodbye; the server times out anyway
                pass
        self._session.close()
        self._session = None
