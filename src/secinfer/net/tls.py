"""Certificates and mutual-TLS contexts.

Deployment flow (every private key stays on the machine that made it)::

    owner:      init_ca(ca_cert, ca_key)                      # secinfer certs init-ca
    each party: make_key_and_csr(topology, id, key, csr)      # secinfer certs keygen
                (sends the CSR, never the key, to the owner)
    owner:      sign_csr(topology, id, csr, cert)             # secinfer certs sign
                (checks that the CSR names party-<id> with the topology's role for <id>)

``make_certs`` is the one-machine shortcut for local demos and tests: it creates the CA and
EVERY party's private key in one place, so whoever runs it holds the keys of both
non-colluding servers and of the helper and can impersonate any of them. Never use it for a
deployment whose privacy rests on non-collusion.

Certificates are EC P-256 with the party's identity ``party-<id>`` as DNS SAN. Contexts require
TLS 1.3 and a peer certificate signed by the topology's CA on both sides; a plaintext peer or
one with a foreign CA fails the handshake. Private keys are always written with mode 0600,
also when they replace an existing file with other permissions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import SecinferNetError
from .topology import PartySpec, Topology, party_dns_name

__all__ = [
    "make_certs", "init_ca", "make_key_and_csr", "sign_csr", "CertificateRequestError",
    "CertificateFileError",
    "server_context", "client_context", "peer_party_id", "KEY_MODE",
]

_VALID_DAYS = 365
KEY_MODE = 0o600


class CertificateRequestError(SecinferNetError, ValueError):
    """A certificate signing request is malformed, badly signed, or names another party/role."""


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key with mode 0600, atomically.

    The key goes to a fresh temporary file created 0600 (``O_EXCL``, fchmod'ed so no umask or
    inherited mode can widen it) that then replaces ``path``: a key file that existed with mode
    0644 ends up 0600, and the key bytes are never in a file anybody else can read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        os.fchmod(fd, KEY_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secinfer")]
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    party: PartySpec, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _issue(party, key.public_key(), ca_key, ca_cert)


def _issue(party: PartySpec, public_key, ca_key: ec.EllipticCurvePrivateKey,
           ca_cert: x509.Certificate) -> x509.Certificate:
    """The CA's certificate for ``party``: names, SANs and usages come from the topology, never
    from the request."""
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(party_dns_name(party.id))]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(party.host)))
    except ValueError:
        sans.append(x509.DNSName(party.host))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(party_dns_name(party.id), party.role))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def make_certs(topology: Topology, overwrite: bool = False) -> list[Path]:
    """LOCAL DEMOS AND TESTS ONLY: create the CA and EVERY party's key and certificate here.

    INSECURE FOR A REAL DEPLOYMENT: whoever runs this holds the private keys of both
    non-colluding compute servers and of the helper, so it can impersonate any of them and the
    non-collusion assumption is void. A deployment uses :func:`init_ca` (owner),
    :func:`make_key_and_csr` (each party, on its own machine) and :func:`sign_csr` (owner).

    Writes at the paths the topology names; refuses to overwrite existing files unless
    ``overwrite`` is set, so a running deployment's keys are never silently replaced.
    """
    targets = [topology.ca_cert]
    targets += [p for party in topology.parties for p in (party.cert, party.key)]
    if topology.ca_key is not None:
        targets.append(topology.ca_key)
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"certificate files already exist ({existing[0]} ...); pass overwrite=True / --force"
        )
    ca_key, ca_cert = _make_ca("secinfer CA")
    _write_cert(topology.ca_cert, ca_cert)
    if topology.ca_key is not None:
        _write_key(topology.ca_key, ca_key)
    for party in topology.parties:
        key, cert = _make_leaf(party, ca_key, ca_cert)
        _write_key(party.key, key)
        _write_cert(party.cert, cert)
    return targets


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True / --force")


def _load_pem_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as e:
        raise CertificateRequestError(f"{path} is not a PEM certificate: {e}") from e


def init_ca(ca_cert: str | Path, ca_key: str | Path, overwrite: bool = False,
            name: str = "secinfer CA") -> x509.Certificate:
    """The owner's step 1: a fresh CA key (0600) and self-signed CA certificate."""
    ca_cert, ca_key = Path(ca_cert), Path(ca_key)
    _refuse_existing([ca_cert, ca_key], overwrite)
    key, cert = _make_ca(name)
    _write_key(ca_key, key)
    _write_cert(ca_cert, cert)
    return cert


