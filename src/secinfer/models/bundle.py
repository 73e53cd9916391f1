"""Model-owner side: compile a model into one bundle per party, and load bundles safely.

Layout of ``<out>/party<N>/``:

* ``plan.json``           the public plan (every party);
* ``weights.safetensors`` this party's additive shares of the weights (P0 and P1 only);
* ``manifest.json``       format, party, role, fixed point, input shape, and the SHA-256 of
                          every file above. Loading verifies each checksum.

The owner draws P1's shares from a fresh AES-CTR stream keyed by the OS CSPRNG and sets P0's
to ``enc(w) - share1``; each file alone is uniformly random. The helper's bundle holds the plan
only: no secret. Nothing is pickled.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..files import read_json_manifest, sha256_file, verify_listed_files
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from .capture import capture
from .plan import Plan

__all__ = ["BundleError", "compile_model", "load_bundle", "FORMAT"]

FORMAT = "secinfer-bundle-v1"
ROLES = {0: "server", 1: "server", 2: "helper"}


class BundleError(ValueError):
    """A bundle is missing, corrupt, tampered with, or for another party."""


def compile_model(model: torch.nn.Module, input_shape: tuple[int, ...], out: str | Path,
                  frac_bits: int = 12, relu_spec: Mapping[str, torch.Tensor] | None = None,
                  ) -> list[Path]:
    """Capture ``model`` and write the three party bundles under ``out``; returns their dirs.

    ``relu_spec`` (layer -> int [C, 2] block sizes, see :mod:`secinfer.knapsack.spec`) turns
    the named ReLUs into block ReLUs first; the caller's model is not modified.
    """
    if relu_spec:
        from ..knapsack.spec import apply_spec

        model = apply_spec(copy.deepcopy(model), relu_spec)
    plan, weights = capture(model, input_shape, frac_bits=frac_bits)
    out = Path(out)
    prg = PRG(new_seed())
    share0: dict[str, torch.Tensor] = {}
    share1: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        enc = encode(w, frac_bits)
        r = prg.int64(enc.shape)
        share0[name], share1[name] = (enc - r).contiguous(), r.contiguous()
    dirs = []
    for party, shares in ((0, share0), (1, share1), (2, None)):
        d = out / f"party{party}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "plan.json").write_text(plan.to_json())
        files = {"plan.json": sha256_file(d / "plan.json")}
        if shares is not None:
            save_file(shares, str(d / "weights.safetensors"))
            files["weights.safetensors"] = sha256_file(d / "weights.safetensors")
        manifest = {"format": FORMAT, "party": party, "role": ROLES[party],
                    "frac_bits": frac_bits, "input_shape": list(input_shape), "files": files}
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
        dirs.append(d)
    return dirs


def load_bundle(path: str | Path, expect_party: int | None = None,
                ) -> tuple[Plan, dict[str, torch.Tensor] | None, dict]:
    """Verify and load a party bundle: (plan, weight shares or None, manifest)."""
    d = Path(path)
    manifest = read_json_manifest(d / "manifest.json", BundleError,
                                  f"{d} is not a bundle: manifest.json is missing")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{d}: unknown bundle format {manifest.get('format')!r}")
    if expect_party is not None and manifest.get("party") != expect_party:
        raise BundleError(f"{d} is the bundle of party {manifest.get('party')}, "
                          f"not of party {expect_party}")
    files = manifest.get("files")
    if not isinstance(files, dict) or "plan.json" not in files:
        raise BundleError(f"{d / 'manifest.json'} does not list plan.json")
    verify_listed_files(d, files, BundleError)
    plan = Plan.from_json((d / "plan.json").read_text())
    shares = None
    if "weights.safetensors" in manifest["files"]:
        try:
            shares = load_file(str(d / "weights.safetensors"))
        except (SafetensorError, OSError) as e:
            raise BundleError(f"{d}: weights.safetensors is unreadable: {e}") from e
    elif manifest.get("party") in (0, 1):
        raise BundleError(f"{d}: a compute party's bundle must hold weight shares")
    return plan, shares, manifest
