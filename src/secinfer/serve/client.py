"""The user's side: share inputs to the servers, reconstruct outputs. Only the user sees them.

Threat model: the user trusts no server; P0 and P1 each see one uniformly random share of the
input and of the output, the helper sees only shapes. The user must trust that the servers do not
collude (semi-honest, non-colluding 3-party setting).

What the user gets is the model owner's output policy, announced by P0 on connect: float64
logits ``[batch, C]``, the int64 indices of the top k ``[batch, k]`` (best first), or the
int64 label ``[batch]``; with ``topk`` and ``label`` the user never receives a share of a
logit. A refused request (batch over the limit, query quota spent, malformed input) raises
:class:`~secinfer.net.RequestRefused` with the servers' reason and ends the session.
"""

from __future__ import annotations

import math

import torch

from ..models.bundle import OUTPUT_MODES, OutputPolicy
from ..models.ranges import range_slack
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from ..net import Listener, PeerAborted, RequestRefused, SecinferNetError, Session, Topology
from .output import decode_policy_output

__all__ = ["Client"]


class Client:
    """``with Client(topology) as c: y = c.predict(x)`` (logits, top-k indices or labels).

    ``record_view=True`` keeps every tensor received from the servers in ``self.view`` as
    ``(server, tensor)``: the user's whole view, for audits and tests.
    """

    def __init__(self, topology: Topology, user_id: int | None = None,
                 compute_timeout: float = 600.0, record_view: bool = False) -> None:
        users = [p.id for p in topology.parties if p.role == "user"]
        if user_id is None:
            if not users:
                raise ValueError("the topology has no party with role 'user'")
            user_id = users[0]
        self.topology, self.user_id = topology, user_id
        # waiting for a result is waiting for a whole secure inference, not for a silent peer
        self.compute_timeout = compute_timeout
        self._listener: Listener | None = None
        self._sessions: dict[int, Session] = {}
        self._prg = PRG(new_seed())
        self.frac_bits = 0
        self.input_shape: tuple[int, ...] = ()
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
        t = self._sessions[server].recv(server, timeout=timeout)
        if self.record_view:
            self.view.append((server, t.clone()))
        return t

    def connect(self) -> None:
        self._listener = Listener(self.topology, self.topology.party(self.user_id))
        try:
            for server in (0, 1, 2):
                self._sessions[server] = Session.connect(
                    self.topology, self.user_id, peers=[server], listener=self._listener)
            meta = self._recv(0).tolist()
            pol = [int(v) for v in self._recv(0).tolist()]
            rng = self._recv(0)
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

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Secure inference on a batch ``[batch, *input_shape]``.

        Returns float64 logits, or int64 indices, as the owner's output policy says.
        """
        if not self._sessions:
            raise RuntimeError("client is not connected")
        enc = self._validate(x)
        header = torch.tensor(list(x.shape), dtype=torch.int64)
        try:
            for s in self._sessions.values():
                s.send(s.peers[0], header)
            r = self._prg.int64(enc.shape)
            self._sessions[0].send(0, enc - r)
            self._sessions[1].send(1, r)
            out = (self._recv(0, timeout=self.compute_timeout)
                   + self._recv(1, timeout=self.compute_timeout))
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

    def _validate(self, x: torch.Tensor) -> torch.Tensor:
        """The encoded batch, or a ValueError/TypeError naming what is wrong with ``x``.

        Everything is checked before the first byte goes out: once the servers have the
        request header they expect shares, so a bad value found later would end the session.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"input must hold real numbers, got {x.dtype}")
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ValueError(f"input of shape {tuple(x.shape)}; the model takes "
                             f"[batch, {', '.join(map(str, self.input_shape))}]")
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
        for server, s in self._sessions.items():
            try:
                s.recv(server, timeout=2.0)
            except PeerAborted as e:
                return RequestRefused(f"{e.peer} refused the request: {e.reason}")
            except SecinferNetError:
                continue
        return None

    def report(self) -> dict[int, dict]:
        return {sid: s.report() for sid, s in self._sessions.items()}

    def close(self) -> None:
        # the listener first: a server that sees our links drop may dial again at once, and
        # must find the port closed rather than this session's listener about to go
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for s in self._sessions.values():
            try:
                s.send(s.peers[0], torch.empty(0, dtype=torch.int64))
            except Exception:  # noqa: BLE001 - best effort goodbye; the server times out anyway
                pass
            s.close()
        self._sessions.clear()
