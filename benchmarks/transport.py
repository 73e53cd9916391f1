"""Throughput of 64 MB tensor transfers between two processes: mutual-TLS channel vs raw socket.

Both sides run in separate OS processes on loopback, in this one command. The raw socket is the
floor (no encryption, no framing); the ratio is what TLS 1.3 + framing costs. The two are
measured in alternating rounds (``--rounds``) so that a machine shared with other work slows
both alike; the medians are over every transfer of every round.

    .venv/bin/python benchmarks/transport.py [--megabytes 64] [--reps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import time
from pathlib import Path

from secinfer.net import local_cluster

RESULTS = Path(__file__).resolve().parent / "results" / "transport.json"


def _raw_receiver(port: int, nbytes: int, reps: int) -> None:
    srv = socket.create_server(("127.0.0.1", port))
    conn, _ = srv.accept()
    buf = bytearray(nbytes)
    view = memoryview(buf)
    for _ in range(reps):
        got = 0
        while got < nbytes:
            got += conn.recv_into(view[got:], nbytes - got)
        conn.sendall(b"\x01")
    conn.close()
    srv.close()


def raw_socket_seconds(megabytes: int, reps: int) -> list[float]:
    nbytes = megabytes << 20
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_raw_receiver, args=(port, nbytes, reps))
    proc.start()
    payload = bytes(nbytes)
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sock.sendall(payload)
        sock.recv(1)
        times.append(time.perf_counter() - t0)
    sock.close()
    proc.join(30)
    return times


def ssl_encrypt_seconds(megabytes: int, reps: int) -> list[float]:
    """One thread pushing ``megabytes`` through CPython's ssl (TLS 1.3, memory BIOs, no socket).

    The encrypting side of any single TLS stream does at least this work, so ``raw / this`` is
    the best ratio a one-connection TLS channel can reach on this host.
    """
    import os
    import ssl
    import tempfile

    from secinfer.net import Topology, make_certs, write_local_topology
    from secinfer.net.tls import client_context, party_dns_name, server_context

    with tempfile.TemporaryDirectory(prefix="tls-ceiling-") as tmp:
        topo = Topology.load(write_local_topology(tmp, ["a", "b"]))
        make_certs(topo, overwrite=True)
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_context(topo, topo.party(0)).wrap_bio(
            c_in, c_out, server_hostname=party_dns_name(1))
        server = server_context(topo, topo.party(1)).wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # the handshake, by hand over the memory BIOs
            for end in (client, server):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        nbytes = megabytes << 20
        payload = memoryview(bytearray(os.urandom(1 << 20)) * megabytes)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for start in range(0, nbytes, 1 << 20):
                client.write(payload[start : start + (1 << 20)])
                c_out.read()
            times.append(time.perf_counter() - t0)
        return times


def tls_seconds(megabytes: int, reps: int) -> list[float]:
    with local_cluster(roles=["sender", "receiver"], timeout=60) as cluster:
        out = cluster.run("secinfer.net.programs:bulk",
                          kwargs={"megabytes": megabytes, "reps": reps}, timeout=600)
    return out[0]["seconds"].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--megabytes", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5, help="transfers per round and channel")
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw / TLS rounds")
    args = ap.parse_args()
    raw: list[float] = []
    tls: list[float] = []
    for _ in range(args.rounds):
        raw += raw_socket_seconds(args.megabytes, args.reps)
        tls += tls_seconds(args.megabytes, args.reps)
    enc = ssl_encrypt_seconds(args.megabytes, args.reps)
    mb = args.megabytes
    raw_med, tls_med = statistics.median(raw), statistics.median(tls)
    enc_med = statistics.median(enc)
    rows = [("raw loopback socket", raw_med, mb / raw_med), ("secinfer TLS channel", tls_med,
                                                             mb / tls_med),
            ("ssl encrypt only (1 thr)", enc_med, mb / enc_med)]
    print(f"{'channel':<26} {f'median s / {mb}MB':>16} {'MB/s':>10}")
    for name, sec, rate in rows:
        print(f"{name:<26} {sec:>16.4f} {rate:>10.1f}")
    ratio = tls_med / raw_med
    print(f"tls/raw ratio: {ratio:.3f}")  # transfer time, TLS channel over raw socket
    # the floor for one TLS stream: its sender must at least encrypt everything once
    print(f"ssl-encrypt-only/raw time ratio: {enc_med / raw_med:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "megabytes": mb, "reps": args.reps, "rounds": args.rounds,
        "raw_seconds": raw, "tls_seconds": tls,
        "raw_MBps": mb / raw_med, "tls_MBps": mb / tls_med, "tls_over_raw_ratio": ratio,
        "ssl_encrypt_seconds": enc, "ssl_encrypt_MBps": mb / enc_med,
        "ssl_encrypt_over_raw_ratio": enc_med / raw_med,
    }, indent=2))


if __name__ == "__main__":
    main()
