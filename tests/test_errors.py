"""The error tree: its exported members, and every older error class placed in it."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from torch import nn

import secinfer
from secinfer import errors
from secinfer.errors import (
    ArtifactError,
    ConfigError,
    IntegrityError,
    NetworkError,
    ProtocolError,
    SecinferError,
    UnsupportedOpError,
)

# every module that defines an error class of its own (mpc/ raises built-in errors only)
_MODULES = ["secinfer.net.errors", "secinfer.net.tls", "secinfer.net.launcher",
            "secinfer.models.bundle", "secinfer.models.capture", "secinfer.stip.protocol",
            "secinfer.stip.artifacts", "secinfer.tee.monitor", "secinfer.tee.from_plan",
            "secinfer.data.fashion_mnist", "secinfer.artifacts"]


def test_exported_members() -> None:
    assert errors.__all__ == [
        "SecinferError", "NetworkError", "ConfigError", "ArtifactError", "ArtifactExistsError",
        "ProtocolError", "IntegrityError", "UnsupportedOpError"]
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert inspect.isclass(cls) and issubclass(cls, SecinferError), name
        assert cls.__doc__, f"{name} has no docstring"
    assert secinfer.SecinferError is SecinferError and "SecinferError" in secinfer.__all__


def test_every_error_class_in_the_package_is_under_secinfer_error() -> None:
    found = set()
    for mod in _MODULES:
        for name, obj in vars(importlib.import_module(mod)).items():
            if not (inspect.isclass(obj) and issubclass(obj, BaseException)):
                continue
            if obj.__module__ == mod or obj.__module__ == "secinfer.errors":  # ours, not imported
                found.add(name)
                assert issubclass(obj, SecinferError), f"{mod}.{name} is outside the tree"
    assert {"BundleError", "StipError", "TopologyError", "PeerTimeout", "IntegrityError",
            "UnsupportedOp", "UnsupportedOpError", "FashionMNISTMissing"} <= found


def test_old_names_and_builtin_bases_are_kept() -> None:
    from secinfer.data.fashion_mnist import FashionMNISTMissing
    from secinfer.models.bundle import BundleError
    from secinfer.models.capture import UnsupportedOpError as MpcUnsupported
    from secinfer.net.errors import FrameError, PeerTimeout, SecinferNetError, TopologyError
    from secinfer.stip import ArtifactError as StipArtifactError
    from secinfer.stip import StipError
    from secinfer.tee import IntegrityError as TeeIntegrity
    from secinfer.tee import UnsupportedOp

    assert SecinferNetError is NetworkError and issubclass(NetworkError, RuntimeError)
    assert issubclass(TopologyError, ConfigError) and issubclass(TopologyError, NetworkError)
    assert issubclass(TopologyError, ValueError) and issubclass(FrameError, ValueError)
    assert issubclass(PeerTimeout, TimeoutError)
    assert BundleError is ArtifactError and StipArtifactError is ArtifactError
    assert issubclass(ArtifactError, ValueError)
    assert issubclass(StipError, ProtocolError) and issubclass(StipError, RuntimeError)
    assert TeeIntegrity is IntegrityError and issubclass(IntegrityError, RuntimeError)
    assert UnsupportedOp is UnsupportedOpError and MpcUnsupported is UnsupportedOpError
    assert issubclass(UnsupportedOpError, NotImplementedError)
    assert issubclass(UnsupportedOpError, ValueError)
    assert issubclass(FashionMNISTMissing, FileNotFoundError)


class _Sig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def test_both_compilers_raise_the_one_unsupported_op_error() -> None:
    from secinfer.models.capture import capture as mpc_capture
    from secinfer.tee import capture_any as tee_capture

    with pytest.raises(UnsupportedOpError, match="module PReLU") as mpc:
        mpc_capture(_Sig().eval(), (1, 6, 6))
    assert mpc.value.what == "module PReLU" and mpc.value.node == "act"
    # the TEE compiles through the same capture: the same error, naming the same op and node
    with pytest.raises(UnsupportedOpError, match="module PReLU at node 'act'") as tee:
        tee_capture(_Sig().eval(), (1, 6, 6))
    assert (tee.value.what, tee.value.node) == (mpc.value.what, mpc.value.node)
