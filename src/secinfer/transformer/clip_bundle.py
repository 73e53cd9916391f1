"""Compile a CLIP model (both towers) into the one artifact format, and the user's side of it.

What is written (``out/party0``, ``out/party1``, ``out/party2``, ``out/user``):

1. every weight of :func:`~.clip_weights.capture_clip` encoded at ``frac_bits``, split as
   ``enc - r`` (party 0) and ``r`` (party 1), ``r`` uniform from :mod:`secinfer.mpc.prg`
   (each server's file alone says nothing about the weights);
2. the helper gets the public dims and config only;
3. the user artifact: the text tower's token and position tables, the EOS rule, the image
   geometry and the tokenizer, so the user embeds its prompts and cuts its images into
   patches itself (no server sees a token id or a pixel).

The servers run two programs from one artifact (:mod:`secinfer.serve.served`), told apart
by the request's input shape: ``image`` takes patches [P, C p p] and ``text`` the packed
prompt [S, H_t + 2] (embedding, padding bias, EOS one-hot at scale f); both return the
L2-normalised [D] embedding. The user computes the zero-shot scores itself, from the
embeddings of its images and of its prompts (it owns both inputs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import read_artifact, tensor_bytes, write_artifact
from ..errors import ArtifactError
from .bundle import FORMAT, USER_FORMAT, config_of, write_server_artifacts
from .clip_weights import ClipDims, ClipUserSide, capture_clip, eos_positions
from .layer import SecureTransformerConfig, hidden_bias
from .model import EncoderDims
from .word_tokenizer import WordTokenizer

__all__ = ["compile_clip", "load_clip_shares", "ClipUser", "load_clip_user", "clip_dims"]

_TOP = ("patch_w", "cls_pos", "pre_ln_w", "pre_ln_b", "post_ln_w", "post_ln_b", "vision_proj",
        "final_ln_w", "final_ln_b", "text_proj")
_TOKENIZER = "tokenizer.json"  # the project's word tokenizer (tiny CLIPs)


def clip_dims(raw: dict[str, Any]) -> ClipDims:
    """The :class:`ClipDims` of a manifest's ``dims``."""
    return ClipDims(**{**raw, "vision": EncoderDims(**raw["vision"]),
                       "text": EncoderDims(**raw["text"])})


def compile_clip(bundle: Any, out: str | Path, cfg: SecureTransformerConfig | None = None,
                 text_length: int | None = None) -> list[Path]:
    """A :class:`~secinfer.seclmm.tinyclip.ClipBundle` -> [p0, p1, p2, user] artifacts.

    ``text_length``: every prompt is padded to it (default: the text tower's context length);
    the servers learn only that length."""
    cfg = cfg or SecureTransformerConfig()
    if not cfg.hide_length:
        raise ArtifactError("a served CLIP hides the prompt length: compile with "
                            "hide_length=True")
    if not isinstance(bundle.tokenize, WordTokenizer):
        raise ArtifactError("compile_clip takes project-made CLIPs (word tokenizer) for now")
    user, w = capture_clip(bundle.model)
    dims = user.dims
    s = text_length or int(user.position.shape[0])
    if not 2 <= s <= user.position.shape[0]:
        raise ArtifactError(f"text_length {s} outside 2..{user.position.shape[0]}")
    shapes = {"image": [dims.n_patches, dims.patch_dim], "text": [s, dims.text.hidden + 2]}
    if shapes["image"] == shapes["text"]:
        raise ArtifactError(f"the image and text inputs have the same shape {shapes['text']}: "
                            "pick another text_length")
    tensors: dict[str, torch.Tensor] = {k: getattr(w, k) for k in _TOP}
    tensors["logit_scale"] = torch.tensor([w.logit_scale], dtype=torch.float64)
    for tower, enc in (("vision", w.vision), ("text", w.text)):
        for i, layer in enumerate(enc.layers):
            for name, t in layer.tensors().items():
                tensors[f"{tower}.{i}.{name}"] = t
    meta: dict[str, Any] = {"kind": "clip", "dims": asdict(dims), "frac_bits": cfg.frac_bits,
                            "config": asdict(cfg), "text_length": s, "entries": shapes}
    out = Path(out)
    dirs = write_server_artifacts(out, tensors, asdict(dims), meta, cfg.frac_bits)
    tables = {"token": user.token.contiguous(), "position": user.position[:s].contiguous()}
    dirs.append(write_artifact(
        out / "user", USER_FORMAT, "mpc", "user",
        {"tables.safetensors": tensor_bytes(tables),
         _TOKENIZER: json.dumps(bundle.tokenize.to_json()).encode()},
        {**meta, "eos_token_id": user.eos_token_id}, overwrite=True))
    return dirs


def load_clip_shares(path: str | Path) -> tuple[ClipDims, dict[str, torch.Tensor] | None, dict]:
    """A server's (dims, shares, meta) or the helper's (dims, None, meta)."""
    art = read_artifact(path, FORMAT)
    if art.meta.get("kind") != "clip":
        raise ArtifactError(f"{path}: not a CLIP artifact (kind {art.meta.get('kind')!r})")
    shares = art.tensors("weights.safetensors") if "weights.safetensors" in art.files else None
    return clip_dims(art.meta["dims"]), shares, art.meta


@dataclass
class ClipUser:
    """The user's side of a served CLIP: requests for images and for prompts."""

    side: ClipUserSide
    tokenize: Any
    text_length: int
    cfg: SecureTransformerConfig

    def image_request(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] (as the model takes them) -> patches [N, P, C p p]."""
        return self.side.patches(images)

    def text_request(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> [T, S, H_t + 2]: embedding, padding bias, EOS one-hot (all float)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        ids, mask = self.tokenize(list(prompts))
        t, n = ids.shape
        if n > self.text_length:
            raise ValueError(f"a prompt of {n} tokens exceeds the served text length "
                             f"{self.text_length}")
        eos = eos_positions(ids, self.side.eos_token_id)
        pad = self.text_length - n
        ids = torch.nn.functional.pad(ids.to(torch.int64), (0, pad))
        mask = torch.nn.functional.pad(mask.to(torch.int64), (0, pad))
        x = self.side.token[ids] + self.side.position[:self.text_length].unsqueeze(0)
        bias = hidden_bias(mask.to(torch.float64), self.cfg.nonlinear)
        onehot = torch.nn.functional.one_hot(eos, self.text_length).to(torch.float64)
        return torch.cat([x, bias.unsqueeze(-1), onehot.unsqueeze(-1)], -1)


def load_clip_user(path: str | Path) -> ClipUser:
    """The user artifact of a compiled CLIP (checksums verified by the one reader)."""
    art = read_artifact(path, USER_FORMAT)
    if art.meta.get("kind") != "clip":
        raise ArtifactError(f"{path}: not a CLIP user artifact (kind {art.meta.get('kind')!r})")
    t = art.tensors("tables.safetensors")
    spec = json.loads(art.text(_TOKENIZER))
    if spec.get("kind") != "secinfer-word":
        raise ArtifactError(f"{path}: unknown tokenizer kind {spec.get('kind')!r}")
    side = ClipUserSide(t["token"], t["position"], int(art.meta["eos_token_id"]),
                        clip_dims(art.meta["dims"]))
    return ClipUser(side, WordTokenizer(list(spec["words"]), int(spec["max_length"])),
                    int(art.meta["text_length"]), config_of(art.meta))
