"""Text endpoints through STIP (``secinfer stip serve``): generate (causal LM) and embed (encoder).

STIP (``docs/stip.md``) is a different protocol from the 3-party CNN service: the user is a
party of a STIP topology (the ``user`` role), holds the permutation key and the embedding
tables from the owner, and talks to one long-lived cloud that runs the permuted model.
Per request the gateway, holding that key:

1. Tokenizes the text with the local tokenizer folder, if one was given (else the caller sends
   token ids); checks the ids, the batch and ``max_new_tokens`` (a 422 otherwise).
2. Opens one session with the cloud (one at a time: the user's topology entry is one party),
   embeds and permutes locally, sends only permuted embeddings, un-permutes the replies
   (:class:`~secinfer.stip.user.StipUser`); says goodbye so the cloud ends the session at once.
3. Returns the tokens (greedy) or the mean-pooled last hidden states, and the user's cost per
   protocol op (the cloud runs the whole permuted model per call: there is no per-layer split
   the user can see).

Threat model (STIP's): the cloud is honest-but-curious and sees permuted embeddings and
permuted outputs; the user learns the embedding tables. The gateway holds the key: it is as
trusted as the user.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..net import Topology
from .errors import GatewayError

__all__ = ["StipConfig", "StipBackend", "MAX_NEW_TOKENS"]

MAX_NEW_TOKENS = 256


@dataclass
class StipConfig:
    topology: Topology
    key_dir: Path
    tokenizer: Path | None = None
    user_id: int | None = None
    cloud_id: int | None = None


def _role(topology: Topology, given: int | None, role: str) -> int:
    if given is not None:
        return given
    found = topology.by_role(role)
    if not found:
        raise ValueError(f"the STIP topology has no party with role {role!r}")
    return int(found[0].id)


class StipBackend:
    """The user's STIP side for the gateway; ``task`` is the key's (causal_lm, encoder, ...)."""

    def __init__(self, cfg: StipConfig) -> None:
        from ..stip.transform import load_key

        self.cfg = cfg
        self.key = load_key(cfg.key_dir)
        self.task = self.key.task
        self.user_id = _role(cfg.topology, cfg.user_id, "user")
        self.cloud_id = _role(cfg.topology, cfg.cloud_id, "cloud")
        self.tokenizer: Any = None
        if cfg.tokenizer is not None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(cfg.tokenizer),
                                                           local_files_only=True)
        self._lock = threading.Lock()

    # -- step 1: the request's token ids
    def ids(self, body: Any) -> torch.Tensor:
        if not isinstance(body, dict):
            raise GatewayError(422, "invalid request", 'send a JSON object with "text" or '
                               '"input_ids"')
        if "text" in body or "texts" in body:
            texts = body.get("texts", [body.get("text")])
            if not isinstance(texts, list) or not texts or \
                    not all(isinstance(t, str) and t for t in texts):
                raise GatewayError(422, "invalid request", "'text' must be a non-empty string "
                                   "('texts' a non-empty list of them)")
            if self.tokenizer is None:
                raise GatewayError(422, "no tokenizer", "this gateway was started without "
                                   "--stip-tokenizer: send token ids as 'input_ids'")
            rows = [self.tokenizer(t)["input_ids"] for t in texts]
        elif "input_ids" in body:
            rows = body["input_ids"]
            if isinstance(rows, list) and rows and all(isinstance(v, int) for v in rows):
                rows = [rows]
        else:
            raise GatewayError(422, "invalid request", 'give "text" or "input_ids"')
        if not isinstance(rows, list) or not rows or not all(
                isinstance(r, list) and r and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in r) for r in rows):
            raise GatewayError(422, "invalid request", "'input_ids' must be a non-empty list "
                               "of integers (or of such lists)")
        if len({len(r) for r in rows}) != 1:
            raise GatewayError(422, "invalid request", "prompts of a batch must have the same "
                               f"length (no padding here), got {sorted({len(r) for r in rows})}")
        return torch.tensor(rows, dtype=torch.int64)

    def _need(self, task: str, endpoint: str) -> None:
        if self.task != task:
            raise GatewayError(501, "not served by this gateway", f"{endpoint} needs a STIP key "
                               f"of task {task!r}; this gateway holds a {self.task!r} key "
                               f"({self.key.model_class})")

    # -- step 2: one session with the cloud
    def _session(self, fn: Any) -> tuple[Any, dict[str, Any], float, float]:
        from ..stip.protocol import SessionLink, dial_cloud
        from ..stip.user import StipUser

        with self._lock:
            t0 = time.perf_counter()
            with dial_cloud(self.cfg.topology, self.cloud_id, user_id=self.user_id) as s:
                link = SessionLink(s, self.cloud_id)
                out = fn(StipUser(self.key, link))
                link.close()
                report = s.report()
            return out, report, link.cloud_seconds, time.perf_counter() - t0

    def generate(self, body: Any) -> dict[str, Any]:
        self._need("causal_lm", "generate")
        ids = self.ids(body)
        n = body.get("max_new_tokens", 16)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
            raise GatewayError(422, "invalid request", f"'max_new_tokens' must be an integer "
                               f"in [1, {MAX_NEW_TOKENS}], got {n!r}")
        toks, report, cloud_s, wall = self._session(lambda u: u.generate(ids, n))
        out: dict[str, Any] = {"tokens": toks.tolist()}
        if self.tokenizer is not None:
            out["text"] = [self.tokenizer.decode(t) for t in toks]
        return {**out, **self._extras(report, cloud_s, wall)}

    def embed(self, body: Any) -> dict[str, Any]:
        self._need("encoder", "embed")
        ids = self.ids(body)
        hidden, report, cloud_s, wall = self._session(lambda u: u.encode(ids)[0])
        return {"embeddings": hidden.mean(dim=1).tolist(), "pooling": "mean of the last "
                "hidden states over the tokens", **self._extras(report, cloud_s, wall)}

    # -- step 3: the user's cost per protocol op
    def _extras(self, report: dict[str, dict], cloud_s: float, wall: float) -> dict[str, Any]:
        layers: list[dict[str, Any]] = [{"name": name[len("stip_"):],
                   "bytes": int(c["bytes_sent"]) + int(c["bytes_recv"]),  # type: ignore[call-overload]
                   "rounds": int(c["rounds"]),  # type: ignore[call-overload]
                   "seconds": round(float(c["seconds"]), 6)}  # type: ignore[arg-type]
                  for name, c in report.items() if name.startswith("stip_") and "/" not in name]
        total = {k: sum(lay[k] for lay in layers) for k in ("bytes", "rounds", "seconds")}
        return {
            "plaintext_check": {"available": False, "reason": "the gateway holds only the "
                                "user's STIP key and embedding tables, not the model"},
            "cost": {"available": True, "layers": layers, "total": total, "steps": 1,
                     "scope": "this request's STIP session with the cloud, per protocol op "
                              "(the cloud runs the whole permuted model in each call)",
                     "definition": "bytes: sent plus received by the user; rounds: the user's; "
                                   "seconds: the user's wall time per op",
                     "cloud_compute_seconds": round(cloud_s, 6), "wall_seconds": round(wall, 6)}}
