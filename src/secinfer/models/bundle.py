"""Model-owner side: compile a model into one bundle per party, and load bundles safely.

Layout of ``<out>/party<N>/``:

* ``plan.json``           the public plan (every party);
* ``weights.safetensors`` this party's additive shares of the weights (P0 and P1 only);
* ``manifest.json``       the common artifact manifest (:mod:`secinfer.artifacts`): format,
                          party, role, the SHA-256 of every file above, and as metadata the
                          fixed point, input shape and the owner's output policy. Loading
                          verifies each checksum.

The output policy (:class:`OutputPolicy`) is the model owner's: what the servers reveal to a
user (``logits``, the ``topk`` indices, or the ``label`` only, computed on shares) and how many
queries (inputs) each user identity may make. It is written into every party's manifest; the
servers check at start-up that they agree on it.

The owner draws P1's shares from a fresh AES-CTR stream keyed by the OS CSPRNG and sets P0's
to ``enc(w) - share1``; each file alone is uniformly random. The helper's bundle holds the plan
only: no secret. Nothing is pickled.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import MANIFEST, read_artifact, tensor_bytes, write_artifact
from ..errors import ArtifactError
from ..mpc.engine import encode
from ..mpc.prg import PRG, new_seed
from .capture import capture
from .plan import Plan
from .ranges import RangeError, check_headroom, drelu_window, interval_bounds

__all__ = ["BundleError", "compile_model", "load_bundle", "FORMAT", "OutputPolicy",
           "OUTPUT_MODES"]

FORMAT = "secinfer-mpc-bundle"
ROLES = {0: "server", 1: "server", 2: "helper"}


# a bundle is one artifact of the common format (:mod:`secinfer.artifacts`): one error class
BundleError = ArtifactError


OUTPUT_MODES = ("logits", "topk", "label")


@dataclass(frozen=True)
class OutputPolicy:
    """What the servers reveal to a user, set by the model owner (bundle or serve config).

    mode:
        ``"logits"``: the output shares (the user reconstructs every logit: the most useful and
        the easiest to extract the model from). ``"topk"``: only the indices of the ``k``
        largest outputs, best first, computed on shares (no values). ``"label"``: only the
        argmax index, computed on shares.
    k:
        For ``topk`` only: how many indices (1 <= k <= number of outputs).
    quota:
        Queries (inputs, so a batch of b costs b) each user identity (its certificate's
        ``party-<id>``) may make over the servers' lifetime; ``None`` is unlimited. A request
        that would go beyond it is refused whole, with an error that reaches the user.
    """

    mode: str = "logits"
    k: int | None = None
    quota: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_MODES:
            raise ValueError(f"output mode must be one of {', '.join(OUTPUT_MODES)}, "
                             f"got {self.mode!r}")
        if self.mode == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
                raise ValueError(f"output mode topk needs an integer k >= 1, got {self.k!r}")
        elif self.k is not None:
            raise ValueError(f"k is only meaningful for output mode topk (mode {self.mode!r})")
        if self.quota is not None and (isinstance(self.quota, bool)
                                       or not isinstance(self.quota, int) or self.quota < 1):
            raise ValueError(f"quota must be a positive integer or None, got {self.quota!r}")

    @property
    def code(self) -> int:
        return OUTPUT_MODES.index(self.mode)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "k": self.k, "quota": self.quota}

    @classmethod
    def from_dict(cls, raw: object) -> OutputPolicy:
        if not isinstance(raw, dict):
            raise ValueError(f"output policy must be a JSON object, got {raw!r}")
        unknown = sorted(set(raw) - {"mode", "k", "quota"})
        if unknown:
            raise ValueError(f"unknown output policy key(s) {', '.join(unknown)}")
        return cls(mode=raw.get("mode", "logits"), k=raw.get("k"), quota=raw.get("quota"))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> OutputPolicy:
        """The policy of a loaded bundle's manifest (bundles without one: logits, unlimited)."""
        raw = manifest.get("output_policy")
        return cls() if raw is None else cls.from_dict(raw)

    def describe(self) -> str:
        what = f"top-{self.k} indices" if self.mode == "topk" else self.mode
        limit = "unlimited queries" if self.quota is None else f"{self.quota} queries per user"
        return f"{what}, {limit}"


