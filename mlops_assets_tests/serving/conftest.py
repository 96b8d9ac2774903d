"""Serving fixtures: a real registry and online store from the real training pipeline, and real uvicorn servers.

Built once per session (Jan-Mar 2013, every 20th flight): ``training_pipeline`` gives the champion v0001 and the
online store, ``retraining`` a second version v0002 (the ``challenger`` alias). Each test serves its own copy of the
registry and the online store, so moving aliases or writing a new export in one test cannot leak into another.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import uvicorn

from mlops_assets.core.flights import FLIGHTS, replay_months
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.partitions import range_tags, register_months
from mlops_assets.serving import ServeConfig, create_app
from mlops_assets.serving.app import uvicorn_config
from mlops_assets.serving.service import PredictionService

MONTHS = ["2013-01", "2013-02", "2013-03"]
SPEC = FLIGHTS.training_features
#: A real flight of the replayed feed (March 2013), as a client would send it.
FLIGHT = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-03-02T09:00", "tailnum": "N14228"}


@dataclass(frozen=True)
class BuiltPlatform:
    """The session's pipeline output: data dir with landing, warehouse, registry and online store."""

    settings: Settings


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> BuiltPlatform:
    root = tmp_path_factory.mktemp("serving-platform")
    settings = Settings(data_dir=root / "data", dagster_home=root / "home")
    replay_months(settings.landing_dir, MONTHS, every=20)
    with dg.instance_for_test() as instance:
        register_months(instance, MONTHS)
        definitions = build_definitions(FLIGHTS, settings)
        tags = range_tags(MONTHS)
        assert definitions.resolve_job_def("training_pipeline").execute_in_process(instance=instance, tags=tags).success
        assert definitions.resolve_job_def("retraining").execute_in_process(instance=instance, tags=tags).success
    registry = Registry(settings.registry_dir)
    assert registry.alias("champion") == "v0001" and registry.alias("challenger") == "v0002"
    assert (settings.online_store_dir / "CURRENT").exists()
    return BuiltPlatform(settings)


@pytest.fixture
def served(platform: BuiltPlatform, tmp_path: Path) -> Settings:
    """A data dir of this test's own: copies of the registry and the online store (no warehouse: serving needs none)."""
    settings = Settings(data_dir=tmp_path / "served", dagster_home=tmp_path / "served" / "home")
    for folder in ("registry", "online_store"):
        shutil.copytree(platform.settings.data_dir / folder, settings.data_dir / folder)
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """A keep-alive HTTP/1.1 client on the stdlib, reconnecting when the server closed the connection."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
                response = self._connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, json.loads(data) if data else None
        raise AssertionError("unreachable")

    def post(self, payload: Any) -> tuple[int, Any]:
        return self.request("POST", "/predict", json.dumps(payload).encode())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class Running:
    """A live server: its port, a client, and the service behind it (for what HTTP does not show)."""

    port: int
    client: Client
    service: PredictionService

    def new_client(self) -> Client:
        return Client(self.port)


@contextmanager
def running(settings: Settings, config: ServeConfig | None = None) -> Iterator[Running]:
    """The real app on a real uvicorn, in a thread, on a free loopback port (bound here, so no race for it).
    Leaving the block shuts it down the way SIGTERM does (``should_exit``): requests finish, the log is flushed."""
    config = config or ServeConfig(host="127.0.0.1", port=0)
    app = create_app(settings, SPEC, config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    uvicorn_settings = uvicorn_config(app, config)
    uvicorn_settings.log_level = "warning"
    server = uvicorn.Server(uvicorn_settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    client = Client(port)
    try:
        yield Running(port, client, app.state.service)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"
