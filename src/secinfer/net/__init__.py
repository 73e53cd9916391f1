"""Party runtime: framing, transports (in-memory and mutual TLS), accounting, launcher."""

from .accounting import CostAccountant, OpCost, format_table
from .errors import (
    FrameError,
    HandshakeError,
    PeerAborted,
    PeerDisconnected,
    PeerTimeout,
    RequestRefused,
    SecinferNetError,
    TopologyError,
)
from .launcher import LocalCluster, PartyFailed, local_cluster
from .session import Session, run_in_memory, run_tls_threads
from .tls import CertificateRequestError, init_ca, make_certs, make_key_and_csr, sign_csr
from .topology import PartySpec, Topology, write_local_topology
from .transport import InMemoryHub, InMemoryTransport, Listener, TlsTransport, Transport

__all__ = [
    "CostAccountant", "OpCost", "format_table",
    "FrameError", "HandshakeError", "PeerAborted", "PeerDisconnected", "PeerTimeout",
    "RequestRefused", "SecinferNetError",
    "TopologyError",
    "LocalCluster", "PartyFailed", "local_cluster",
    "Session", "run_in_memory", "run_tls_threads",
    "make_certs", "init_ca", "make_key_and_csr", "sign_csr", "CertificateRequestError",
    "PartySpec", "Topology", "write_local_topology",
    "InMemoryHub", "InMemoryTransport", "Listener", "TlsTransport", "Transport",
]
