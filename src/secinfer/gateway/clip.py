"""Zero-shot through a served CLIP (``secinfer serve`` of a compiled CLIP): ``POST /v1/zero-shot``.

A CLIP is served by its own three MPC servers (a topology of its own, or the gateway's when its
servers serve the CLIP); the gateway is the user: it holds a user certificate and the CLIP's
user artifact (token and position tables, tokenizer, image geometry). Per request:

1. Check the JSON body: ``input`` [n, C, H, W] (the model's geometry, finite numbers),
   ``classes`` (1 to 64 names), optional ``template`` with ``{label}`` (a 422 otherwise).
2. Open one :class:`secinfer.api.Client` session; the servers embed the images and the class
   prompts on shares (:meth:`~secinfer.api.Client.zeroshot`); close it.
3. Return the labels, class names and cosine scores, and the user's bytes and rounds.

Threat model: the servers' (semi-honest, non-colluding): they learn the shapes only. The
gateway holds the user's key and sees the images, prompts and embeddings: it is as trusted as
the user.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..net import Topology
from .errors import GatewayError

__all__ = ["ClipConfig", "ClipBackend", "MAX_CLASSES"]

MAX_CLASSES = 64


@dataclass
class ClipConfig:
    topology: Topology
    artifact: Path          # the compiled CLIP's user artifact
    cert: Path
    key: Path
    max_sessions: int = 2
    compute_timeout: float = 120.0


class ClipBackend:
    """The user's side of a served CLIP for the gateway."""

    def __init__(self, cfg: ClipConfig) -> None:
        from ..transformer.clip_bundle import load_clip_user

        self.cfg = cfg
        self.user = load_clip_user(cfg.artifact)  # fails now, naming a bad artifact
        d = self.user.side.dims
        self.shape = (d.channels, d.image_size, d.image_size)
        self._slots = threading.Semaphore(cfg.max_sessions)

    def request(self, body: Any) -> tuple[torch.Tensor, list[str], str]:
        if not isinstance(body, dict):
            raise GatewayError(422, "invalid request", "the body must be a JSON object with "
                               "'input' and 'classes'")
        unknown = set(body) - {"input", "classes", "template"}
        if unknown:
            raise GatewayError(422, "invalid request", f"unknown fields {sorted(unknown)}")
        classes = body.get("classes")
        if (not isinstance(classes, list) or not classes or len(classes) > MAX_CLASSES
                or not all(isinstance(c, str) and c.strip() for c in classes)):
            raise GatewayError(422, "invalid request", f"'classes' must be 1 to {MAX_CLASSES} "
                               "non-empty strings")
        template = body.get("template", "a photo of a {label}.")
        if not isinstance(template, str) or "{label}" not in template:
            raise GatewayError(422, "invalid request", "'template' must be a string with "
                               "'{label}'")
        try:
            x = torch.tensor(body.get("input"), dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise GatewayError(422, "invalid tensor", f"'input' is not a numeric array: {e}"
                               ) from None
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape or x.shape[0] < 1:
            raise GatewayError(422, "invalid tensor", f"'input' of shape {list(x.shape)}; this "
                               f"CLIP takes [n, {', '.join(map(str, self.shape))}]")
        if not bool(torch.isfinite(x).all()):
            raise GatewayError(422, "invalid tensor", "'input' holds NaN or infinity")
        return x, [c.strip() for c in classes], template

    def zeroshot(self, body: Any) -> dict[str, Any]:
        from .. import api

        x, classes, template = self.request(body)
        if not self._slots.acquire(timeout=5.0):
            raise GatewayError(503, "busy", f"{self.cfg.max_sessions} zero-shot requests are "
                               "already in flight; retry")
        try:
            t0 = time.perf_counter()
            with api.Client(self.cfg.topology, cert=self.cfg.cert, key=self.cfg.key,
                            artifact=self.cfg.artifact,
                            timeout=self.cfg.compute_timeout) as client:
                res = client.zeroshot(x, classes, template)
                report = client.session.report()
            seconds = time.perf_counter() - t0
        finally:
            self._slots.release()
        total = report.get("<total>", {})
        return {"labels": res.labels.tolist(),
                "classes": [classes[i] for i in res.labels.tolist()],
                "scores": [[round(v, 6) for v in row] for row in res.scores.tolist()],
                "cost": {"user_bytes_sent": int(total.get("bytes_sent", 0)),
                         "rounds": int(total.get("rounds", 0)),
                         "seconds": round(seconds, 3)},
                "note": ("the servers embedded the images and the prompts on secret shares; "
                         "the scores are the gateway's own cosines")}
