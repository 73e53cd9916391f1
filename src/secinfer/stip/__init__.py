"""STIP: permutation-protected transformer inference for Hugging Face models (seed 001).

The model owner transforms the weights with secret permutations (:mod:`.transform`), the cloud
runs the transformed plain ``transformers`` model (:mod:`.cloud`, :mod:`.protocol`), the user
embeds, permutes and un-permutes (:mod:`.user`). Files move as safetensors + JSON manifests
(:mod:`.artifacts`, :mod:`.provision`). Threat model: ``docs/stip.md``.
"""

from ..models.hf import ARCHS, SUPPORTED_CLASSES, ArchSpec, Rule, spec_for
from .artifacts import ArtifactError, read_artifact, write_artifact
from .cloud import CloudModel, build_cloud, config_from_dict, load_cloud
from .protocol import (
    OPS,
    CloudHandler,
    CloudLink,
    LocalLink,
    SessionLink,
    StipError,
    dial_cloud,
    serve,
)
from .transform import (
    CLOUD_KIND,
    KEY_KIND,
    StipKey,
    inverse_permutation,
    load_key,
    random_permutation,
    transform_model,
    transform_state,
    write_cloud,
    write_key,
)
from .user import StipUser

__all__ = [
    "ARCHS", "SUPPORTED_CLASSES", "ArchSpec", "Rule", "spec_for",
    "ArtifactError", "read_artifact", "write_artifact",
    "CloudModel", "build_cloud", "config_from_dict", "load_cloud",
    "OPS", "CloudHandler", "CloudLink", "LocalLink", "SessionLink", "StipError", "serve",
    "dial_cloud",
    "CLOUD_KIND", "KEY_KIND", "StipKey", "inverse_permutation", "load_key",
    "random_permutation", "transform_model", "transform_state", "write_cloud", "write_key",
    "StipUser",
]
