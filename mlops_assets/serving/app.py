"""The HTTP layer: FastAPI routes over :class:`~mlops_assets.serving.service.PredictionService`, and uvicorn.

``POST /predict`` takes one flight (a JSON object -> ``{"prediction": {...}}``) or a batch (a JSON list of objects ->
``{"predictions": [...]}``, in request order). The body is read and parsed by the service's own schema, not by
FastAPI's parameter binding, so the size limit applies before parsing and every refusal is a 4xx naming the field:
400 malformed JSON, 413 too large (bytes or flights), 422 invalid fields, 503 nothing to serve yet. Scoring runs in
the thread pool, so the event loop keeps accepting requests while polars and LightGBM work.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.serving.config import ServeConfig
from mlops_assets.serving.schema import PredictionRequest, RequestError
from mlops_assets.serving.service import PredictionFailed, PredictionService, Unavailable

logger = logging.getLogger("mlops_assets.serving")
#: A body declared (or found) larger than this is refused without reading the rest; below it an oversized body is
#: read and dropped first, so the client reliably gets the 413 rather than a connection reset mid-upload.
DRAIN_LIMIT_FACTOR = 8


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an echoed client string (e.g. an unknown field name with a lone surrogate) can
    always be encoded, so rendering an error can never itself fail."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, body: dict[str, Any], close: bool = False) -> AsciiJSONResponse:
    return AsciiJSONResponse(body, status_code=status, headers={"Connection": "close"} if close else None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes whether declared by Content-Length or streamed."""
    drain = limit * DRAIN_LIMIT_FACTOR
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > drain:
        raise RequestError(413, f"request body of {int(declared):,} bytes is larger than the limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > drain:
            break  # stop reading: the connection is closed after the answer
    if size > limit:
        raise RequestError(413, f"request body larger than the limit of {limit:,} bytes; send fewer flights per request")
    return b"".join(chunks)


def create_app(settings: Settings, spec: FeatureTableSpec, config: ServeConfig | None = None) -> FastAPI:
    """The service's ASGI app. Models and the online store load at startup (lifespan) and reload on change; the
    prediction log is flushed when the app shuts down (uvicorn runs the lifespan shutdown on SIGTERM)."""
    config = config or ServeConfig()
    service = PredictionService(settings, spec, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            written = await run_in_threadpool(service.close)
            logger.info("prediction log flushed on shutdown (%d row(s) in the last batch)", written)

    app = FastAPI(
        title="mlops_assets prediction service",
        description=f"Online predictions for `{spec.name}` by the registry's champion (A/B challenger, shadow).",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )
    app.state.service = service

    def score(body: bytes, started: float) -> tuple[list[dict[str, Any]], bool]:
        requests: list[PredictionRequest]
        requests, batch = service.schema.parse(body)
        return service.predict(requests, started, batch), batch

    @app.post(
        "/predict",
        summary="Predict whether flights arrive more than 15 minutes late",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": service.schema.json_schema()}}}},
    )
    async def predict(request: Request) -> AsciiJSONResponse:
        started = time.perf_counter()
        try:
            body = await read_body(request, config.max_body_bytes)
            # parsing a 1 MiB batch and scoring are CPU work: off the event loop
            items, batch = await run_in_threadpool(score, body, started)
        except RequestError as error:
            return _error(error.status, error.body(), close=error.status == 413)
        except ClientDisconnect:
            return _error(400, {"detail": "the client disconnected before sending the whole body", "errors": []}, close=True)
        except Unavailable as error:
            return _error(503, {"detail": str(error), "errors": []})
        except PredictionFailed as error:
            return _error(500, {"detail": f"{error}; logged as request(s) {', '.join(error.request_ids[:5])}", "errors": []})
        except Exception:  # a bug, not the request: still a JSON answer, and a traceback in the service's log
            logger.exception("unexpected failure in POST /predict")
            return _error(500, {"detail": "internal error (see the service's log)", "errors": []})
        return AsciiJSONResponse({"predictions": items} if batch else {"prediction": items[0]})

    @app.get("/health", summary="Champion, online store and prediction log status")
    async def health() -> AsciiJSONResponse:
        ready, body = service.health()
        return AsciiJSONResponse(body, status_code=200 if ready else 503)

    @app.get("/models", summary="Served versions, their registry metrics, the A/B share and mode")
    async def models() -> AsciiJSONResponse:
        return AsciiJSONResponse(await run_in_threadpool(service.describe_models))

    return app


def uvicorn_config(app: FastAPI, config: ServeConfig) -> uvicorn.Config:
    """uvicorn for the service: graceful shutdown on SIGTERM/SIGINT (requests in flight finish, then the lifespan
    shutdown flushes the log), no access log (the prediction log is the record), no Server header."""
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=config.graceful_shutdown_seconds,
        log_level="info",
    )


def serve(settings: Settings, spec: FeatureTableSpec, config: ServeConfig) -> None:
    """Run the service in the foreground until SIGTERM or Ctrl-C."""
    if not logging.getLogger().handlers:  # the service's own messages (reloads, failures) beside uvicorn's
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(settings, spec, config)
    try:
        uvicorn.Server(uvicorn_config(app, config)).run()
    finally:  # a forced exit (a second Ctrl-C) skips the lifespan shutdown: still flush what was logged
        app.state.service.close()
