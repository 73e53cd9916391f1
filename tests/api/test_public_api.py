"""The public API: every exported name exists, callables say what they do, and the contract's
names are what the README shows."""

from __future__ import annotations

import importlib

import pytest

import secinfer

MODULES = ["secinfer", "secinfer.api", "secinfer.errors", "secinfer.artifacts", "secinfer.net",
           "secinfer.serve", "secinfer.mpc", "secinfer.models.bundle", "secinfer.stip",
           "secinfer.tee", "secinfer.tee.service", "secinfer.serve.served",
           "secinfer.transformer.user", "secinfer.transformer.clip_bundle"]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists_and_callables_have_docstrings(name):
    mod = importlib.import_module(name)
    assert mod.__doc__ and mod.__all__, name
    for member in mod.__all__:
        obj = getattr(mod, member)
        if callable(obj) and not isinstance(obj, type(importlib)):
            assert obj.__doc__, f"{name}.{member} has no docstring"


def test_the_package_exports_the_contract():
    assert {"compile", "Client", "Compiled", "ClassifyResult"} <= set(secinfer.__all__)
    assert secinfer.compile is secinfer.api.compile
    assert secinfer.Client is secinfer.api.Client
    with pytest.raises(AttributeError, match="no attribute"):
        secinfer.no_such_name  # noqa: B018


def test_every_backend_has_tasks_and_an_unknown_one_is_refused(tmp_path):
    from secinfer import api
    from secinfer.errors import ConfigError

    assert set(api.TASKS) == set(api.BACKENDS)
    assert all("classify" in t for t in api.TASKS.values())
    with pytest.raises(ConfigError, match="unknown backend 'sgx'.*mpc, tee, stip"):
        api.compile(None, "sgx", tmp_path)
    with pytest.raises(ConfigError, match="needs input_shape"):
        api.compile(None, "mpc", tmp_path)
    with pytest.raises(ConfigError, match="needs input_shape and calibration"):
        api.compile(None, "tee", tmp_path, input_shape=(1, 28, 28))


def test_a_topology_names_its_backend_by_roles(tmp_path):
    from secinfer import api
    from secinfer.errors import ConfigError
    from secinfer.net import Topology
    from secinfer.net.topology import write_local_topology

    for roles, backend in ((["server", "server", "helper", "user"], "mpc"),
                           (["enclave", "device"], "tee"), (["cloud", "user"], "stip")):
        d = tmp_path / backend
        d.mkdir()
        assert api.backend_of(Topology.load(write_local_topology(d, roles))) == backend
    d = tmp_path / "mixed"
    d.mkdir()
    with pytest.raises(ConfigError, match="more than one backend"):
        api.backend_of(Topology.load(write_local_topology(d, ["server", "enclave"])))
