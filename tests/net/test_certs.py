"""Deployment certificates: each party makes its own key and CSR, the owner's CA signs."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace

import pytest
import torch

from secinfer.cli import main as cli_main
from secinfer.net import (
    CertificateRequestError,
    HandshakeError,
    PeerTimeout,
    Session,
    Topology,
    init_ca,
    make_certs,
    make_key_and_csr,
    sign_csr,
    write_local_topology,
)

pytestmark = pytest.mark.network


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _owner_topology(tmp_path, name="owner", roles=("server", "server")):
    return Topology.load(write_local_topology(tmp_path / name, list(roles), timeout=5,
                                              connect_timeout=4))


def _party_machine(tmp_path, topo, pid, ca_topo=None):
    """Party ``pid`` makes its key on 'its machine' (its own folder); the CA signs the CSR."""
    d = tmp_path / f"machine{pid}"
    key, csr = make_key_and_csr(topo, pid, d / "party.key", d / "party.csr")
    sign_csr(ca_topo or topo, pid, csr, d / "party.pem")
    return replace(topo.party(pid), cert=d / "party.pem", key=key)


def _connect_both(topo_a, topo_b):
    out: dict = {}

    def body(topo, pid):
        try:
            s = Session.connect(topo, pid)
            if pid == 0:
                s.send(1, torch.arange(5))
            else:
                out["got"] = s.recv(0)
            out[pid] = s
        except Exception as e:  # noqa: BLE001 - inspected below
            out[pid] = e

    ts = [threading.Thread(target=body, args=(topo_a, 0)),
          threading.Thread(target=body, args=(topo_b, 1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return out


def test_keys_made_separately_and_signed_by_the_owner_give_a_working_tls_session(tmp_path):
    owner = _owner_topology(tmp_path)
    init_ca(owner.ca_cert, owner.ca_key)
    assert _mode(owner.ca_key) == 0o600
    parties = tuple(_party_machine(tmp_path, owner, pid) for pid in (0, 1))
    for p in parties:
        assert _mode(p.key) == 0o600
        assert p.key.parent != owner.ca_key.parent
    # the owner's folder never held a party key: only the CA's
    assert sorted(f.name for f in owner.ca_key.parent.glob("*.key")) == ["ca.key"]
    topo = replace(owner, parties=parties)
    out = _connect_both(topo, topo)
    try:
        assert isinstance(out[0], Session) and isinstance(out[1], Session), out
        assert torch.equal(out["got"], torch.arange(5))
    finally:
        for v in out.values():
            if isinstance(v, Session):
                v.close()


def test_a_certificate_signed_by_another_ca_is_refused(tmp_path):
    owner = _owner_topology(tmp_path)
    init_ca(owner.ca_cert, owner.ca_key)
    rogue_ca = _owner_topology(tmp_path, "rogue")
    init_ca(rogue_ca.ca_cert, rogue_ca.ca_key)
    good0 = _party_machine(tmp_path, owner, 0)
    bad1 = _party_machine(tmp_path, owner, 1, ca_topo=rogue_ca)  # party 1's cert from the rogue
    topo = replace(owner, parties=(good0, bad1))
    out = _connect_both(topo, topo)
    for v in (out[0], out[1]):
        if isinstance(v, Session):
            v.close()
    assert isinstance(out[0], PeerTimeout | HandshakeError), out[0]
    assert isinstance(out[1], PeerTimeout | HandshakeError), out[1]
    assert "got" not in out


def test_a_csr_for_another_name_or_role_is_refused(tmp_path):
    owner = _owner_topology(tmp_path, roles=("server", "server", "helper"))
    init_ca(owner.ca_cert, owner.ca_key)
    _, csr1 = make_key_and_csr(owner, 1, tmp_path / "m1" / "k", tmp_path / "m1" / "r.csr")
    with pytest.raises(CertificateRequestError, match="for party-1, not for party-0"):
        sign_csr(owner, 0, csr1, tmp_path / "stolen0.pem")
    assert not (tmp_path / "stolen0.pem").exists()
    # a CSR made from a topology where id 2 is a server is refused for the helper's id 2
    liar = replace(owner, parties=tuple(replace(p, role="server") if p.id == 2 else p
                                        for p in owner.parties))
    _, csr2 = make_key_and_csr(liar, 2, tmp_path / "m2" / "k", tmp_path / "m2" / "r.csr")
    with pytest.raises(CertificateRequestError, match="role server.*role 'helper'"):
        sign_csr(owner, 2, csr2, tmp_path / "p2.pem")
    # the right request is signed
    sign_csr(owner, 1, csr1, tmp_path / "p1.pem")
    assert (tmp_path / "p1.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    garbage = tmp_path / "g.csr"
    garbage.write_text("not a csr")
    with pytest.raises(CertificateRequestError, match="not a PEM certificate request"):
        sign_csr(owner, 1, garbage, tmp_path / "g.pem")


def test_key_files_are_0600_even_over_an_existing_0644_file(tmp_path):
    topo = _owner_topology(tmp_path)
    for f in (topo.ca_key, *(p.key for p in topo.parties)):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("old")
        os.chmod(f, 0o644)
    make_certs(topo, overwrite=True)
    for f in (topo.ca_key, *(p.key for p in topo.parties)):
        assert _mode(f) == 0o600, f
        assert f.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    key = topo.party(0).key
    os.chmod(key, 0o644)
    make_key_and_csr(topo, 0, overwrite=True)
    assert _mode(key) == 0o600
    assert not list(key.parent.glob(".*.tmp"))  # no temporary key file left behind


def test_cli_flow_init_ca_keygen_sign(tmp_path, capsys):
    path = write_local_topology(tmp_path, ["server", "server", "helper", "user"])
    assert cli_main(["certs", "init-ca", "--topology", str(path)]) == 0
    assert cli_main(["certs", "keygen", "--topology", str(path), "--id", "2",
                     "--out", str(tmp_path / "helper")]) == 0
    csr = tmp_path / "helper" / "party2.csr"
    assert _mode(tmp_path / "helper" / "party2.key") == 0o600
    assert cli_main(["certs", "sign", "--topology", str(path), "--id", "2", "--csr",
                     str(csr)]) == 0
    assert (tmp_path / "helper" / "party2.pem").exists()
    assert cli_main(["certs", "sign", "--topology", str(path), "--id", "1", "--csr", str(csr),
                     "--out", str(tmp_path / "x.pem")]) == 2  # a SecinferError: exit 2
    assert "not for party-1" in capsys.readouterr().err
    assert cli_main(["certs", "--topology", str(path), "--force"]) == 0
    assert "LOCAL DEMO" in capsys.readouterr().err


@pytest.mark.parametrize("which, damage, error", [
    ("cert", "delete", r"party 0's certificate \S+party0\.pem does not exist"),
    ("key", "delete", r"party 0's private key \S+party0\.key does not exist"),
    ("ca", "delete", r"the CA certificate \S+ca\.pem does not exist"),
    ("cert", "garbage", r"party 0's certificate \S+party0\.pem or key \S+ is not PEM"),
    ("ca", "garbage", r"the CA certificate \S+ca\.pem is not a PEM certificate"),
])
def test_a_missing_or_corrupt_certificate_file_is_named(tmp_path, which, damage, error):
    from secinfer.net import Topology, make_certs, write_local_topology
    from secinfer.net.tls import CertificateFileError, server_context

    topo = Topology.load(write_local_topology(tmp_path, ["server", "server"]))
    make_certs(topo, overwrite=True)
    me = topo.party(0)
    path = {"cert": me.cert, "key": me.key, "ca": topo.ca_cert}[which]
    if damage == "delete":
        path.unlink()
    else:
        path.write_text("garbage\n")
    with pytest.raises(CertificateFileError, match=error):
        server_context(topo, me)
