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
