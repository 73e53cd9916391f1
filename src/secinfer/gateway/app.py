"""The FastAPI application: ``create_app(GatewayConfig(...))``.

Per request (``POST /v1/classify``):

1. Read the upload: an image file (multipart field ``file``) or a JSON tensor ``{"input":}``;
   convert it to the announced input shape and range (:mod:`.inputs`). An empty or
   undecodable upload is a 422 before any server is contacted.
2. Probe the three servers' layer counters (:mod:`.costs`).
3. Open one :class:`~secinfer.serve.Client` session (its own TLS links and PRG: requests on
   different threads share nothing), secret-share the input, reconstruct the output the owner's
   policy allows, close the session. At most ``max_sessions`` sessions at once (a semaphore);
   a "busy" admission is retried for ``busy_wait`` seconds, then answered 503.
4. Probe the counters again; the difference is this request's cost per layer.
5. If the gateway was given the plaintext model (a local demo only: a real user does not hold
   the model), run it on the same input and compare.

Errors are JSON ``{"error": kind, "cause": message}`` with the status of :mod:`.errors`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..net import RequestRefused, Topology
from ..net.userlink import probe_health
from ..serve.client import Client
from .clip import ClipBackend
from .costs import SERVERS, layer_costs, snapshot
from .errors import GatewayError, classify_error
from .inputs import MAX_UPLOAD_BYTES, ModelInfo, decode_image, image_to_input, json_to_input
from .stip import StipBackend

__all__ = ["GatewayConfig", "create_app"]

NO_CLIP = ("this gateway was started without a served CLIP (--clip-topology, --clip-artifact):"
           " zero-shot goes to the three MPC servers of a compiled CLIP (`secinfer compile "
           "--backend mpc --model tinyclip:fashion-mnist`, then `secinfer serve`)")
NO_STIP = ("this gateway was started without a STIP cloud (--stip-topology and --stip-key): "
           "STIP text endpoints (generate: causal LM key; embed: encoder key) go to a "
           "long-lived `secinfer stip serve`")


@dataclass
class GatewayConfig:
    """``plaintext``: the plaintext model for the demo's check (None: the gateway, like any
    real user, does not hold the model). ``class_names``: labels for the outputs."""

    topology: Topology
    cert: Path
    key: Path
    max_sessions: int = 4
    compute_timeout: float = 120.0
    probe_timeout: float = 5.0
    busy_wait: float = 5.0  # seconds to retry a "busy" admission before answering 503
    plaintext: torch.nn.Module | None = None
    plaintext_name: str = ""
    class_names: list[str] = field(default_factory=list)
    stip: StipBackend | None = None  # text endpoints through a STIP cloud (:mod:`.stip`)
    clip: ClipBackend | None = None  # zero-shot through a served CLIP (:mod:`.clip`)


class Gateway:
    """The state behind the endpoints: config, the session semaphore, the cached model info."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self._slots = threading.BoundedSemaphore(cfg.max_sessions)
        self._info: ModelInfo | None = None
        self._info_lock = threading.Lock()

    def client(self) -> Client:
        return Client(self.cfg.topology, cert=self.cfg.cert, key=self.cfg.key,
                      compute_timeout=self.cfg.compute_timeout)

    def session(self, fn: Callable[[Client], Any]) -> Any:
        """Run ``fn`` inside one fresh client session; every exception becomes a GatewayError.

        A "busy" refusal at admission (nothing was sent yet) is retried for up to
        ``busy_wait`` seconds: the servers free a slot when they next see a goodbye, so a
        session opened just after another closed can be refused though a slot is about free.
        """
        with self._slots:
            deadline = time.monotonic() + self.cfg.busy_wait
            pause = 0.05
            while True:
                c = self.client()
                try:
                    c.connect()
                except RequestRefused as e:
                    if "busy" not in str(e) or time.monotonic() + pause > deadline:
                        raise classify_error(e) from e
                    time.sleep(pause)
                    pause = min(2 * pause, 0.5)
                    continue
                except Exception as e:  # noqa: BLE001 - mapped to a status with its message
                    raise classify_error(e) from e
                break
            try:
                return fn(c)
            except GatewayError:
                raise
            except Exception as e:  # noqa: BLE001 - mapped to a status with its message
                raise classify_error(e) from e
            finally:
                c.close()

    def info(self) -> ModelInfo:
        """What P0 announces on admission (one short session, cached: it is the owner's
        fixed configuration; each classify answer carries the current ``queries_left``)."""
        with self._info_lock:
            if self._info is None:
                self._info = self.session(_announced)
            return self._info

    def health(self) -> dict[str, Any]:
        servers: dict[str, Any] = {}
        for s in SERVERS:
            spec = self.cfg.topology.party(s)
            try:
                st = probe_health(self.cfg.topology, self.cfg.cert, self.cfg.key, s,
                                  timeout=self.cfg.probe_timeout)
                st.pop("costs", None)
            except Exception as e:  # noqa: BLE001 - reported per server
                st = {"state": "unreachable", "error": str(e)}
            st["address"] = f"{spec.host}:{spec.port}"
            servers[str(s)] = st
        ok = all(v.get("state") == "serving" for v in servers.values())
        return {"gateway": {"state": "serving", "version": __version__},
                "ok": ok, "servers": servers}

    def classify(self, x: torch.Tensor) -> dict[str, Any]:
        info = self.info()
        cfg = self.cfg
        before = snapshot(cfg.topology, cfg.cert, cfg.key, cfg.probe_timeout)
        t0 = time.perf_counter()

        def run(c: Client) -> tuple[torch.Tensor, dict, int | None]:
            y = c.predict(x)
            return y, c.report(), c.queries_left

        y, user_report, left = self.session(run)
        seconds = time.perf_counter() - t0
        after = snapshot(cfg.topology, cfg.cert, cfg.key, cfg.probe_timeout)
        user_total = user_report.get("<total>", {})
        return {"batch": int(x.shape[0]),
                "predictions": [self._prediction(y[i], info) for i in range(len(y))],
                "plaintext_check": self._plaintext(x, y, info),
                "cost": {**layer_costs(before, after),
                         "user": {k: user_total.get(k, 0) for k in
                                  ("bytes_sent", "bytes_recv", "rounds")},
                         "wall_seconds": round(seconds, 6)},
                "queries_left": left}

    def _name(self, i: int) -> str | None:
        names = self.cfg.class_names
        return names[i] if 0 <= i < len(names) else None

    def _prediction(self, y: torch.Tensor, info: ModelInfo) -> dict[str, Any]:
        if info.output_mode == "logits":
            label = int(y.argmax())
            return {"label": label, "name": self._name(label), "logits": y.tolist()}
        if info.output_mode == "topk":
            top = [int(v) for v in y.tolist()]
            return {"label": top[0], "name": self._name(top[0]), "top_k": top,
                    "top_k_names": [self._name(i) for i in top]}
        label = int(y)
        return {"label": label, "name": self._name(label)}

    def _plaintext(self, x: torch.Tensor, y: torch.Tensor, info: ModelInfo) -> dict[str, Any]:
        model = self.cfg.plaintext
        if model is None:
            return {"available": False, "reason": "the gateway does not hold the model (only "
                    "the servers hold shares of it), so it cannot compute the plaintext answer; "
                    "a local demo can pass --plaintext-model"}
        with torch.no_grad():
            plain = model(x.to(torch.float32)).double().reshape(len(x), -1)
        labels = plain.argmax(1)
        out: dict[str, Any] = {"available": True, "model": self.cfg.plaintext_name,
                               "labels": labels.tolist()}
        if info.output_mode == "logits":
            out["agrees"] = bool(torch.equal(labels, y.argmax(1)))
            out["max_abs_logit_error"] = float((plain - y).abs().max())
        elif info.output_mode == "topk":
            out["agrees"] = bool(torch.equal(labels, y[:, 0]))
        else:
            out["agrees"] = bool(torch.equal(labels, y.reshape(-1)))
        return out


