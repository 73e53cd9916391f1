import secrets

import pytest
import torch

from secinfer.net import PeerTimeout, run_in_memory
from secinfer.net.programs import roundtrip, sample_tensors, storable


def test_roundtrip_in_memory():
    results = run_in_memory(3, roundtrip)
    samples = sample_tensors()
    for pid, got in enumerate(results):
        for peer in (p for p in range(3) if p != pid):
            for name, t in samples.items():
                r, want = got[f"from{peer}.{name}"], storable(t)
                assert r.shape == want.shape and r.dtype == want.dtype
                if r.numel() and not r.is_floating_point():
                    assert torch.equal(r, want)


def test_received_tensor_does_not_alias_sender():
    def prog(s):
        if s.party_id == 0:
            x = torch.zeros(3)
            s.send(1, x)
            x += 5
            return None
        return s.recv(0)

    assert torch.equal(run_in_memory(2, prog)[1], torch.zeros(3))


def test_silent_peer_times_out_naming_it():
    def prog(s):
        if s.party_id == 1:
            return s.recv(0)  # party 0 never sends
        return None

    with pytest.raises(PeerTimeout, match="party 0"):
        run_in_memory(2, prog, timeout=0.5)


# a stand-in secret that cannot collide with anything else in an abort message (a port, a
# counter, a party id): 32 random hex digits
_SECRET = secrets.token_hex(16)


def _failing(s):
    if s.party_id == 1:
        raise ValueError(f"secret value {_SECRET} must not leave the party")
    return s.recv(1, timeout=20)


def test_a_failing_party_aborts_its_peers_fast_without_leaking():
    import time

    from secinfer.net import PeerAborted, run_tls_threads

    for runner in (run_in_memory, run_tls_threads):
        seen = {}

        def prog(s, seen=seen):
            try:
                return _failing(s)
            except PeerAborted as e:
                seen[s.party_id] = str(e)
                raise

        t0 = time.monotonic()
        with pytest.raises(ValueError):
            runner(2, prog, timeout=20)
        assert time.monotonic() - t0 < 10
        assert "party 1" in seen[0] and "failed with ValueError" in seen[0]
        assert _SECRET not in seen[0]
