"""What an MPC server runs for its users, read from the party's artifact: one program on shares.

The server (:mod:`.server`), the one serve loop (:mod:`secinfer.net.service`) and the MPC
request handler (:mod:`.handler`) are the same for every model; what differs is read here,
from the artifact's manifest:

- ``kind`` absent (a compiled CNN plan, :func:`secinfer.models.bundle.compile_model`): the
  input is the image ``[C, H, W]``, the program the plan's ops (:class:`~secinfer.models.
  secure.SecureModel`), the output what the owner's output policy lets the user see.
- ``kind: "encoder"`` (a BERT-family encoder, :func:`secinfer.transformer.bundle.
  compile_encoder`): the input is the user's packed request ``[S, H + 2]``
  (:mod:`secinfer.transformer.user`), the program the encoder's layers with the padding as
  shares, mean pooling and the L2 normalisation; the output the [H] embedding (logits mode
  only: an embedding has no label).
- ``kind: "clip"`` (:func:`secinfer.transformer.clip_bundle.compile_clip`): two entries, told
  apart by the request's input shape: ``image`` (patches [P, C p p]) and ``text`` (the
  packed prompt [S, H_t + 2]); each returns the L2-normalised [D] embedding.

Every server builds the same :class:`Served` from its own artifact; the servers compare the
policy and the limits when their session starts (:func:`.server._agree_config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import inspect_artifact
from ..errors import ArtifactError, ConfigError
from ..models.bundle import OutputPolicy, load_bundle
from ..models.secure import SecureModel
from ..mpc import MPCConfig, MPCEngine, Share
from ..net import Topology
from .handler import nan_range
from .limits import ServeLimits, plan_sizes, serve_limits

if TYPE_CHECKING:
    from ..transformer.layer import SecureTransformerConfig

__all__ = ["Served", "load_served"]

Program = Callable[[Share], Share]

_BYTES_PER_ELEMENT = 128  # as limits.py: the most any op sends per element it touches
_SLACK = 1 << 20


@dataclass(frozen=True)
class Served:
    kind: str                              # "cnn", "encoder" or "clip"
    entries: tuple[tuple[int, ...], ...]   # each program's input, per input, no batch dim
    output_shape: tuple[int, ...]          # per input, before the output policy
    frac_bits: int
    policy: OutputPolicy
    input_range: tuple[float, float]       # (NaN, NaN): none stated
    mpc_config: MPCConfig
    limits: ServeLimits
    digest: str                            # 12 hex digits of the program file's SHA-256
    summary: str                           # for the log: "12 ops", "encoder, 6 layers"
    build: Callable[[MPCEngine], list[Program]]  # per server session (weights prepared),
    #                                               one program per entry

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.entries[0]

    @property
    def classes(self) -> int:
        return math.prod(self.output_shape)


def load_served(topology: Topology, party_id: int, path: str | Path,
                policy: OutputPolicy | None = None,
                mpc_config: MPCConfig | None = None) -> Served:
    """The program party ``party_id`` serves from its artifact ``path`` (verified on read).

    ``policy`` (the owner's serve config) overrides the artifact's; ``mpc_config`` the
    engine configuration the artifact implies."""
    kind = inspect_artifact(path).meta.get("kind", "cnn")
    if kind == "encoder":
        return _encoder(topology, party_id, Path(path), policy, mpc_config)
    if kind == "clip":
        return _clip(topology, party_id, Path(path), policy, mpc_config)
    if kind != "cnn":
        raise ArtifactError(f"{path}: an MPC artifact of kind {kind!r}, which no server runs")
    return _cnn(topology, party_id, Path(path), policy, mpc_config)


def _cnn(topology: Topology, party_id: int, path: Path, policy: OutputPolicy | None,
         mpc_config: MPCConfig | None) -> Served:
    plan, shares, manifest = load_bundle(path, expect_party=party_id)
    policy = policy or OutputPolicy.from_manifest(manifest)
    cfg = mpc_config or MPCConfig(frac_bits=plan.frac_bits,
                                  truncation=manifest.get("truncation", "local"),
                                  drelu_high_bits=int(manifest.get("drelu_high_bits", 0)))
    sizes = plan_sizes(plan)
    classes = math.prod(sizes.output_shape)
    if policy.mode != "logits" and len(sizes.output_shape) != 1:
        raise ValueError(f"output mode {policy.mode} needs a model with outputs [batch, C]; "
                         f"this one gives [batch, {', '.join(map(str, sizes.output_shape))}]")
    if policy.mode == "topk" and policy.k is not None and policy.k > classes:
        raise ValueError(f"output policy top-{policy.k}, but the model has {classes} outputs")
    if policy.mode == "topk" and cfg.drelu_high_bits:
        raise ValueError("output mode topk needs the exact DReLU (drelu_high_bits = 0)")

    def build(engine: MPCEngine) -> list[Program]:
        return [SecureModel(engine, plan, shares).forward]

    return Served("cnn", (tuple(manifest["input_shape"]),), tuple(sizes.output_shape),
                  int(manifest["frac_bits"]), policy, nan_range(manifest.get("input_range")),
                  cfg, serve_limits(plan, topology, sizes), manifest["files"]["plan.json"][:12],
                  f"{len(plan.ops)} ops", build)


def _embedding_artifact(path: Path, party_id: int, shares: dict | None,
                        policy: OutputPolicy | None, what: str
                        ) -> tuple[Any, SecureTransformerConfig, OutputPolicy]:
    """The checks every transformer artifact passes: this party's, shares where a compute
    party needs them, and an output policy of logits (an embedding has no label)."""
    from ..artifacts import read_artifact
    from ..transformer.bundle import FORMAT, config_of

    art = read_artifact(path, FORMAT)
    if art.party != party_id:
        raise ArtifactError(f"{path} is the artifact of party {art.party}, not of party "
                            f"{party_id}")
    if shares is None and party_id in (0, 1):
        raise ArtifactError(f"{path}: a compute party's artifact must hold weight shares")
    policy = policy or OutputPolicy()
    if policy.mode != "logits":
        raise ConfigError(f"{what} serves embeddings: output mode {policy.mode} does not "
                          "apply (use logits)")
    return art, config_of(art.meta), policy


def _encoder(topology: Topology, party_id: int, path: Path, policy: OutputPolicy | None,
             mpc_config: MPCConfig | None) -> Served:
    from ..transformer.bundle import load_encoder_shares
    from ..transformer.layer import SecretPadding
    from ..transformer.model import encoder_forward, pool_normalise, share_encoder

    dims, shares = load_encoder_shares(path)
    art, cfg, policy = _embedding_artifact(path, party_id, shares, policy, "an encoder")
    s, h = int(art.meta["max_length"]), dims.hidden

    def build(engine: MPCEngine) -> list[Program]:
        with engine.session.op("weights"):
            model = share_encoder(engine, None, 0, dims, dealt=shares)

        def forward(x: Share) -> Share:
            emb, bias, weights = x[..., :h], x[..., h], x[..., h + 1]
            y = encoder_forward(engine, model, emb.contiguous(),
                                SecretPadding(bias.contiguous()), cfg)
            with engine.session.op("pool"):
                return pool_normalise(engine, y, weights.contiguous(), cfg.nonlinear)

        return [forward]

    batch = topology.max_batch
    if topology.max_frame_bytes is not None:
        limits = ServeLimits(batch, topology.max_frame_bytes, topology.max_frame_bytes)
    else:
        # the largest per-input tensors: the scores [heads, S, S] and the FFN [S, ffn]
        largest = max(dims.heads * s * s, s * dims.ffn, s * (h + 2))
        # from the public dims, so all three servers size it alike
        weights = dims.n_layers * (4 * h * h + 2 * h * dims.ffn + 9 * h + dims.ffn)
        limits = ServeLimits(batch, max(8 * batch * s * (h + 2), 4096),
                             max(8 * weights, _BYTES_PER_ELEMENT * batch * largest) + _SLACK)
    return Served("encoder", ((s, h + 2),), (h,), cfg.frac_bits, policy, (math.nan, math.nan),
                  mpc_config or cfg.mpc_config(), limits,
                  art.manifest()["files"]["dims.json"][:12],
                  f"encoder, {dims.n_layers} layers, hidden {h}, max_length {s}", build)


def _clip(topology: Topology, party_id: int, path: Path, policy: OutputPolicy | None,
          mpc_config: MPCConfig | None) -> Served:
    from ..transformer.clip import secure_image_tower, secure_text_tower, share_clip
    from ..transformer.clip_bundle import load_clip_shares
    from ..transformer.layer import SecretPadding

    dims, shares, meta = load_clip_shares(path)
    art, cfg, policy = _embedding_artifact(path, party_id, shares, policy, "a CLIP")
    image = (dims.n_patches, dims.patch_dim)
    s, ht = int(meta["text_length"]), dims.text.hidden
    text = (s, ht + 2)

    def build(engine: MPCEngine) -> list[Program]:
        with engine.session.op("weights"):
            model = share_clip(engine, None, 0, dims, dealt=shares)

        def forward_image(x: Share) -> Share:
            with engine.session.op("vision"):
                return secure_image_tower(engine, model, x, cfg)

        def forward_text(x: Share) -> Share:
            emb, bias, eos = x[..., :ht], x[..., ht], x[..., ht + 1]
            with engine.session.op("text"):
                return secure_text_tower(engine, model, emb.contiguous(),
                                         SecretPadding(bias.contiguous(), causal=True),
                                         eos.contiguous(), cfg)

        return [forward_image, forward_text]

    batch = topology.max_batch
    if topology.max_frame_bytes is not None:
        limits = ServeLimits(batch, topology.max_frame_bytes, topology.max_frame_bytes)
    else:
        largest = 0
        for d, n in ((dims.vision, dims.n_patches + 1), (dims.text, s)):
            largest = max(largest, d.heads * n * n, n * d.ffn, n * (d.hidden + 2))
        weights = sum(d.n_layers * (4 * d.hidden ** 2 + 2 * d.hidden * d.ffn + 9 * d.hidden
                                    + d.ffn) for d in (dims.vision, dims.text))
        weights += dims.patch_dim * dims.vision.hidden + (dims.n_patches + 1) * dims.vision.hidden
        user = 8 * batch * max(math.prod(image), math.prod(text))
        limits = ServeLimits(batch, max(user, 4096),
                             max(8 * weights, _BYTES_PER_ELEMENT * batch * largest) + _SLACK)
    return Served("clip", (image, text), (dims.projection,), cfg.frac_bits, policy,
                  (math.nan, math.nan), mpc_config or cfg.mpc_config(), limits,
                  art.manifest()["files"]["dims.json"][:12],
                  f"CLIP, vision {dims.vision.n_layers} + text {dims.text.n_layers} layers, "
                  f"entries image {list(image)} and text {list(text)}", build)