def make_key_and_csr(topology: Topology, party_id: int, key_path: str | Path | None = None,
                     csr_path: str | Path | None = None, overwrite: bool = False,
                     ) -> tuple[Path, Path]:
    """A party's step, on its own machine: a private key (0600) that never leaves it, and a
    certificate signing request for ``party-<id>`` with its role (sent to the owner's CA).

    Defaults: the key at the topology's key path for this party, the CSR beside it
    (``<key>.csr``). Returns (key path, CSR path).
    """
    party = topology.party(party_id)
    key_file = Path(key_path) if key_path is not None else party.key
    csr_file = Path(csr_path) if csr_path is not None else key_file.with_suffix(".csr")
    _refuse_existing([key_file, csr_file], overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(party_dns_name(party.id), party.role))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(party_dns_name(party.id))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_file, key)
    csr_file.parent.mkdir(parents=True, exist_ok=True)
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return key_file, csr_file


def _check_csr(csr: x509.CertificateSigningRequest, party: PartySpec, where: str) -> None:
    if not csr.is_signature_valid:
        raise CertificateRequestError(f"{where}: the request's signature is invalid")
    want = party_dns_name(party.id)
    cns = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [want]:
        raise CertificateRequestError(
            f"{where}: the request is for {', '.join(cns) or 'no name'}, not for {want} "
            f"(party {party.id}); refused")
    roles = [str(a.value)
             for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if roles != [party.role]:
        raise CertificateRequestError(
            f"{where}: the request claims role {', '.join(roles) or '(none)'}, but party "
            f"{party.id} has role {party.role!r} in the topology; refused")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        others = [n for n in names if n != want and n.startswith("party-")]
        if others:
            raise CertificateRequestError(
                f"{where}: the request also names {', '.join(others)}; refused")
    pub = csr.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.key_size < 256:
            raise CertificateRequestError(f"{where}: EC key of {pub.curve.key_size} bits is "
                                          "too small (at least 256)")
    else:
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not isinstance(pub, rsa.RSAPublicKey) or pub.key_size < 2048:
            raise CertificateRequestError(f"{where}: only EC (>= 256 bits) or RSA (>= 2048 "
                                          "bits) keys are signed")


def sign_csr(topology: Topology, party_id: int, csr_path: str | Path,
             cert_path: str | Path, ca_cert: str | Path | None = None,
             ca_key: str | Path | None = None, overwrite: bool = False) -> x509.Certificate:
    """The owner's step 2: check a party's CSR and issue its certificate.

    The request must be validly self-signed and name exactly ``party-<id>`` with the role the
    topology gives ``party_id``; anything else raises :class:`CertificateRequestError`. The
    certificate's names and usages come from the topology (the id and host), not from the
    request. ``ca_cert`` / ``ca_key`` default to the topology's ``[tls]`` paths.
    """
    party = topology.party(party_id)
    csr_file, cert_file = Path(csr_path), Path(cert_path)
    ca_cert_file = Path(ca_cert) if ca_cert is not None else topology.ca_cert
    if ca_key is not None:
        ca_key_file = Path(ca_key)
    elif topology.ca_key is not None:
        ca_key_file = topology.ca_key
    else:
        raise CertificateRequestError("no CA key: pass ca_key / --ca, or set [tls] ca_key")
    _refuse_existing([cert_file], overwrite)
    try:
        csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    except ValueError as e:
        raise CertificateRequestError(f"{csr_file} is not a PEM certificate request: {e}") from e
    _check_csr(csr, party, str(csr_file))
    ca = _load_pem_cert(ca_cert_file)
    key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateRequestError(f"{ca_key_file} is not an EC CA key")
    if key.public_key().public_numbers() != ca.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateRequestError(f"{ca_key_file} does not belong to {ca_cert_file}")
    cert = _issue(party, csr.public_key(), key, ca)
    _write_cert(cert_file, cert)
    return cert


class CertificateFileError(SecinferNetError, ValueError):
    """A party's certificate, key or the CA file is missing or unreadable (names the file)."""


def _base_context(purpose: ssl.Purpose, topology: Topology, me: PartySpec) -> ssl.SSLContext:
    who = f"party {me.id}" if me.id >= 0 else "the user"
    for what, f in (("the CA certificate", topology.ca_cert), (f"{who}'s certificate",
                    me.cert), (f"{who}'s private key", me.key)):
        if not Path(f).is_file():
            raise CertificateFileError(f"{what} {f} does not exist (create it with "
                                       "`secinfer certs`, or fix the path in the topology)")
    try:
        ctx = ssl.create_default_context(purpose, cafile=str(topology.ca_cert))
    except ssl.SSLError as e:
        raise CertificateFileError(f"the CA certificate {topology.ca_cert} is not a PEM "
                                   f"certificate: {e}") from e
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(me.cert), str(me.key))
    except ssl.SSLError as e:
        raise CertificateFileError(f"{who}'s certificate {me.cert} or key {me.key} is "
                                   f"not PEM, or the key does not match the certificate: {e}"
                                   ) from e
    return ctx


