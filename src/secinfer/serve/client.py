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
from pathlib import Path

import torch

from ..errors import ProtocolError
from ..models.bundle import OUTPUT_MODES, OutputPolicy
from ..models.ranges import range_slack
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from ..net import SecinferNetError, Session, Topology
from ..net.client import ServiceClient
from .handler import OP_INFER, parse_entries
from .output import decode_policy_output

__all__ = ["Client"]


class Client:
    """``with Client(topology) as c: y = c.predict(x)`` (logits, top-k indices or labels).

    The connection is the one user-side runtime (:class:`secinfer.net.client.ServiceClient`);
    what is MPC here: the welcome read from P0, the input validated and encoded, drawn into
    two additive shares (AES-CTR PRG), and the two output shares added.

    ``record_view=True`` keeps every tensor received from the servers in ``self.view`` as
    ``(server, tensor)``: the user's whole view, for audits and tests.
    ``admit_timeout``: how long to wait for P0 to admit this session (default: the topology's
    session timeout); ``compute_timeout``: how long one request may take.
    """

    def __init__(self, topology: Topology, user_id: int | None = None,
                 compute_timeout: float = 600.0, record_view: bool = False,
                 cert: str | Path | None = None, key: str | Path | None = None,
                 admit_timeout: float | None = None) -> None:
        self.topology, self.user_id = topology, user_id
        # the helper and P1 first: when P0 sees our links and admits us, theirs are there;
        # waiting for a result is waiting for a whole secure inference, not a silent peer
        self._conn = ServiceClient(topology, (2, 1, 0), cert=cert, key=key, user_id=user_id,
                                   compute_timeout=compute_timeout, record_view=record_view)
        self.cert, self.key = self._conn.cert, self._conn.key
        self.compute_timeout = compute_timeout
        self.admit_timeout = topology.timeout if admit_timeout is None else admit_timeout
        self._prg = PRG(new_seed())
        self.frac_bits = 0
        self.input_shape: tuple[int, ...] = ()
        # every input shape the servers take (CLIP: image patches and packed prompts)
        self.entries: tuple[tuple[int, ...], ...] = ()
        self.policy = OutputPolicy()
        self.max_batch = 0
        self.queries_left: int | None = None
        self.input_range: tuple[float, float] | None = None
        self.classes = 0

    @property
    def view(self) -> list[tuple[int, torch.Tensor]]:
        return self._conn.view

    @property
    def session(self) -> Session | None:
        """The user session with the three servers (None when closed)."""
        return self._conn.session

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._conn.connect()
        meta_t, pol_t, rng, entries = self._conn.welcome(0, 4, self.admit_timeout)
        meta = meta_t.tolist()
        pol = [int(v) for v in pol_t.tolist()]
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

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Secure inference on a batch ``[batch, *input_shape]``.

        Returns float64 logits, or int64 indices, as the owner's output policy says.
        """
        if not self._conn.connected:
            raise RuntimeError("client is not connected")
        enc = self._validate(x)
        header = torch.tensor(list(x.shape), dtype=torch.int64)
        r = self._prg.int64(enc.shape)
        # [batch, *shape] to all three, then a share to P0 and P1; P0 and P1 reply
        got = self._conn.request(OP_INFER, {0: [header, enc - r], 1: [header, r],
                                            2: [header]}, reply_from=(0, 1))
        for server, ts in got.items():
            if len(ts) != 1:
                raise ProtocolError(f"{self.topology.party(server).name} replied with "
                                    f"{len(ts)} tensors, expected its output share")
        out = got[0][0] + got[1][0]
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

    def report(self) -> dict[str, dict]:
        return self._conn.report()

    def close(self) -> None:
        self._conn.close()
