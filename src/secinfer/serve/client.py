"""The user's side: share inputs to the servers, reconstruct outputs. Only the user sees them.

Threat model: the user trusts no server; P0 and P1 each see one uniformly random share of the
input and of the output, the helper sees only shapes. The user must trust that the servers do not
collude (semi-honest, non-colluding 3-party setting).
"""

from __future__ import annotations

import torch

from ..mpc.engine import decode, encode
from ..mpc.prg import PRG, new_seed
from ..net import Listener, Session, Topology

__all__ = ["Client"]


class Client:
    """``with Client(topology) as c: logits = c.predict(x)``"""

    def __init__(self, topology: Topology, user_id: int | None = None,
                 compute_timeout: float = 600.0) -> None:
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

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._listener = Listener(self.topology, self.topology.party(self.user_id))
        try:
            for server in (0, 1, 2):
                self._sessions[server] = Session.connect(
                    self.topology, self.user_id, peers=[server], listener=self._listener)
            meta = self._sessions[0].recv(0).tolist()
        except BaseException:
            self.close()
            raise
        self.frac_bits, self.input_shape = int(meta[0]), tuple(int(v) for v in meta[1:])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Secure inference on a batch ``[batch, *input_shape]``; returns float64 outputs."""
        if not self._sessions:
            raise RuntimeError("client is not connected")
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ValueError(f"input of shape {tuple(x.shape)}; the model takes "
                             f"[batch, {', '.join(map(str, self.input_shape))}]")
        header = torch.tensor(list(x.shape), dtype=torch.int64)
        for s in self._sessions.values():
            s.send(s.peers[0], header)
        enc = encode(x, self.frac_bits)
        r = self._prg.int64(enc.shape)
        self._sessions[0].send(0, enc - r)
        self._sessions[1].send(1, r)
        out = (self._sessions[0].recv(0, timeout=self.compute_timeout)
               + self._sessions[1].recv(1, timeout=self.compute_timeout))
        return decode(out, self.frac_bits)

    def report(self) -> dict[int, dict]:
        return {sid: s.report() for sid, s in self._sessions.items()}

    def close(self) -> None:
        for s in self._sessions.values():
            try:
                s.send(s.peers[0], torch.empty(0, dtype=torch.int64))
            except Exception:  # noqa: BLE001 - best effort goodbye; the server times out anyway
                pass
            s.close()
        self._sessions.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
