"""The owner's step: draw the secret permutations and transform a model's weights (STIP, step 1).

Paper: Yuan et al., "Secure Transformer Inference", IACR ePrint 2023/1763 (seed 001), with the
norm and head handling the seed code lacks (see ``docs/stip.md``).

1. For every permuted space of the architecture (the hidden width; CLIP's two tower widths and
   its projection space; the classes or the vocabulary of a head) draw a uniformly random
   permutation with the OS CSPRNG (Fisher-Yates over :class:`secrets.SystemRandom`).
2. Apply each parameter's rule from :mod:`secinfer.models.hf`: reorder rows and/or columns;
   Q/K/V and FFN input weights are reordered on their input side only, so attention, RoPE, GQA
   and the FFN non-linearity all run in the original basis; norms, attention/FFN outputs and
   the residual stream live in the permuted basis.
3. Move the embedding tables (token, position, token type, patch) out of the model: they go into
   the user's key, because the user embeds locally and the cloud must never see token ids.
4. Return the cloud's state dict (every other tensor, transformed) and the user's key.

Threat model: the owner is trusted by both others; it sees nothing at inference time. The key
(permutations and embedding tables) must reach only the user; the transformed weights only the
cloud.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.hf import ArchSpec, float_state, spec_for
from .artifacts import CLOUD_KIND, KEY_KIND, read_artifact, write_artifact

__all__ = [
    "CLOUD_KIND", "KEY_KIND", "StipKey", "random_permutation", "inverse_permutation",
    "transform_state", "transform_model", "write_cloud", "write_key", "load_key",
]



def random_permutation(n: int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` from the OS CSPRNG, as int64 indices."""
    if n < 2:
        raise ValueError(f"a permutation needs at least 2 elements to hide anything, got {n}")
    idx = list(range(n))
    secrets.SystemRandom().shuffle(idx)
    return torch.tensor(idx, dtype=torch.int64)


def inverse_permutation(p: torch.Tensor) -> torch.Tensor:
    """The permutation q with q[p[i]] = i."""
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel(), dtype=p.dtype)
    return inv


@dataclass
class StipKey:
    """What the user holds: the permutations, its embedding tables and the architecture's config."""

    model_class: str
    task: str
    perms: dict[str, torch.Tensor]
    tables: dict[str, torch.Tensor]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def inverse(self, name: str) -> torch.Tensor:
        return inverse_permutation(self.perms[name])


def _check_perm(name: str, p: torch.Tensor, size: int) -> None:
    if p.dtype != torch.int64 or p.dim() != 1 or p.numel() != size:
        raise ValueError(f"permutation {name!r} must be int64 of length {size}")
    if not torch.equal(torch.sort(p).values, torch.arange(size)):
        raise ValueError(f"permutation {name!r} is not a permutation of range({size})")


def transform_state(
    spec: ArchSpec,
    state: dict[str, torch.Tensor],
    perms: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Steps 2-3 on a state dict: returns ``(cloud_state, user_tables)``."""
    cloud: dict[str, torch.Tensor] = {}
    tables: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        rule = spec.match(name)
        if rule.user:
            tables[name] = t.detach().clone()
            continue
        out = t.detach()
        for dim, pname in ((0, rule.rows), (1, rule.cols)):
            if pname is None:
                continue
            p = perms[pname]
            if out.dim() <= dim or out.shape[dim] != p.numel():
                raise ValueError(
                    f"parameter {name!r} of shape {tuple(t.shape)} cannot take permutation "
                    f"{pname!r} (size {p.numel()}) on dim {dim}"
                )
            out = out.index_select(dim, p)
        cloud[name] = out.contiguous().clone()
    return cloud, tables


def transform_model(
    model: torch.nn.Module, perms: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], StipKey]:
    """Steps 1-4 for a ``transformers`` model: ``(cloud_state, cloud_config_dict, key)``.

    ``perms`` is for tests that need a chosen permutation; by default all are drawn fresh.
    """
    cls_name = type(model).__name__
    spec = spec_for(cls_name)
    config: Any = model.config
    sizes = spec.perm_sizes(config)
    if perms is None:
        perms = {name: random_permutation(n) for name, n in sizes.items()}
    for name, n in sizes.items():
        if name not in perms:
            raise ValueError(f"missing permutation {name!r}")
        _check_perm(name, perms[name], n)
    state = float_state(model)
    cloud, tables = transform_state(spec, state, perms)
    cfg = json.loads(config.to_json_string(use_diff=False))
    cloud_cfg = {**cfg, **spec.cloud_config}
    extra: dict[str, Any] = {}
    if spec.task == "clip":
        extra["logit_scale"] = float(state["logit_scale"])
    key = StipKey(cls_name, spec.task, dict(perms), tables, cfg, extra)
    return cloud, cloud_cfg, key


def write_cloud(
    folder: str | Path, model_class: str, state: dict[str, torch.Tensor],
    config: dict[str, Any], overwrite: bool = False,
) -> Path:
    """The cloud's artifact: a plain transformers folder (config + safetensors) + manifest."""
    spec = spec_for(model_class)
    return write_artifact(
        folder, CLOUD_KIND, {"model": state},
        texts={"config.json": json.dumps(config, indent=2, sort_keys=True, default=str)},
        meta={"model_class": model_class, "task": spec.task}, overwrite=overwrite,
    )


def write_key(folder: str | Path, key: StipKey, overwrite: bool = False) -> Path:
    """The user's artifact: permutations and embedding tables (safetensors) + manifest."""
    return write_artifact(
        folder, KEY_KIND, {"perms": key.perms, "tables": key.tables},
        meta={"model_class": key.model_class, "task": key.task, "config": key.config,
              "extra": key.extra},
        overwrite=overwrite,
    )


def load_key(folder: str | Path) -> StipKey:
    """Read and check the user's key artifact (permutations and embedding tables)."""
    manifest, groups = read_artifact(folder, KEY_KIND)
    meta = manifest["meta"]
    spec = spec_for(meta["model_class"])
    perms = groups.get("perms", {})
    for name, p in perms.items():
        _check_perm(name, p, p.numel())
    return StipKey(spec.model_class, spec.task, perms, groups.get("tables", {}),
                   meta.get("config", {}), meta.get("extra", {}))
