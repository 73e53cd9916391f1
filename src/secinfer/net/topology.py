"""One declarative topology file (TOML) describing every party of a deployment.

Example::

    [session]
    timeout = 30.0          # seconds a party waits on a silent peer before failing
    connect_timeout = 30.0  # seconds to keep retrying connections at start-up

    [tls]
    ca_cert = "certs/ca.pem"       # paths are resolved against this file's folder
    ca_key = "certs/ca.key"        # only `secinfer certs` needs the CA key

    [limits]                       # optional; every key optional, positive integers only
    max_frame_bytes = 1073741824   # largest frame payload a party accepts on any link
                                   # (default: 4 GiB for party programs; `serve` sizes its
                                   # links from the plan unless this is set)
    max_batch = 256                # largest batch a server accepts from a user (default 256)

    [service]                      # optional: how `secinfer serve` shares the servers
    max_users = 16                 # user sessions served at once; one more is told "busy"
    batching = true                # run concurrent users' requests as one batch
    batch_wait_ms = 0              # how long P0 waits for more users to fill a batch

    [[party]]
    id = 0
    role = "server"
    host = "127.0.0.1"
    port = 29500
    cert = "certs/party0.pem"
    key = "certs/party0.key"

A party's TLS identity is the DNS name ``party-<id>`` in its certificate, so a certificate
issued to party 1 cannot be used to impersonate party 2.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import TopologyError
from .framing import DEFAULT_MAX_PAYLOAD

__all__ = ["PartySpec", "Topology", "party_dns_name", "free_ports", "write_local_topology",
           "DEFAULT_MAX_BATCH", "LIMIT_KEYS"]

DEFAULT_MAX_BATCH = 256
LIMIT_KEYS = ("max_frame_bytes", "max_batch")


def party_dns_name(party_id: int) -> str:
    return f"party-{party_id}"


@dataclass(frozen=True)
class PartySpec:
    id: int
    role: str
    host: str
    port: int
    cert: Path
    key: Path

    @property
    def name(self) -> str:
        return f"party {self.id} ({self.role}, {self.host}:{self.port})"


@dataclass(frozen=True)
class Topology:
    parties: tuple[PartySpec, ...]
    ca_cert: Path
    ca_key: Path | None = None
    timeout: float = 30.0
    connect_timeout: float = 30.0
    source: Path | None = None
    max_frame_bytes: int | None = None  # [limits]; None: the caller's default
    max_batch: int = DEFAULT_MAX_BATCH  # [limits]
    max_users: int = 16  # [service]
    batching: bool = True  # [service]
    batch_wait_ms: int = 0  # [service]

    @property
    def frame_limit(self) -> int:
        """The frame payload limit of a link: ``[limits] max_frame_bytes`` or the default."""
        return self.max_frame_bytes if self.max_frame_bytes is not None else DEFAULT_MAX_PAYLOAD

    def party(self, party_id: int) -> PartySpec:
        for p in self.parties:
            if p.id == party_id:
                return p
        ids = ", ".join(str(p.id) for p in self.parties)
        raise TopologyError(f"party {party_id} is not in the topology (parties: {ids})")

    @property
    def ids(self) -> list[int]:
        return [p.id for p in self.parties]

    def by_role(self, role: str) -> list[PartySpec]:
        return [p for p in self.parties if p.role == role]

    def with_timeout(self, timeout: float) -> Topology:
        return replace(self, timeout=timeout)

    @classmethod
    def load(cls, path: str | Path) -> Topology:
        path = Path(path).resolve()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise TopologyError(f"topology file {path} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise TopologyError(f"topology file {path} is not valid TOML: {e}") from e
        return cls.from_dict(data, base=path.parent, source=path)

    @classmethod
    def from_dict(cls, data: dict, base: Path, source: Path | None = None) -> Topology:
        """Validate strictly: an unknown table or key (a typo such as ``[sesion]`` or
        ``timout``) is an error naming it, never silently ignored."""
        where = str(source) if source else "topology"
        _known(data, _TOP_KEYS, where, "top-level table")
        tls = data.get("tls")
        if not isinstance(tls, dict) or "ca_cert" not in tls:
            raise TopologyError(f"{where}: missing [tls] ca_cert")
        _known(tls, _TLS_KEYS, where, "[tls] key")
        raw_parties = data.get("party")
        if not isinstance(raw_parties, list) or not raw_parties:
            raise TopologyError(f"{where}: no [[party]] entries")
        parties = []
        for i, p in enumerate(raw_parties):
            if not isinstance(p, dict):
                raise TopologyError(f"{where}: party entry #{i} must be a [[party]] table")
            _known(p, _PARTY_KEYS, where, f"key in party entry #{i}")
            missing = [k for k in ("id", "host", "port", "cert", "key") if k not in p]
            if missing:
                raise TopologyError(f"{where}: party entry #{i} lacks {', '.join(missing)}")
            if not isinstance(p["id"], int) or p["id"] < 0:
                raise TopologyError(f"{where}: party entry #{i} has a bad id {p['id']!r}")
            if not isinstance(p["port"], int) or not 0 < p["port"] < 65536:
                raise TopologyError(f"{where}: party {p['id']} has a bad port {p['port']!r}")
            parties.append(
                PartySpec(
                    id=p["id"], role=str(p.get("role", "party")), host=str(p["host"]),
                    port=p["port"], cert=(base / p["cert"]).resolve(),
                    key=(base / p["key"]).resolve(),
                )
            )
        ids = [p.id for p in parties]
        if len(set(ids)) != len(ids):
            raise TopologyError(f"{where}: duplicate party ids {ids}")
        seen: dict[tuple[str, int], PartySpec] = {}
        for p in parties:
            for addr in _addresses(p.host):
                other = seen.get((addr, p.port))
                if other is not None and other.id != p.id:
                    raise TopologyError(f"{where}: parties {other.id} ({other.host}:{other.port})"
                                        f" and {p.id} ({p.host}:{p.port}) are the same "
                                        "address and port")
                seen[(addr, p.port)] = p
        sess = data.get("session", {})
        if not isinstance(sess, dict):
            raise TopologyError(f"{where}: [session] must be a table")
        _known(sess, _SESSION_KEYS, where, "[session] key")
        timeout = _positive_seconds(sess, "timeout", where)
        connect_timeout = _positive_seconds(sess, "connect_timeout", where)
        limits: dict[str, Any] = _parse_limits(data.get("limits", {}), where)
        limits.update(_parse_service(data.get("service", {}), where))
        return cls(
            parties=tuple(sorted(parties, key=lambda p: p.id)),
            ca_cert=(base / tls["ca_cert"]).resolve(),
            ca_key=(base / tls["ca_key"]).resolve() if "ca_key" in tls else None,
            timeout=timeout,
            connect_timeout=connect_timeout,
            source=source,
            **limits,
        )


def _addresses(host: str) -> set[str]:
    """The addresses ``host`` stands for, as far as they are known without a DNS query (which
    could hang at load time): an IP literal itself; ``localhost`` every loopback address of
    both families; any other name itself, lowercased."""
    name = host.strip().lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        if name == "localhost" or name.endswith(".localhost"):
            return {"127.0.0.1", "::1"}
        return {name}
    if ip.is_loopback:
        return {str(ip), "127.0.0.1" if ip.version == 4 else "::1"}
    return {str(ip)}


_TOP_KEYS = ("session", "tls", "limits", "service", "party")
_TLS_KEYS = ("ca_cert", "ca_key")
_SESSION_KEYS = ("timeout", "connect_timeout")
_PARTY_KEYS = ("id", "role", "host", "port", "cert", "key")


def _known(table: dict, known: tuple[str, ...], where: str, what: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise TopologyError(f"{where}: unknown {what}(s) {', '.join(map(repr, unknown))} "
                            f"(known: {', '.join(known)})")


def _positive_seconds(sess: dict, key: str, where: str, default: float = 30.0) -> float:
    value = sess.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or value == float("inf"):
        raise TopologyError(f"{where}: session.{key} must be a positive number of seconds, "
                            f"got {value!r}")
    return float(value)


def _parse_limits(raw: object, where: str) -> dict[str, int]:
    """``[limits]``: known keys only, each a positive integer (not a bool, float or string)."""
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: [limits] must be a table")
    unknown = sorted(set(raw) - set(LIMIT_KEYS))
    if unknown:
        raise TopologyError(f"{where}: unknown [limits] key(s) {', '.join(unknown)} "
                            f"(known: {', '.join(LIMIT_KEYS)})")
    out: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TopologyError(f"{where}: limits.{key} must be a positive integer, "
                                f"got {value!r}")
        out[key] = value
    return out


def _parse_service(raw: object, where: str) -> dict:
    """``[service]``: ``max_users`` >= 1, ``batching`` a bool, ``batch_wait_ms`` >= 0."""
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: [service] must be a table")
    _known(raw, _SERVICE_KEYS, where, "[service] key")
    out: dict = {}
    for key in ("max_users", "batch_wait_ms"):
        if key in raw:
            v = raw[key]
            low = 1 if key == "max_users" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low or v > 10**6:
                raise TopologyError(f"{where}: service.{key} must be an integer >= {low}, "
                                    f"got {v!r}")
            out[key] = v
    if "batching" in raw:
        if not isinstance(raw["batching"], bool):
            raise TopologyError(f"{where}: service.batching must be true or false, got "
                                f"{raw['batching']!r}")
        out["batching"] = raw["batching"]
    return out


_SERVICE_KEYS = ("max_users", "batching", "batch_wait_ms")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that are bindable now, below Linux's ephemeral range.

    Ports handed out by the OS (bind to 0) come from the ephemeral range that outgoing
    connections also draw from, so another process could take one before the party binds it;
    random ports in 20000-32767 avoid that race. Still a best effort.
    """
    rng = secrets.SystemRandom()
    ports: list[int] = []
    for _ in range(50 * n):
        if len(ports) == n:
            break
        port = rng.randrange(20000, 32768)
        if port in ports:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < n:
        raise TopologyError(f"could not find {n} free ports on {host}")
    return ports


