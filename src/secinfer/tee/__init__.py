"""Enclave-split inference for quantized CNNs (TSQP, seed 004).

An untrusted fast device runs the int8 linear layers on one-time-masked inputs with secretly
permuted weight rows; a trusted enclave process keeps scales, zero points, biases, masks,
permutations and non-linear layers, and checks every device result with oblivious fingerprints.
Start at :func:`capture_any` (the one capture, shared with the MPC engine:
:mod:`secinfer.models.capture`) -> :func:`calibrate` -> :func:`provision`, then
:class:`Enclave` and :class:`Device` over a :class:`secinfer.net.Session`. See ``docs/tee.md``.
"""

from .bundle import DeviceBundle, EnclaveBundle, provision
from .device import FAULT_KINDS, Device, Fault
from .enclave import Enclave, EnclaveStats
from .from_plan import UnsupportedOp, capture_any, program_from_plan
from .mask import LayerSecret, ring_linear
from .monitor import (
    IntegrityError,
    MonitorConfig,
    alteration_bound,
    detection_guarantee,
    triples_for,
)
from .program import LinearSpec, Program, Step
from .qat import training_generator
from .quantize import ActQuant, QuantConfig, QuantModel, calibrate, sweep_reduce_range
from .rand import EnclaveRandomness

__all__ = [
    "DeviceBundle", "EnclaveBundle", "provision",
    "FAULT_KINDS", "Device", "Fault",
    "Enclave", "EnclaveStats",
    "LinearSpec", "Program", "Step", "UnsupportedOp", "capture_any", "program_from_plan",
    "LayerSecret", "ring_linear", "training_generator", "EnclaveRandomness",
    "IntegrityError", "MonitorConfig", "alteration_bound", "detection_guarantee", "triples_for",
    "ActQuant", "QuantConfig", "QuantModel", "calibrate", "sweep_reduce_range",
]
