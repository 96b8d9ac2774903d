"""The predict routes' fast dispatch answers as FastAPI's routing does, and an answer's writes are joined in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import polars as pl
from fastapi import FastAPI

from mlops_assets.catalog import CATALOG
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import Settings
from mlops_assets.serving import ServeConfig, create_app
from mlops_assets.serving.transport import JoinedWrites
from mlops_assets_tests.serving.conftest import DELAY, FLIGHT, delay

Message = dict[str, Any]


async def _post(app: Any, path: str, body: bytes, via_fastapi: bool) -> tuple[int, list[tuple[bytes, bytes]], Any]:
    """POST ``body`` to the ASGI ``app`` (``via_fastapi``: through FastAPI's own routing, as under a root path)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    chunks = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:]},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await (FastAPI.__call__(app, scope, receive, send) if via_fastapi else app(scope, receive, send))
    start, body_message = sent
    return start["status"], list(start["headers"]), json.loads(body_message["body"])


def test_the_fast_dispatch_answers_and_logs_as_fastapi_routing_does(served: Settings) -> None:
    """Answers, refusals and the log rows (champion and shadow) alike whichever way a request is dispatched."""
    Registry(delay(served).registry_dir).set_alias("shadow", "v0002", "shadowed", "test")
    app = create_app(served, CATALOG, ServeConfig(port=0))
    one, batch = json.dumps(FLIGHT).encode(), json.dumps([FLIGHT, {**FLIGHT, "flight": 2}]).encode()
    refused = json.dumps({**FLIGHT, "carrier": "lowercase"}).encode()

    async def both() -> list[tuple[Any, Any]]:
        async with app.router.lifespan_context(app):  # the log is flushed when it ends
            pairs = []
            for path, body in (("/predict", one), (f"/models/{DELAY}/predict", batch), ("/predict", refused)):
                pairs.append((await _post(app, path, body, False), await _post(app, path, body, True)))
            return pairs

    answers = asyncio.run(both())
    ids = []
    for fast, routed in answers:
        assert fast[0] == routed[0] and fast[1] == routed[1]
        predictions = [fast[2], routed[2]]
        if fast[0] == 200:
            items = [p.get("predictions") or [p["prediction"]] for p in predictions]
            ids += [i["request_id"] for group in items for i in group]
            predictions = [[{k: v for k, v in i.items() if k != "request_id"} for i in group] for group in items]
        assert predictions[0] == predictions[1]
    assert [status for (status, _, _), _ in answers] == [200, 200, 422]
    (_, headers, answer), _ = answers[0]
    assert headers == [(b"content-length", str(len(_ascii(answer))).encode()), (b"content-type", b"application/json")]
    log = read_log(delay(served).predictions_dir)
    assert log.height == 2 * len(ids) and set(log["request_id"]) == set(ids)
    assert log.filter(pl.col("variant") == "shadow")["score"].is_not_null().all()


def _ascii(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_writes_are_joined_in_order_and_none_is_lost() -> None:
    async def scenario() -> tuple[list[list[bytes]], _Transport]:
        transport = _Transport()
        joined = JoinedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        seen = []
        joined.write(b"headers")
        seen.append(list(transport.writes))  # held
        joined.write(b"body")
        seen.append(list(transport.writes))  # sent together
        joined.write(b"100 continue")
        await asyncio.sleep(0)  # nothing followed: sent after the step
        seen.append(list(transport.writes))
        joined.write(b"last")
        joined.close()  # a close sends what is held first
        seen.append(list(transport.writes))
        joined.write(b"after close")
        await asyncio.sleep(0)
        assert joined.get_extra_info("peername") == "info peername"
        return seen, transport

    seen, transport = asyncio.run(scenario())
    assert seen == [[], [b"headersbody"], [b"headersbody", b"100 continue"], [b"headersbody", b"100 continue", b"last"]]
    assert transport.closed and transport.writes == seen[-1]