def server_context(topology: Topology, me: PartySpec) -> ssl.SSLContext:
    """Accepting side: requires a client certificate signed by the topology's CA."""
    ctx = _base_context(ssl.Purpose.CLIENT_AUTH, topology, me)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(topology: Topology, me: PartySpec) -> ssl.SSLContext:
    """Dialing side: verifies the server certificate and its ``party-<id>`` name."""
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, topology, me)
    ctx.check_hostname = True
    return ctx


def peer_party_id(sock: ssl.SSLSocket) -> int | None:
    """The party id in the verified peer certificate's DNS SAN, or None."""
    cert = sock.getpeercert()
    if not cert:
        return None
    for entry in cert.get("subjectAltName", ()):
        kind, value = str(entry[0]), str(entry[1])
        if kind == "DNS" and value.startswith("party-") and value[6:].isdigit():
            return int(value[6:])
    return None


def peer_identity(sock: ssl.SSLSocket) -> tuple[str | None, str | None]:
    """The verified peer certificate's first DNS SAN and its role (the subject's OU)."""
    cert = sock.getpeercert()
    if not cert:
        return None, None
    name = None
    for entry in cert.get("subjectAltName", ()):
        if str(entry[0]) == "DNS":
            name = str(entry[1])
            break
    role = None
    for rdn in cert.get("subject", ()):
        for attr in rdn:
            if str(attr[0]) == "organizationalUnitName":
                role = str(attr[1])
    return name, role


def user_dns_name(name: str) -> str:
    """The identity of a user that is not a party of the topology: ``user-<name>``."""
    if not name or len(name) > 40 or not all(c.isalnum() or c in "-_" for c in name):
        raise CertificateRequestError(
            f"user name {name!r}: use 1 to 40 letters, digits, '-' or '_'")
    return f"user-{name}"


def issue_user_cert(topology: Topology, name: str, cert_path: str | Path,
                    key_path: str | Path, overwrite: bool = False) -> Path:
    """The owner's CA issues a user certificate (role ``user``, DNS name ``user-<name>``).

    Any such certificate is served by the servers of this topology without a topology edit
    or a restart: servers admit every certificate with role ``user`` signed by the CA. Users
    open no port, so the certificate carries no address. Here the key is made beside the
    certificate (a user may also send a CSR through :func:`sign_user_csr`).
    """
    if topology.ca_key is None:
        raise CertificateRequestError("the topology names no [tls] ca_key: only the CA's "
                                      "holder can issue user certificates")
    cert_file, key_file = Path(cert_path), Path(key_path)
    _refuse_existing([cert_file, key_file], overwrite)
    ca = _load_pem_cert(Path(topology.ca_cert))
    ca_key = serialization.load_pem_private_key(Path(topology.ca_key).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateRequestError(f"{topology.ca_key} is not an EC CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    dns = user_dns_name(name)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns, "user"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_file, key)
    _write_cert(cert_file, cert)
    return cert_file


def user_context(topology: Topology, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A user's dialing context: its own certificate; verifies each server's ``party-<id>``."""
    me = PartySpec(id=-1, role="user", host="", port=0, cert=Path(cert), key=Path(key))
    return client_context(topology, me)

