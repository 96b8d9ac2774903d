"""The HTTP layer: FastAPI routes over one :class:`~mlops_assets.serving.service.PredictionService` per served model
(:class:`~mlops_assets.serving.catalog.ServedCatalog`), and uvicorn.

Routes:

* ``POST /models/{model}/predict``: one request object (-> ``{"prediction": {...}}``) or a batch (a JSON list of
  objects -> ``{"predictions": [...]}``, in request order), scored by that model; 404 naming the served models for any
  other name. Each model's route is its own path, so the OpenAPI document shows each model's request schema.
* ``POST /predict``: the same for the default model (``default_model``, else the catalog's first).
* ``GET /models`` (every registered model), ``GET /models/{model}`` (one), ``GET /health`` (every model's health).
* ``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc) over ``/openapi.json``, working offline: their JavaScript,
  CSS and icon are served from an installed package under ``/static/docs/`` (FastAPI's defaults load them from a CDN,
  and ReDoc its fonts from Google, so the pages stayed blank without internet).

A prediction names its ``model``, the ``entity_key`` (the request's key fields joined by ``|``), the ``probability``,
``predicted`` (probability >= 0.5) and the ``outcome`` in the model's own word (``delayed`` / ``not delayed``), the
version and variant, the online store, when its features are from (``features_as_of``, UTC), how many hours past the
store's newest facts the request is (``feature_age_hours``; ``features_stale`` when above 0) and the request fields
whose codes the store has never seen (``unknown_codes``).

The body is read and parsed by the model's own schema, not by FastAPI's parameter binding, so the size limit applies
before parsing and every refusal is a 4xx naming the field: 400 malformed JSON, 413 too large (bytes or entities), 422
invalid fields or a flight further past the online store's facts than the maximum feature age, 503 nothing to serve
yet for that model. A small body of a few requests (the few-request path, a fraction of a millisecond) is parsed and
scored on the event loop: handing it to a worker thread and back cost more than the scoring, and under load the
threads contended for the GIL. Larger bodies and what-if overrides (polars frames, milliseconds) are parsed and scored
in the thread pool, so the event loop keeps accepting requests meanwhile. The predict routes take the raw request
(:class:`RawRoute`): no parameter binding or dependency solving, since the body is parsed by the model's schema; a
``POST`` to one of their paths is dispatched straight to its handler, past FastAPI's middleware and route matching
(:class:`ServingApp`). A few requests' shadow scores and prediction log rows are made after the answer is sent.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.settings import Settings
from mlops_assets.serving.catalog import ServedCatalog, UnknownModel, predict_path
from mlops_assets.serving.config import ServeConfig
from mlops_assets.serving.rows import MAX_ROWS
from mlops_assets.serving.schema import PredictionRequest, RequestError
from mlops_assets.serving.service import PredictionFailed, PredictionService, Unavailable
from mlops_assets.serving.transport import JoinedHTTPProtocol

logger = logging.getLogger("mlops_assets.serving")
#: A body declared (or found) larger than this is refused without reading the rest; below it an oversized body is
#: read and dropped first, so the client reliably gets the 413 rather than a connection reset mid-upload.
DRAIN_LIMIT_FACTOR = 8
#: Bodies up to this size are parsed on the event loop (a few requests: tens of microseconds); larger ones, up to a
#: 1 MiB batch, in the thread pool.
INLINE_BODY_BYTES = 8 * 1024
#: Where the docs pages' assets are served: Swagger UI 5 (FastAPI's OpenAPI 3.1 needs 5; the ``swagger-ui-bundle``
#: package ships 4.15, which refuses to render 3.1), its CSS, ReDoc 2 and an icon, as the ``fastapi-offline`` package
#: ships them.
DOCS_STATIC = "/static/docs"
DOCS_ASSETS = {
    "swagger_js": "swagger-ui-bundle.js",
    "swagger_css": "swagger-ui.css",
    "redoc_js": "redoc.standalone.js",
    "favicon": "favicon.png",
}


def docs_assets_dir() -> Path:
    """The installed folder of the docs pages' assets (raises when one is missing: better at startup than blank)."""
    folder = Path(str(files("fastapi_offline") / "static"))
    missing = [name for name in DOCS_ASSETS.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the docs assets {missing} are missing from {folder}: reinstall fastapi-offline")
    return folder


#: ``json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))``, made once (``dumps`` builds an
#: encoder on every call with these arguments).
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def ascii_json(content: Any) -> bytes:
    """Compact JSON with non-ASCII escaped."""
    return _ENCODER.encode(content).encode("ascii")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an echoed client string (e.g. an unknown field name with a lone surrogate) can
    always be encoded, so rendering an error can never itself fail."""

    def render(self, content: Any) -> bytes:
        return ascii_json(content)


def _error(status: int, body: dict[str, Any], close: bool = False) -> AsciiJSONResponse:
    return AsciiJSONResponse(body, status_code=status, headers={"Connection": "close"} if close else None)


async def read_body(declared: str, receive: Receive, limit: int, timeout: float) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes whether declared by Content-Length (``declared``)
    or streamed, and (408) a body not whole within ``timeout`` seconds; read from ``receive`` as Starlette's
    ``Request.stream`` reads it."""
    drain = limit * DRAIN_LIMIT_FACTOR
    if declared.isdigit() and int(declared) > drain:
        raise RequestError(413, f"request body of {int(declared):,} bytes is larger than the limit of {limit:,} bytes")
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(receive, limit, drain)
    except TimeoutError:
        raise RequestError(
            408, f"the request body was not whole after {timeout:g} s: send the bytes its Content-Length declares"
        ) from None


async def _read_body(receive: Receive, limit: int, drain: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > drain:
            break  # stop reading: the connection is closed after the answer
    if size > limit:
        raise RequestError(413, f"request body larger than the limit of {limit:,} bytes; send fewer per request")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def content_length(scope: Scope) -> str:
    """The request's Content-Length header as text ("" when absent), as ``Request.headers`` gives it."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return ""


Endpoint = Callable[[Request], Awaitable[Response]]
#: Scores the shadow and writes the prediction log rows of an answer (:meth:`PredictionService.answer`).
Finish = Callable[[], None]
_JSON_TYPE = (b"content-type", b"application/json")


class RawRoute(APIRoute):
    """A FastAPI route whose endpoint takes the :class:`Request` and returns the :class:`Response` itself: it is in
    the OpenAPI document as any route (``openapi_extra`` describes the body), but a request skips FastAPI's parameter
    binding, dependency solving and response serialisation, which the predict routes do not use."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[no-any-return]


class ServingApp(FastAPI):
    """The service's FastAPI app, with ``POST`` to a predict route's exact path dispatched straight to that route's
    ASGI handler (:class:`PredictHandler`): FastAPI's telemetry check, middleware stack and route matching cost more
    than scoring a flight, and the handler answers every request itself (no dependencies, no exception handlers to
    run). Every other request, and any under a root path, goes through FastAPI, whose predict routes answer the same
    (the OpenAPI document lists them). The prediction log, not OpenTelemetry, is the record of predictions."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.predict_handlers: dict[str, ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not (self.root_path or scope.get("root_path")):
            handler = self.predict_handlers.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def few(requests: list[PredictionRequest]) -> bool:
    """Whether ``requests`` take the few-request path (cheap enough to score on the event loop)."""
    return len(requests) <= MAX_ROWS and not any(r.overrides for r in requests)


class PredictHandler:
    """One model's predict route (``POST /models/<name>/predict``, and ``POST /predict`` for the default model): an
    ASGI app (:class:`ServingApp` dispatches to it) and the FastAPI endpoint (:attr:`endpoint`), answering alike.

    A few requests are answered before their shadow is scored and their prediction log rows are written (``finish``,
    right after the answer is sent, on the event loop): the client has its answer while that runs."""

    def __init__(self, service: PredictionService, config: ServeConfig) -> None:
        self.service = service
        self.limit = config.max_body_bytes
        self.body_timeout = config.body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome, finish = await self._outcome(content_length(scope), receive, time.perf_counter())
        if isinstance(outcome, bytes):  # what AsciiJSONResponse sends, built directly
            length = (b"content-length", str(len(outcome)).encode("latin-1"))
            await send({"type": "http.response.start", "status": 200, "headers": [length, _JSON_TYPE]})
            await send({"type": "http.response.body", "body": outcome})
        else:
            await outcome(scope, receive, send)
        if finish is not None:
            self._finish(finish)

    async def endpoint(self, request: Request) -> Response:
        outcome, finish = await self._outcome(
            request.headers.get("content-length", ""), request.receive, time.perf_counter()
        )
        if not isinstance(outcome, bytes):
            return outcome
        if finish is None:
            return Response(outcome, media_type="application/json")

        async def after() -> None:
            self._finish(finish)

        return Response(outcome, media_type="application/json", background=BackgroundTask(after))

    def _finish(self, finish: Finish) -> None:
        try:
            finish()
        except Exception:  # the answer is sent: say so in the service's log
            logger.exception("logging the prediction failed after POST %s", predict_path(self.service.name))

    def _score(self, body: bytes, started: float) -> tuple[list[dict[str, Any]], bool]:
        requests: list[PredictionRequest]
        requests, batch = self.service.schema.parse(body)
        return self.service.predict(requests, started, batch), batch

    async def _answer(self, body: bytes, started: float) -> tuple[list[dict[str, Any]], bool, Finish | None]:
        service = self.service
        if len(body) > INLINE_BODY_BYTES:  # parsing a 1 MiB batch and scoring it are CPU work: off the event loop
            return (*(await run_in_threadpool(self._score, body, started)), None)
        requests, batch = service.schema.parse(body)
        if few(requests):
            items, finish = service.answer(requests, started, batch)
            return items, batch, finish
        return await run_in_threadpool(service.predict, requests, started, batch), batch, None

    async def _outcome(
        self, declared: str, receive: Receive, started: float
    ) -> tuple[bytes | AsciiJSONResponse, Finish | None]:
        """The 200 answer's JSON and what finishes it, or the refusal's response."""
        try:
            body = await read_body(declared, receive, self.limit, self.body_timeout)
            items, batch, finish = await self._answer(body, started)
        except RequestError as error:
            return _error(error.status, error.body(), close=error.status in (408, 413)), None
        except ClientDisconnect:
            disconnected = "the client disconnected before sending the whole body"
            return _error(400, {"detail": disconnected, "errors": []}, close=True), None
        except Unavailable as error:
            return _error(503, {"detail": str(error), "errors": []}), None
        except PredictionFailed as error:
            logged = ", ".join(error.request_ids[:5])
            return _error(500, {"detail": f"{error}; logged as request(s) {logged}", "errors": []}), None
        except Exception:  # a bug, not the request: still a JSON answer, and a traceback in the service's log
            logger.exception("unexpected failure in POST %s", predict_path(self.service.name))
            return _error(500, {"detail": "internal error (see the service's log)", "errors": []}), None
        return ascii_json({"predictions": items} if batch else {"prediction": items[0]}), finish


def freeze_heap() -> None:
    """Move every object alive now (the imports, the loaded models and online stores) out of the garbage collector's
    reach: a full collection otherwise walks all of them, a pause of ~0.2 s every few minutes of traffic, long enough
    to be the p99. Objects made later (requests, reloaded stores) are collected as before; these are never cyclic
    garbage, and a reference count frees them when they go."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    catalog: Catalog,
    config: ServeConfig | None = None,
    default_model: str | None = None,
    freeze: bool = False,
) -> FastAPI:
    """The service's ASGI app for every model of ``catalog`` that has an online spec (``default_model``, else the
    catalog's first, answers ``POST /predict``). Each model's versions and online store load at startup (lifespan)
    and reload on change; every prediction log is flushed when the app shuts down (uvicorn runs the lifespan
    shutdown on SIGTERM). ``freeze``: after loading, take what is alive out of the garbage collector's walks
    (:func:`freeze_heap`; the process serves and nothing else, as under ``mlops serve``).

    Raises ValueError when ``default_model`` is not registered or cannot be served.
    """
    config = config or ServeConfig()
    served = ServedCatalog.build(settings, catalog, config, default_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(served.start)
        if freeze:
            freeze_heap()
        try:
            yield
        finally:
            written = await run_in_threadpool(served.close)
            logger.info("prediction logs flushed on shutdown (%d row(s) in the last batches)", written)

    # one line per model in Markdown (the docs page renders it), each description ending as written
    listed = "\n".join(f"- `{name}`: {s.model.description}" for name, s in served.services.items())
    app = ServingApp(
        title="mlops_assets prediction service",
        description=f"Online predictions by each model's registry champion (A/B challenger, shadow).\n\n{listed}\n\n"
        f"`POST /predict` is `{served.default}`.",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
        docs_url=None,  # both pages are added below, with local assets
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.served = served
    app.state.services = served.services
    app.state.service = served.default_service  # the default model's, as in the one-model service

    def body_schema(service: PredictionService) -> dict[str, Any]:
        content = {"application/json": {"schema": service.schema.json_schema()}}
        return {"requestBody": {"required": True, "content": content}}

    for name, service in served.services.items():
        handler = PredictHandler(service, config)
        app.predict_handlers[predict_path(name)] = handler
        app.router.add_api_route(
            predict_path(name),
            handler.endpoint,
            methods=["POST"],
            name=f"predict_{name}",
            summary=f"{name}: {service.model.description}",
            openapi_extra=body_schema(service),
            route_class_override=RawRoute,
        )
    default = served.default_service
    handler = PredictHandler(default, config)
    app.predict_handlers["/predict"] = handler
    app.router.add_api_route(
        "/predict",
        handler.endpoint,
        methods=["POST"],
        name="predict",
        summary=f"The default model ({default.name}): {default.model.description}",
        openapi_extra=body_schema(default),
        route_class_override=RawRoute,
    )

    # after the models' own routes, so it only sees names that are not served
    @app.post(predict_path("{model}"), include_in_schema=False)
    async def unknown_model(model: str) -> AsciiJSONResponse:
        try:
            served.service(model)
        except UnknownModel as error:  # the body is left unread: close rather than reuse the connection
            return _error(404, {"detail": str(error), "errors": []}, close=True)
        raise AssertionError(f"model {model} is served: its own route should have answered")

    @app.get("/health", summary="Every model's champion, online store and prediction log status")
    async def health() -> AsciiJSONResponse:
        ready, body = served.health()
        return AsciiJSONResponse(body, status_code=200 if ready else 503)

    @app.get("/models", summary="Every registered model: what it predicts, its served versions, the A/B share and mode")
    async def models() -> AsciiJSONResponse:
        return AsciiJSONResponse(await run_in_threadpool(served.describe_all))

    @app.get("/models/{model}", summary="One model: what it predicts, its served versions, the A/B share and mode")
    async def one_model(model: str) -> AsciiJSONResponse:
        try:
            return AsciiJSONResponse(await run_in_threadpool(served.describe, model))
        except UnknownModel as error:
            return _error(404, {"detail": str(error), "errors": []})

    return app


def add_offline_docs(app: FastAPI) -> None:
    """``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc) with every asset served by the app itself (nothing from
    a CDN or Google Fonts, no online validator badge), relative to the ASGI root path as FastAPI's own pages are."""
    app.mount(DOCS_STATIC, StaticFiles(directory=docs_assets_dir()), name="docs_static")
    openapi_url = app.openapi_url or "/openapi.json"

    def urls(request: Request) -> tuple[str, dict[str, str]]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root + openapi_url, {key: f"{root}{DOCS_STATIC}/{name}" for key, name in DOCS_ASSETS.items()}

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=schema,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=assets["swagger_js"],
            swagger_css_url=assets["swagger_css"],
            swagger_favicon_url=assets["favicon"],
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},  # the default badge asks validator.swagger.io
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        schema, assets = urls(request)
        return get_redoc_html(
            openapi_url=schema,
            title=f"{app.title} - ReDoc",
            redoc_js_url=assets["redoc_js"],
            redoc_favicon_url=assets["favicon"],
            with_google_fonts=False,
        )


def uvicorn_config(app: FastAPI, config: ServeConfig) -> uvicorn.Config:
    """uvicorn for the service: graceful shutdown on SIGTERM/SIGINT (requests in flight finish, then the lifespan
    shutdown flushes the log), no access log (the prediction log is the record), no Server header, and an answer's
    headers sent with its body (:class:`~mlops_assets.serving.transport.JoinedHTTPProtocol`)."""
    return uvicorn.Config(
        app,
        http=JoinedHTTPProtocol,
        host=config.host,
        port=config.port,
        lifespan="on",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=config.graceful_shutdown_seconds,
        log_level="info",
    )


def serve(settings: Settings, catalog: Catalog, config: ServeConfig, default_model: str | None = None) -> None:
    """Run the service for every servable model of ``catalog`` in the foreground until SIGTERM or Ctrl-C."""
    if not logging.getLogger().handlers:  # the service's own messages (reloads, failures) beside uvicorn's
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(settings, catalog, config, default_model, freeze=True)
    try:
        uvicorn.Server(uvicorn_config(app, config)).run()
    finally:  # a forced exit (a second Ctrl-C) skips the lifespan shutdown: still flush what was logged
        app.state.served.close()
