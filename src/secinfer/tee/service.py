"""TSQP as a long-lived service: the enclave serves users over TLS, the device serves the enclave.

Parties (roles in the topology): the ``enclave`` (trusted: it holds every secret of
:mod:`.bundle`), the ``device`` (untrusted, fast: it holds only the device bundle's int8
weights) and any number of users (a certificate of role ``user`` from the topology's CA, no
topology entry needed). Users dial out to the enclave exactly as they dial the MPC servers
(:mod:`secinfer.net.userlink`); the enclave dials the device as a party link.

Protocol of one user session (requests and replies: :mod:`secinfer.net.rpc`):
  1. the user dials two TLS 1.3 links to the enclave (mutual authentication); when admitted
     (fewer than ``[service] max_users`` sessions active, else an abort saying "busy") the
     enclave sends int64 ``[max_batch]``;
  2. per request (op ``infer``) the user sends its float64 input ``[batch, *input_shape]`` in
     plaintext over its link: the enclave is trusted; op ``bye`` ends the session;
  3. the enclave checks the input (shape accepted by a dry run of the program, batch at most
     ``max_batch``, finite values; else a refusal naming the problem, and the session goes
     on), runs the split with the device (:meth:`.enclave.Enclave.infer`: the device sees only
     masked, shuffled int8 values mixed with fingerprints; every result is checked exactly)
     and replies with float64 logits ``[batch, C]``, bit-equal to the int8 model's;
  4. a failed integrity check or a failed device is refused with its reason and ends that
     user's session (the device's state is unknown); the enclave keeps serving the others.

After a failed integrity check the enclave drops the device session and dials it again: the
device's state in the aborted protocol run is unknown, and a new session starts from fresh
masks. A dead or frozen device is named to the user within the topology's session timeout;
the enclave reconnects with backoff (0.5 s doubling to 5 s).

Threat model: the enclave and the user who sends it an input are trusted (on our machines the
enclave is an ordinary OS process: its secrets are protected by the process boundary only;
SGX/Gramine deployment: ``deploy/gramine``, untested). The device is malicious: it may return
anything and is caught with the probability stated in :mod:`.monitor`; it learns the shapes
and the number of requests, nothing of an input or a weight scale. Out of scope: denial of
service by the device (it becomes an error naming it) and side channels of the enclave host.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch

from ..errors import IntegrityError, ProtocolError
from ..net import Listener, RequestRefused, SecinferNetError, Session, rpc
from ..net.client import ServiceClient
from ..net.service import Fatal, OneByOne, ServeLoop, UserSession
from ..net.topology import Topology
from .bundle import DeviceBundle, EnclaveBundle
from .device import Device, Fault
from .enclave import Enclave
from .monitor import MonitorConfig

__all__ = ["serve_enclave", "serve_device", "TeeClient"]

log = logging.getLogger(__name__)
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 5.0
OP_INFER = 1  # the enclave's one op (rpc.BYE ends a session)


def _role_id(topology: Topology, role: str) -> int:
    found = topology.by_role(role)
    if len(found) != 1:
        raise ValueError(f"a tee topology needs exactly one party with role {role!r}, it has "
                         f"{len(found)}")
    return int(found[0].id)


def _wait(stop: threading.Event | None, seconds: float) -> None:
    if stop is not None:
        stop.wait(seconds)
    else:
        time.sleep(seconds)


def _connect(topology: Topology, party_id: int, peer: int, listener: Listener,
             stop: threading.Event | None) -> Session | None:
    """A session with ``peer``, dialing again with backoff (0.5 s doubling to 5 s) until it
    answers; None once ``stop`` is set."""
    backoff = _BACKOFF_MIN
    while not (stop is not None and stop.is_set()):
        try:
            return Session.connect(topology, party_id, peers=[peer], listener=listener)
        except SecinferNetError as e:
            log.warning("party %d: %s unreachable (%s); retrying in %.1f s", party_id,
                        topology.party(peer).name, e, backoff)
            _wait(stop, backoff)
            backoff = min(2 * backoff, _BACKOFF_MAX)
    return None


class _EnclaveService(OneByOne):
    """The enclave behind the one serve loop (:class:`secinfer.net.service.ServeLoop`)."""

    what = "the enclave"

    def __init__(self, topology: Topology, enclave: Enclave) -> None:
        self.topology, self.enclave = topology, enclave
        self.device = _role_id(topology, "device")
        self.device_session: Session | None = None  # set by serve_enclave per device session
        self.shapes: dict[tuple[int, ...], bool] = {}

    def open(self, user: UserSession) -> list[torch.Tensor]:
        return [torch.tensor([self.topology.max_batch], dtype=torch.int64)]

    def _accepts(self, shape: tuple[int, ...]) -> bool:
        if shape not in self.shapes:
            try:
                self.enclave.input_shapes(shape)
                ok = True
            except (RuntimeError, ValueError, IndexError):
                ok = False
            self.shapes[shape] = ok
        return self.shapes[shape]

    def _check(self, req: rpc.Request) -> str | None:
        """Why the enclave refuses this request, or None."""
        if req.op != OP_INFER:
            return f"unknown op {req.op} (the enclave serves op {OP_INFER}, infer)"
        if len(req.tensors) != 1:
            return f"infer takes one tensor, got {len(req.tensors)}"
        x = req.tensors[0]
        if x.dtype != torch.float64 or x.dim() < 2:
            return f"infer takes a float64 batch [batch, ...], got {x.dtype} {list(x.shape)}"
        batch, shape = int(x.shape[0]), tuple(int(v) for v in x.shape[1:])
        if batch < 1 or batch > self.topology.max_batch:
            return f"batch of {batch} outside 1..max_batch = {self.topology.max_batch}"
        if not self._accepts(shape):
            return f"the model does not take inputs of shape [batch, {', '.join(map(str, shape))}]"
        if not bool(torch.isfinite(x).all()):
            return "the input holds NaN or infinite values"
        return None

    def handle_one(self, user: UserSession, request: rpc.Request) -> list[torch.Tensor]:
        why = self._check(request)
        if why is not None:
            raise RequestRefused(why)
        assert self.device_session is not None
        x = request.tensors[0]
        t0 = time.perf_counter()
        try:
            out = self.enclave.infer(self.device_session, self.device, x)
        except IntegrityError as e:
            raise Fatal(f"integrity check failed: the device (party {self.device}) returned a "
                        f"wrong result ({e}); the request is refused", e) from None
        except SecinferNetError as e:
            raise Fatal(f"the device (party {self.device}) failed ({e}); retry later", e) from None
        log.info("request %s-%d (batch %d) in %.3f s", user.identity, user.requests + 1,
                 x.shape[0], time.perf_counter() - t0)
        return [out]


def serve_enclave(topology: Topology, party_id: int, artifact: str | Path,
                  stop: threading.Event | None = None, max_clients: int | None = None,
                  monitor: MonitorConfig | None = None) -> int:
    """Serve users until ``stop`` (or ``max_clients`` sessions ended); returns that count."""
    enclave = Enclave(EnclaveBundle.load(artifact), monitor)
    device_id = _role_id(topology, "device")
    listener = Listener(topology, topology.party(party_id))
    service = _EnclaveService(topology, enclave)
    loop = ServeLoop(topology, party_id, listener, service,
                     log_line=lambda m: log.warning("enclave %d: %s", party_id, m))
    try:
        while True:
            device = _connect(topology, party_id, device_id, listener, stop)
            if device is None:
                break
            print(f"enclave {party_id}: ready ({len(enclave.model.program.layers)} linear "
                  f"layers on the device, party {device_id}; max_batch {topology.max_batch})",
                  flush=True)
            service.device_session = device
            with device:
                try:
                    loop.run(stop, max_clients)
                    try:
                        enclave.stop(device, device_id)
                    except SecinferNetError:
                        pass
                    break
                except (IntegrityError, SecinferNetError, OSError) as e:
                    log.error("enclave %d: %s; reconnecting to the device", party_id, e)
    finally:
        loop.close(f"the enclave (party {party_id}) is shutting down")
        listener.close()
    return loop.ended


def serve_device(topology: Topology, party_id: int, artifact: str | Path,
                 stop: threading.Event | None = None, fault: Fault | None = None) -> int:
    """Serve the enclave's layer calls until ``stop``, dialing it again whenever its session
    ends; returns the layer calls served. ``fault`` makes this device lie (for tests)."""
    dev = Device(DeviceBundle.load(artifact), fault or Fault())
    enclave_id = _role_id(topology, "enclave")
    listener = Listener(topology, topology.party(party_id))
    served = 0
    try:
        while True:
            session = _connect(topology, party_id, enclave_id, listener, stop)
            if session is None:
                break
            print(f"device {party_id}: ready (serving enclave {enclave_id})", flush=True)
            with session:
                try:
                    served += dev.serve(session, enclave_id, idle_timeout=10 ** 6,
                                        should_stop=stop.is_set if stop is not None else None)
                except (SecinferNetError, ValueError, OSError) as e:
                    log.warning("device %d: enclave session ended (%s)", party_id, e)
    finally:
        listener.close()
    return served


class TeeClient:
    """A user of the enclave: ``with TeeClient(topology) as c: logits = c.predict(x)``.

    The connection is the one user-side runtime (:class:`secinfer.net.client.ServiceClient`):
    the enclave's welcome is its ``max_batch``; a request is the float64 batch, the reply the
    logits the enclave checked.
    """

    def __init__(self, topology: Topology, cert: str | Path | None = None,
                 key: str | Path | None = None, user_id: int | None = None,
                 compute_timeout: float = 600.0) -> None:
        self.topology = topology
        self.enclave = _role_id(topology, "enclave")
        self._conn = ServiceClient(topology, (self.enclave,), cert=cert, key=key,
                                   user_id=user_id, compute_timeout=compute_timeout)
        self.cert, self.key = self._conn.cert, self._conn.key
        self.compute_timeout = compute_timeout
        self.max_batch = 0

    def __enter__(self) -> TeeClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._conn.connect()
        (mb,) = self._conn.welcome(self.enclave, 1, self.topology.timeout)
        self.max_batch = int(mb[0])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 logits ``[batch, C]`` of the int8 model for a batch ``x``."""
        if not self._conn.connected:
            raise RuntimeError("client is not connected")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"input must hold real numbers, got {x.dtype}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"input must be a non-empty batch [batch, ...], got shape "
                             f"{tuple(x.shape)}")
        xf = x.to(torch.float64)
        if not bool(torch.isfinite(xf).all()):
            raise ValueError("the input holds NaN or infinite values")
        if x.shape[0] > self.max_batch:
            raise ValueError(f"batch of {x.shape[0]} exceeds the enclave's max_batch = "
                             f"{self.max_batch}")
        got = self._conn.request(OP_INFER, {self.enclave: [xf]}, (self.enclave,))[self.enclave]
        if len(got) != 1:
            raise ProtocolError(f"the enclave replied with {len(got)} tensors, expected 1")
        return got[0]

    def close(self) -> None:
        """Say bye and wait briefly for the enclave's answer, so it ends the session now."""
        self._conn.close(bye_timeout=5.0)

