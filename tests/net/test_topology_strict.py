"""The topology file is validated strictly: typos and bad values are errors that name them."""

from __future__ import annotations

import pytest

from secinfer.net import Topology, write_local_topology
from secinfer.net.errors import TopologyError


@pytest.fixture
def good(tmp_path):
    path = write_local_topology(tmp_path, ["server", "server", "helper", "user"], timeout=20,
                                connect_timeout=10, limits={"max_batch": 4})
    Topology.load(path)  # the file as written is valid
    return path


@pytest.mark.parametrize("edit, error", [
    (lambda t: t.replace("[session]", "[sesion]"), "unknown top-level table.*'sesion'"),
    (lambda t: t.replace("timeout = 20.0", "timout = 20.0"), r"unknown \[session\] key.*'timout'"),
    (lambda t: t.replace("connect_timeout = 10.0", "connect_timeout = -1"),
     "session.connect_timeout must be a positive number"),
    (lambda t: t.replace("timeout = 20.0", 'timeout = "20"'), "session.timeout must be a positive"),
    (lambda t: t.replace("timeout = 20.0", "timeout = inf"), "session.timeout must be a positive"),
    (lambda t: t.replace("timeout = 20.0", "timeout = true"), "session.timeout must be a positive"),
    (lambda t: t.replace("ca_cert", "ca_crt", 1), r"missing \[tls\] ca_cert"),
    (lambda t: t.replace("[tls]", "[tls]\nca_chain = 'x.pem'"), r"unknown \[tls\] key.*'ca_chain'"),
    (lambda t: t.replace("port =", "prot = 1\nport =", 1), "unknown key in party entry #0.*'prot'"),
    (lambda t: t + "\n[extra]\nanything = 1\n", "unknown top-level table.*'extra'"),
    (lambda t: t.replace("max_batch = 4", "max_bacth = 4"), r"unknown \[limits\] key"),
    (lambda t: t + "\n[service]\nmax_user = 4\n", r"unknown \[service\] key.*'max_user'"),
    (lambda t: t + "\n[service]\nmax_users = 0\n", "max_users"),
    (lambda t: t + "\n[service]\nbatch_wait_ms = -1\n", "batch_wait_ms"),
    (lambda t: t + "\n[service]\nbatching = 1\n", "batching"),
])
def test_a_typo_or_bad_value_is_an_error_that_names_it(good, edit, error):
    good.write_text(edit(good.read_text()))
    with pytest.raises(TopologyError, match=error):
        Topology.load(good)


@pytest.mark.parametrize("a, b", [("127.0.0.1", "localhost"), ("localhost", "LOCALHOST."),
                                  ("127.0.0.1", "127.0.0.1"), ("::1", "localhost"),
                                  ("10.0.0.5", "10.0.0.5")])
def test_two_parties_on_one_address_and_port_are_refused(good, a, b):
    text = good.read_text()
    ports = [line for line in text.splitlines() if line.startswith("port =")]
    hosts = [line for line in text.splitlines() if line.startswith("host =")]
    text = text.replace(ports[1], ports[0]).replace(hosts[0], f'host = "{a}"', 1)
    second = text.index(hosts[1], text.index(ports[0]) + 1)
    text = text[:second] + f'host = "{b}"' + text[second + len(hosts[1]):]
    good.write_text(text)
    with pytest.raises(TopologyError, match="are the same address and port"):
        Topology.load(good)


def test_different_hosts_may_share_a_port(good):
    text = good.read_text()
    ports = [line for line in text.splitlines() if line.startswith("port =")]
    hosts = [line for line in text.splitlines() if line.startswith("host =")]
    text = text.replace(ports[1], ports[0]).replace(hosts[0], 'host = "10.0.0.1"', 1)
    good.write_text(text)
    assert Topology.load(good).party(0).port == Topology.load(good).party(1).port
