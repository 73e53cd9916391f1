"""The shipped Fashion-MNIST CNN (``fmnist_cnn``) for the enclave split: load, quantize, provision.

Behind ``secinfer tee provision``: product code, so it stays here; the research runs that use
the same model (training, the r-sweep, the fault campaign, stealing) live in the repository's
``experiments/`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .bundle import provision
from .from_plan import capture_any
from .qat import accuracy, qat, training_generator
from .quantize import QuantConfig, calibrate

__all__ = ["CALIB", "INPUT_SHAPE", "fmnist_data", "fmnist_model", "provision_fmnist"]

CALIB = 2000  # calibration images (training split)
INPUT_SHAPE = (1, 28, 28)  # one Fashion-MNIST image


def fmnist_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``(x_train, y_train, x_test, y_test)``, normalised."""
    from ..data.fashion_mnist import load

    x, y = load("train")
    xt, yt = load("test")
    return x, y, xt, yt


def fmnist_model(weights: Path | None = None, pretrained: bool = False) -> torch.nn.Module:
    """``fmnist_cnn`` in eval mode: from a float state dict, the shipped weights, or fresh."""
    from ..models.zoo import build
    from ..models.zoo import pretrained as shipped

    if weights is None:
        return (shipped("fmnist_cnn") if pretrained else build("fmnist_cnn")).eval()
    if not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} not found (run "
                                "'secinfer experiments tee train', or omit --weights for the "
                                "shipped ones)")
    m = build("fmnist_cnn")
    m.load_state_dict(load_file(str(weights)))
    return m.eval()


def provision_fmnist(weights: Path | None, out: Path, reduce_range: int = 0,
                     qat_epochs: int = 0, permute: bool = True) -> dict[str, Any]:
    """Quantize (PTQ, optionally then QAT) and write the bundles ``out/enclave``, ``out/device``.

    ``weights=None`` uses the shipped float weights of ``fmnist_cnn``.
    """
    m = fmnist_model(weights, pretrained=True)
    x, y, xt, yt = fmnist_data()
    prog = capture_any(m, INPUT_SHAPE)
    cfg = QuantConfig(reduce_range)
    calib = x[torch.randperm(len(x), generator=training_generator())[:CALIB]]
    qm = (qat(prog, x, y, cfg, epochs=qat_epochs, gen=training_generator()) if qat_epochs
          else calibrate(prog, [calib], cfg))
    bundle = provision(qm, permute=permute)
    bundle.save(out / "enclave")
    bundle.device_bundle().save(out / "device")
    return {"float_accuracy": accuracy(m, xt, yt), "int8_accuracy": accuracy(qm.forward, xt, yt),
            "reduce_range": reduce_range, "qat_epochs": qat_epochs, "permute": permute,
            "enclave": str(out / "enclave"), "device": str(out / "device")}
