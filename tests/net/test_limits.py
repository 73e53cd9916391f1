"""Frame-size limits from the topology's [limits]: typed, validated, enforced on every link."""

from __future__ import annotations

import struct
import threading

import pytest
import torch

from secinfer.net import (
    FrameError,
    Session,
    Topology,
    TopologyError,
    framing,
    make_certs,
    run_in_memory,
    write_local_topology,
)

SESSION = bytes(range(16))


def _topology(tmp_path, body: str) -> Topology:
    f = tmp_path / "t.toml"
    f.write_text("[tls]\nca_cert='ca.pem'\n[[party]]\nid=0\nhost='127.0.0.1'\nport=20001\n"
                 "cert='a'\nkey='b'\n" + body)
    return Topology.load(f)


def test_limits_section_is_strict_and_typed(tmp_path):
    t = _topology(tmp_path, "[limits]\nmax_frame_bytes = 4096\nmax_batch = 8\n")
    assert (t.max_frame_bytes, t.max_batch, t.frame_limit) == (4096, 8, 4096)
    d = _topology(tmp_path, "")
    assert d.max_frame_bytes is None and d.max_batch == 256
    assert d.frame_limit == framing.DEFAULT_MAX_PAYLOAD == 1 << 32
    for bad, msg in (("max_batch = 0", "limits.max_batch must be a positive integer, got 0"),
                     ("max_batch = 2.5", "must be a positive integer, got 2.5"),
                     ("max_batch = true", "must be a positive integer, got True"),
                     ("max_frame_bytes = '1G'", "max_frame_bytes must be a positive integer"),
                     ("max_frames = 3", "unknown \\[limits\\] key\\(s\\) max_frames")):
        with pytest.raises(TopologyError, match=msg):
            _topology(tmp_path, f"[limits]\n{bad}\n")


def test_an_oversize_frame_header_is_refused_before_any_allocation():
    # a header announcing 2^40 bytes (1 TiB) with no payload behind it
    h = framing.FrameHeader(torch.uint8, (1 << 40,), SESSION, 0, 1 << 40)
    with pytest.raises(FrameError, match=f"{1 << 40} bytes exceeds the frame limit "
                                         "max_frame_bytes = 1048576"):
        framing.FrameDecoder(SESSION, max_payload=1 << 20).feed(framing.encode_header(h))
    # the same through decode_header, as the socket reader calls it
    raw = framing.encode_header(h)
    with pytest.raises(FrameError, match="max_frame_bytes = 1048576"):
        framing.decode_header(raw[:framing.HEADER_FIXED], raw[framing.HEADER_FIXED:], 1 << 20)
    assert struct.unpack_from("<Q", raw, 30)[0] == 1 << 40


def test_in_memory_links_enforce_the_same_limit():
    def prog(s):
        if s.party_id == 0:
            s.send(1, torch.zeros(100, dtype=torch.int64))  # 800 bytes
            return None
        return s.recv(0)

    assert run_in_memory(2, prog, max_frame_bytes=800)[1].numel() == 100
    with pytest.raises(FrameError, match="800 bytes exceeds the frame limit "
                                         "max_frame_bytes = 799"):
        run_in_memory(2, prog, max_frame_bytes=799, timeout=5)


@pytest.mark.network
def test_tls_link_refuses_a_frame_over_the_topology_limit_naming_it(tmp_path):
    path = write_local_topology(tmp_path, ["a", "b"], timeout=5, connect_timeout=5,
                                limits={"max_frame_bytes": 1024})
    topo = Topology.load(path)
    assert topo.max_frame_bytes == 1024
    make_certs(topo, overwrite=True)
    got: dict = {}

    def receiver():
        try:
            with Session.connect(topo, 1) as s:
                got["small"] = s.recv(0)
                got["big"] = s.recv(0)
        except Exception as e:  # noqa: BLE001 - inspected below
            got["error"] = e

    t = threading.Thread(target=receiver)
    t.start()
    with Session.connect(topo, 0) as s:
        s.send(1, torch.zeros(128, dtype=torch.int64))   # 1024 bytes: at the limit
        s.send(1, torch.zeros(129, dtype=torch.int64))   # 1032 bytes: over it
        t.join(20)
    assert got["small"].numel() == 128
    err = got.get("error")
    assert isinstance(err, FrameError), got
    assert "1032 bytes exceeds the frame limit max_frame_bytes = 1024" in str(err)
    assert "party 0" in str(err)