def write_local_topology(
    folder: str | Path,
    roles: list[str],
    timeout: float = 30.0,
    host: str = "127.0.0.1",
    ports: list[int] | None = None,
    connect_timeout: float = 30.0,
    limits: dict[str, int] | None = None,
    service: dict[str, int | bool] | None = None,
) -> Path:
    """Write ``topology.toml`` for ``len(roles)`` parties on loopback; returns its path.

    ``limits`` (optional) becomes the ``[limits]`` table (``max_frame_bytes``, ``max_batch``).

    Certificates are not created here: call :func:`secinfer.net.tls.make_certs` (or
    ``secinfer certs``) next.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ports = ports or free_ports(len(roles), host)
    lines = [
        "[session]",
        f"timeout = {float(timeout)}",
        f"connect_timeout = {float(connect_timeout)}",
        "",
        "[tls]",
        'ca_cert = "certs/ca.pem"',
        'ca_key = "certs/ca.key"',
    ]
    if limits:
        lines += ["", "[limits]"] + [f"{k} = {int(v)}" for k, v in limits.items()]
    if service:
        lines += ["", "[service]"] + [
            f"{k} = {str(v).lower() if isinstance(v, bool) else int(v)}"
            for k, v in service.items()]
    for i, (role, port) in enumerate(zip(roles, ports, strict=True)):
        lines += [
            "",
            "[[party]]",
            f"id = {i}",
            f'role = "{role}"',
            f'host = "{host}"',
            f"port = {port}",
            f'cert = "certs/party{i}.pem"',
            f'key = "certs/party{i}.key"',
        ]
    path = folder / "topology.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
