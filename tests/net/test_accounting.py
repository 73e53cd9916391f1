"""Known-answer tests: byte and round counts equal the documented definitions exactly."""

import torch

from secinfer.net import run_in_memory


def _script(s):
    # party 0: send to 1 and 2, receive from both (1 round); then a receive-send-receive chain
    # with party 1 (2 more rounds). Tensors: int64 (10,) = 80 B; float32 (2, 3) = 24 B.
    x = torch.zeros(10, dtype=torch.int64)
    y = torch.zeros(2, 3, dtype=torch.float32)
    with s.op("a"):
        s.exchange(dict.fromkeys(s.peers, x))
    with s.op("b"):
        if s.party_id == 0:
            s.recv(1)
            s.send(1, y)
            s.recv(1)
        elif s.party_id == 1:
            s.send(0, y)
            s.recv(0)
            s.send(0, y)
        with s.op("inner"):
            if s.party_id == 2:
                s.send(0, y)
            if s.party_id == 0:
                s.recv(2)
    return s.report()


def test_known_answer_bytes_and_rounds():
    r0, r1, r2 = run_in_memory(3, _script)
    a0 = r0["a"]
    assert (a0["bytes_sent"], a0["bytes_recv"], a0["rounds"]) == (160, 160, 1)
    assert a0["wire_bytes_sent"] == 2 * (38 + 8 + 80)
    assert a0["per_peer_sent"] == {"1": 80, "2": 80}
    b0 = r0["b"]
    # recv, send, recv: two rounds; the later recv from party 2 needs no new round
    assert (b0["bytes_sent"], b0["bytes_recv"], b0["rounds"]) == (24, 72, 2)
    assert r0["b/inner"]["rounds"] == 1 and r0["b/inner"]["bytes_recv"] == 24
    b1 = r1["b"]
    assert (b1["bytes_sent"], b1["bytes_recv"], b1["rounds"]) == (48, 24, 1)
    assert r2["b"]["rounds"] == 0 and r2["b"]["bytes_sent"] == 24
    total0 = r0["<total>"]
    assert total0["bytes_sent"] == 184 and total0["bytes_recv"] == 232
    assert total0["messages_recv"] == 5
