"""Certificates and mutual-TLS contexts.

``make_certs`` creates a fresh CA (EC P-256) and one certificate per party signed by it, with the
party's identity ``party-<id>`` as DNS SAN. Contexts require TLS 1.3 and a peer certificate
signed by the topology's CA on both sides; a plaintext peer or one with a foreign CA fails the
handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .topology import PartySpec, Topology, party_dns_name

__all__ = ["make_certs", "server_context", "client_context", "peer_party_id"]

_VALID_DAYS = 365


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secinfer"),
         x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


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
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(party_dns_name(party.id))]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(party.host)))
    except ValueError:
        sans.append(x509.DNSName(party.host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(party_dns_name(party.id)))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
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
    return key, cert


def make_certs(topology: Topology, overwrite: bool = False) -> list[Path]:
    """Create the CA and each party's certificate and key at the paths the topology names.

    Refuses to overwrite existing files unless ``overwrite`` is set, so a running deployment's
    keys are never silently replaced.
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


def _base_context(purpose: ssl.Purpose, topology: Topology, me: PartySpec) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(topology.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(me.cert), str(me.key))
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
