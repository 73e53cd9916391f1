"""The enclave as a long-lived service (threads over real mutual-TLS sockets): a lying device
is caught, the user told, and the enclave serves again once an honest device is back."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from secinfer.data import fashion_mnist
from secinfer.models import zoo
from secinfer.net import RequestRefused, local_cluster
from secinfer.tee.bundle import EnclaveBundle
from secinfer.tee.device import Fault
from secinfer.tee.enclave import Enclave
from secinfer.tee.from_plan import provision_model
from secinfer.tee.service import TeeClient, serve_device, serve_enclave

pytestmark = pytest.mark.network


def _thread(fn, *args, **kw) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kw, daemon=True)
    t.start()
    return t


def test_a_lying_device_is_caught_and_an_honest_one_serves_again(tmp_path):
    model = zoo.pretrained("fmnist_cnn")
    cal = fashion_mnist.load("train", limit=128)[0]
    provision_model(model, (1, 28, 28), tmp_path / "b", cal)
    x = fashion_mnist.load("test", limit=6)[0]
    ref = Enclave(EnclaveBundle.load(tmp_path / "b" / "enclave")).model.forward(x.double())
    with local_cluster(roles=["enclave", "device", "user"], workdir=tmp_path, timeout=10,
                       connect_timeout=10) as cluster:
        topo = cluster.topology
        stop_e, stop_liar, stop_honest = threading.Event(), threading.Event(), threading.Event()
        enclave = _thread(serve_enclave, topo, 0, tmp_path / "b" / "enclave", stop=stop_e)
        liar = _thread(serve_device, topo, 1, tmp_path / "b" / "device", stop=stop_liar,
                       fault=Fault("noise", "all"))
        with TeeClient(topo) as c, pytest.raises(RequestRefused,
                                                 match=r"integrity check failed: the device "
                                                       r"\(party 1\)"):
            c.predict(x)
        stop_liar.set()
        liar.join(30)
        assert not liar.is_alive()
        honest = _thread(serve_device, topo, 1, tmp_path / "b" / "device", stop=stop_honest)
        deadline = time.monotonic() + 30
        while True:
            try:
                with TeeClient(topo) as c:
                    out = c.predict(x)
                break
            except RequestRefused as e:  # the enclave is still dialing the new device
                assert "failed" in str(e) and time.monotonic() < deadline, e
                time.sleep(0.5)
        assert torch.equal(out, ref)
        with TeeClient(topo) as c:
            with pytest.raises(ValueError, match="NaN"):
                c.predict(torch.full((1, 1, 28, 28), float("nan")))
            with pytest.raises(RequestRefused, match="does not take inputs of shape"):
                c.predict(torch.zeros(1, 1, 27, 28))
        with TeeClient(topo) as c:
            assert torch.equal(c.predict(x[:2]), ref[:2])
        stop_e.set()
        stop_honest.set()
        enclave.join(30)
        honest.join(30)


def test_a_full_enclave_says_busy_and_a_refused_input_keeps_the_session(tmp_path):
    model = zoo.pretrained("fmnist_cnn")
    cal = fashion_mnist.load("train", limit=64)[0]
    provision_model(model, (1, 28, 28), tmp_path / "b", cal)
    x = fashion_mnist.load("test", limit=3)[0]
    ref = Enclave(EnclaveBundle.load(tmp_path / "b" / "enclave")).model.forward(x.double())
    with local_cluster(roles=["enclave", "device", "user"], workdir=tmp_path, timeout=10,
                       connect_timeout=10, service={"max_users": 1}) as cluster:
        topo = cluster.topology
        stop = threading.Event()
        enclave = _thread(serve_enclave, topo, 0, tmp_path / "b" / "enclave", stop=stop)
        device = _thread(serve_device, topo, 1, tmp_path / "b" / "device", stop=stop)
        try:
            with TeeClient(topo) as first:
                with pytest.raises(RequestRefused, match=r"busy: the enclave serves at most 1"):
                    TeeClient(topo).connect()
                # a refused request is answered and the same session serves the next one
                with pytest.raises(RequestRefused, match="does not take inputs of shape"):
                    first.predict(torch.zeros(1, 1, 27, 28))
                assert torch.equal(first.predict(x), ref)
            deadline = time.monotonic() + 10
            while True:  # the slot frees once the enclave has seen the first user's goodbye
                try:
                    with TeeClient(topo) as again:
                        assert torch.equal(again.predict(x[:1]), ref[:1])
                    break
                except RequestRefused as e:
                    assert "busy" in str(e) and time.monotonic() < deadline, e
                    time.sleep(0.1)
        finally:
            stop.set()
            enclave.join(30)
            device.join(30)
    assert not enclave.is_alive() and not device.is_alive()
