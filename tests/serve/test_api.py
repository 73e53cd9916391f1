"""The serving layer's public names: each listed in ``__all__`` exists and says what it is."""

from __future__ import annotations

import importlib

import pytest

MODULES = ["secinfer.serve", "secinfer.serve.client", "secinfer.serve.server",
           "secinfer.serve.handler", "secinfer.net.service", "secinfer.serve.metrics",
           "secinfer.serve.replicas", "secinfer.net.userlink"]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists_and_has_a_docstring(name):
    mod = importlib.import_module(name)
    assert mod.__doc__ and mod.__all__
    for member in mod.__all__:
        obj = getattr(mod, member)
        if callable(obj):
            assert obj.__doc__, f"{name}.{member} has no docstring"


def test_the_package_exports_the_server_and_the_client():
    import secinfer.serve as s

    assert set(s.__all__) >= {"Client", "serve"}