def _announced(c: Client) -> ModelInfo:
    return ModelInfo(tuple(c.input_shape), c.frac_bits, c.policy.mode, c.policy.k, c.classes,
                     c.max_batch, c.input_range, c.queries_left)


def create_app(cfg: GatewayConfig) -> FastAPI:
    """The ASGI app (FastAPI): the endpoints of ``docs/gateway.md`` and the page at ``/``."""
    gw = Gateway(cfg)
    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema stays
    app = FastAPI(title="secinfer gateway", version=__version__, docs_url=None, redoc_url=None,
                  description="The user's gateway to three secinfer servers: inputs are "
                              "secret-shared here, on the user's machine.")
    app.state.gateway = gw

    def error(status: int, kind: str, cause: str) -> JSONResponse:
        return JSONResponse({"error": kind, "cause": cause}, status_code=status)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, e: GatewayError) -> JSONResponse:
        return error(e.status, e.error, e.cause)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, "http error", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error(422, "invalid request", json.dumps(e.errors(), default=str))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        g = classify_error(e)
        return error(g.status, g.error, g.cause)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            raise GatewayError(404, "not found", f"no static file {name!r}")
        return Response(_static(name), media_type=types[name])

    @app.get("/v1/health", summary="the gateway and every server's status")
    def health() -> JSONResponse:
        h = gw.health()
        return JSONResponse(h, status_code=200 if h["ok"] else 503)

    @app.get("/v1/model", summary="input shape, output policy and valid input range")
    def model() -> dict[str, Any]:
        out = gw.info().as_json()
        out["class_names"] = cfg.class_names or None
        out["plaintext_check"] = cfg.plaintext is not None
        return out

    @app.post("/v1/classify", summary="secure inference of an image file or a JSON tensor",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {
                      "type": "object", "required": ["file"],
                      "properties": {"file": {"type": "string", "format": "binary"}}}},
                  "application/json": {"schema": {
                      "type": "object", "required": ["input"],
                      "properties": {"input": {"type": "array", "items": {}}}}}}}})
    async def classify(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_UPLOAD_BYTES:
            raise GatewayError(413, "upload too large",
                               f"{size} bytes; the gateway takes at most {MAX_UPLOAD_BYTES}")
        # the upload is read and decoded before any server is contacted
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            up = form.get("file")
            if up is None or isinstance(up, str):
                raise GatewayError(422, "invalid upload", "multipart field 'file' (an image "
                                   "file) is missing")
            img = decode_image(await up.read())
            info = await run_in_threadpool(gw.info)
            x = image_to_input(img, info)
        elif ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError as e:
                raise GatewayError(422, "invalid tensor", f"the body is not JSON: {e}") from None
            info = await run_in_threadpool(gw.info)
            x = json_to_input(body, info)
        else:
            raise GatewayError(415, "unsupported media type", f"content-type {ctype!r}: send "
                               "multipart/form-data (field 'file') or application/json")
        return await run_in_threadpool(gw.classify, x)

    async def stip_call(request: Request, what: str) -> dict[str, Any]:
        if cfg.stip is None:
            raise GatewayError(501, "not served by this gateway", NO_STIP)
        try:
            body = await request.json()
        except ValueError as e:
            raise GatewayError(422, "invalid request", f"the body is not JSON: {e}") from None
        fn = cfg.stip.generate if what == "generate" else cfg.stip.embed
        try:
            return await run_in_threadpool(fn, body)
        except GatewayError:
            raise
        except Exception as e:  # noqa: BLE001 - mapped with its message
            from ..stip.protocol import StipError

            if isinstance(e, StipError):
                raise GatewayError(422, "refused by the STIP cloud", str(e)) from e
            raise classify_error(e) from e

    @app.post("/v1/generate", summary="greedy generation through a STIP cloud (causal LM key)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "properties": {
                      "text": {"type": "string"}, "input_ids": {"type": "array", "items": {}},
                      "max_new_tokens": {"type": "integer"}}}}}}})
    async def generate(request: Request) -> dict[str, Any]:
        return await stip_call(request, "generate")

    @app.post("/v1/embed", summary="text embeddings through a STIP cloud (encoder key)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "properties": {
                      "texts": {"type": "array", "items": {"type": "string"}},
                      "input_ids": {"type": "array", "items": {}}}}}}}})
    async def embed(request: Request) -> dict[str, Any]:
        return await stip_call(request, "embed")

    @app.post("/v1/zero-shot", summary="zero-shot classification through a served CLIP",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "properties": {
                      "input": {"type": "array", "items": {}},
                      "classes": {"type": "array", "items": {"type": "string"}},
                      "template": {"type": "string"}}}}}}})
    async def zero_shot(request: Request) -> dict[str, Any]:
        if cfg.clip is None:
            raise GatewayError(501, "not served by this gateway", NO_CLIP)
        try:
            body = await request.json()
        except ValueError as e:
            raise GatewayError(422, "invalid request", f"the body is not JSON: {e}") from None
        try:
            return await run_in_threadpool(cfg.clip.zeroshot, body)
        except GatewayError:
            raise
        except RequestRefused as e:
            raise GatewayError(422, "refused by the servers", str(e)) from e
        except Exception as e:  # noqa: BLE001 - mapped with its message
            raise classify_error(e) from e

    return app


def _static(name: str) -> str:
    return (resources.files("secinfer.gateway") / "static" / name).read_text()
