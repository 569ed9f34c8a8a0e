"""The FastAPI application: ``create_app()`` and, for ``uvicorn service.main:app``, a lazy ``app``.

Importing this module does nothing: settings are read when an app is built (``create_app`` or the
first access to ``service.main.app``), models are loaded by the lifespan when it starts, and the
OpenAPI examples are read when ``/openapi.json`` is first asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.files import files_router
from service.registry_watch import ModelHolder
from service.routes import admin_router, ops_router, predict_router
from service.settings import ServiceSettings, get_settings
from service.web import web_router

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_EXAMPLES_FILE = Path(__file__).with_name("openapi_examples.json")
_MAX_LISTED_ERRORS = 5


# --------------------------------------------------------------------------- lifespan
async def _poll(holder: ModelHolder, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await run_in_threadpool(holder.reload_all)  # reload_all logs and records its failures


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServiceSettings = app.state.settings
    _ensure_log_output()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    holder = ModelHolder(settings)
    await run_in_threadpool(holder.reload_all)  # a model that fails to load is reported, not fatal
    app.state.models = holder
    poller = None
    if settings.reload_interval_s > 0:
        poller = asyncio.create_task(_poll(holder, settings.reload_interval_s))
    logger.info(
        "service ready=%s (%s)",
        holder.ready,
        ", ".join(f"{s.name}@{s.alias}: {s.current.version if s.current else 'missing'}"
                  for s in holder.slots.values()),
    )  # fmt: skip
    try:
        yield
    finally:
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        app.state.models = None


def _ensure_log_output() -> None:
    """Show this package's INFO logs when nothing configured logging (plain ``uvicorn ...``)."""
    pkg = logging.getLogger("service")
    if not logging.getLogger().handlers and not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)


# --------------------------------------------------------------------------- request log
class AccessLogMiddleware:
    """Log method, path, status, latency and number of samples of every request (no signal)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state") or {}
            logger.info(
                "%s %s %d %.1f ms n_samples=%s",
                scope.get("method"), scope.get("path"), status_code,
                (time.perf_counter() - start) * 1000, state.get("n_samples", "-"),
            )  # fmt: skip


# --------------------------------------------------------------------------- body limit
class BodyLimitMiddleware:
    """413 with a JSON message for bodies over ``max_bytes`` (Content-Length, then while reading).

    A body that grows past the limit while streaming (no or false Content-Length) stops the read
    with an :class:`HTTPException`, which FastAPI passes on to the JSON error handler.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return (
            f"request body is {size}; the limit is {self.max_bytes} bytes "
            "(ECG_SERVICE_MAX_BODY_BYTES): send shorter signals or smaller batches"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if length > self.max_bytes:
                await _send_json(send, 413, {"detail": self._message(f"{length} bytes")})
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message(f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status_code: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- errors
def _loc(loc: tuple[Any, ...] | list[Any]) -> list[str | int]:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return [p if isinstance(p, int) else str(p) for p in parts]


def _loc_text(loc: Sequence[str | int]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with a one-line ``detail``; the offending input is never echoed (it may be a signal)."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = _loc(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            where = loc[0] if loc else "?"
            msg = (
                f"body is not valid JSON: {ctx.get('error', 'decode error')} (at character {where})"
            )
            loc = []
        errors.append({"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))})
    shown = "; ".join(
        str(e["msg"]) if e["type"] == "json_invalid" else f"{_loc_text(e['loc'])}: {e['msg']}"
        for e in errors[:_MAX_LISTED_ERRORS]
    )
    if len(errors) > _MAX_LISTED_ERRORS:
        shown += f"; and {len(errors) - _MAX_LISTED_ERRORS} more"
    return JSONResponse(
        status_code=422,
        content=jsonable_encoder({"detail": shown or "invalid request", "errors": errors[:50]}),
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "the body could not be decoded: send UTF-8 encoded JSON"  # FastAPI's wording
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": detail},
        headers=getattr(exc, "headers", None),
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        status_code=500, content={"detail": "internal error; the service log has the details"}
    )


# --------------------------------------------------------------------------- OpenAPI
@lru_cache(maxsize=1)
def _examples() -> dict[str, Any]:
    return json.loads(_EXAMPLES_FILE.read_text())


def _request_examples() -> dict[str, dict[str, Any]]:
    """OpenAPI ``examples`` per path: real MIT-BIH strips and a real PTB-XL record."""
    ex = _examples()
    source = ex["_source"]

    def item(summary: str, value: Any) -> dict[str, Any]:
        return {"summary": summary, "description": source, "value": value}

    hd = ex["heart_disease_ptbxl_00001"]
    return {
        "/predict/arrhythmia": {
            "mitdb_119": item(
                "MIT-BIH 119, 3 s, annotated R peaks (N V N)", ex["arrhythmia_mitdb_119"]
            ),
            "mitdb_100_detect": item(
                "MIT-BIH 100, 3 s, R peaks detected", ex["arrhythmia_mitdb_100"]
            ),
        },
        "/predict/arrhythmia/batch": {
            "two_strips": item(
                "Two 3-s strips in one forward pass",
                {"segments": [ex["arrhythmia_mitdb_100_annotated"], ex["arrhythmia_mitdb_119"]]},
            ),
        },
        "/predict/heart-disease": {
            "ptbxl_00001": item("PTB-XL 00001 (NORM), 12 leads, 10 s at 100 Hz", hd),
        },
        "/predict/heart-disease/batch": {
            "one_record": item("A batch of one PTB-XL record", {"records": [hd]}),
        },
    }


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path, examples in _request_examples().items():
                body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
                body["examples"] = examples
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------- factory
_DESCRIPTION = """
Arrhythmia (AAMI beat classes from one lead) and heart-disease (PTB-XL superclasses from 12 leads)
predictions from raw ECG in millivolts at any rate from 100 to 1000 Hz. The models and their
preprocessing come from the MLflow Model Registry (`models:/<name>@champion`); `POST /admin/reload`
(or background polling) picks up a moved alias without dropping requests.
"""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the application; models load when its lifespan starts.

    Parameters
    ----------
    settings : ServiceSettings, optional
        Defaults to :func:`service.settings.get_settings` (``ECG_SERVICE_*`` environment).
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="ECG prediction service",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.models = None
    app.include_router(ops_router)
    app.include_router(predict_router)
    app.include_router(admin_router)
    app.include_router(files_router)  # recorder files in: WFDB, EDF, CSV, binary
    app.include_router(web_router)  # GET / : the web page
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware)  # added last: outermost, so it also logs 413s
    _install_openapi(app)
    return app


@lru_cache(maxsize=1)
def _default_app() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> Any:
    """``service.main.app``: built on first access, so ``uvicorn service.main:app`` works."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