def compile_model(model: torch.nn.Module, input_shape: tuple[int, ...], out: str | Path,
                  frac_bits: int = 12, relu_spec: Mapping[str, torch.Tensor] | None = None,
                  output_policy: OutputPolicy | None = None,
                  input_range: tuple[float, float] | None = None,
                  calibration: torch.Tensor | None = None,
                  narrow_drelu: bool = True) -> list[Path]:
    """Capture ``model`` and write the three party bundles under ``out``; returns their dirs.

    ``output_policy`` (default: logits, unlimited) is the owner's choice of what the servers
    reveal to users and each user's query quota; see :class:`OutputPolicy`.

    ``input_range`` (lo, hi): every input element must lie in it. The compiler then proves
    (:mod:`.ranges`, interval bounds through the plan) that no value can wrap the fixed point
    for any such input, refusing with :class:`~.ranges.RangeError` otherwise, and records the
    range, the bound and the headroom in the manifest; users' clients refuse inputs outside it
    before sending anything. Without it nothing is proven and nothing is checked. With it (and
    ``narrow_drelu``, the default) every comparison runs over only the bits the proven bounds
    need (:func:`~.ranges.drelu_window`: Gorski & Avidan's approximate DReLU, here exact for
    every allowed input), recorded as ``drelu_high_bits``.

    ``relu_spec`` (layer -> int [C, 2] block sizes, see :mod:`secinfer.models.block_spec`) turns
    the named ReLUs into block ReLUs first; the caller's model is not modified.

    ``calibration`` ([n, *input_shape] samples): :func:`~.calibrate.calibrate` runs the model
    through the fixed-point encoding on them, refuses a ``frac_bits`` that would wrap (naming
    the layer) or is too coarse, picks the truncation (local, or exact when the local one's
    measured risk is above 1e-9 per inference) and, without ``input_range``, records the
    samples' [min, max] as the valid input range the client enforces.
    """
    if not 1 <= frac_bits <= 24:
        raise RangeError(f"frac_bits must be in 1..24 (the engine's limit), got {frac_bits}")
    if relu_spec:
        from .block_spec import apply_spec

        model = apply_spec(copy.deepcopy(model), relu_spec)
    policy = output_policy or OutputPolicy()
    plan, weights = capture(model, input_shape, frac_bits=frac_bits)
    ranges: dict[str, object] = {"input_range": None}
    if input_range is not None:
        lo, hi = (float(v) for v in input_range)
        bounds = interval_bounds(plan, weights, lo, hi)
        headroom = check_headroom(bounds, frac_bits)
        ranges = {"input_range": [lo, hi], "activation_bound": max(bounds.values()),
                  "headroom_bits": headroom}
        if narrow_drelu and policy.mode != "topk":
            # exact within the proven range (the client refuses inputs outside it), cheaper
            ranges["drelu_high_bits"] = drelu_window(plan, bounds, frac_bits,
                                                     compares_output=policy.mode != "logits")
    if calibration is not None:
        from .calibrate import calibrate

        cal = calibrate(plan, weights, calibration)
        ranges["calibration"] = cal.to_dict()
        ranges["truncation"] = cal.truncation
        if input_range is None:
            ranges["input_range"] = cal.input_range
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
        files = {"plan.json": plan.to_json().encode()}
        if shares is not None:
            files["weights.safetensors"] = tensor_bytes(shares)
        meta = {"frac_bits": frac_bits, "input_shape": list(input_shape),
                "output_policy": policy.to_dict(), **ranges}
        # the helper's bundle is the public plan only; a server's holds a uniform share
        dirs.append(write_artifact(out / f"party{party}", FORMAT, "mpc", ROLES[party], files,
                                   meta, party=party, secret=shares is not None,
                                   overwrite=True))
    return dirs


def load_bundle(path: str | Path, expect_party: int | None = None,
                ) -> tuple[Plan, dict[str, torch.Tensor] | None, dict]:
    """Verify and load a party bundle: (plan, weight shares or None, manifest).

    The manifest is returned flat: its fields (``role``, ``party``, ``files``, ...) and its
    ``meta`` (``frac_bits``, ``input_shape``, ``output_policy``) side by side.
    """
    d = Path(path)
    art = read_artifact(d, FORMAT)
    if expect_party is not None and art.party != expect_party:
        raise BundleError(f"{d} is the bundle of party {art.party}, "
                          f"not of party {expect_party}")
    if "plan.json" not in art.files:
        raise BundleError(f"{d / MANIFEST} does not list plan.json")
    plan = Plan.from_json(art.text("plan.json"))
    shares = None
    if "weights.safetensors" in art.files:
        shares = art.tensors("weights.safetensors")
    elif art.party in (0, 1):
        raise BundleError(f"{d}: a compute party's bundle must hold weight shares")
    manifest = {**{k: v for k, v in art.manifest().items() if k != "meta"}, **art.meta}
    try:
        OutputPolicy.from_manifest(manifest)
    except ValueError as e:
        raise BundleError(f"{d / MANIFEST}: {e}") from e
    return plan, shares, manifest
