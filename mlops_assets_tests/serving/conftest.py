"""Serving fixtures: real registries and online stores from the real training pipeline, and real uvicorn servers.

Built once per session (Jan-Mar 2013, every 20th flight) for every model of the catalog: ``training_pipeline`` gives
each model its first version and online store (``flight_delay``: the champion v0001), ``flight_delay_retraining`` a
second ``flight_delay`` version v0002 (the ``challenger`` alias). Each test serves its own copy of the registries and
online stores, so moving aliases or writing a new export in one test cannot leak into another.
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

import pytest
import uvicorn

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import ModelPaths, Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.serving import ServeConfig, create_app
from mlops_assets.serving.app import uvicorn_config
from mlops_assets.serving.catalog import ServedCatalog
from mlops_assets.serving.service import PredictionService
from mlops_assets_tests.conftest import instance_for_test

MONTHS = ["2013-01", "2013-02", "2013-03"]
#: The model most tests talk to, through ``POST /predict`` (``running`` makes it the default).
DELAY = "flight_delay"
MODEL = CATALOG.model(DELAY)
SPEC = MODEL.features
#: A real flight of the replayed feed (March 2013), as a client would send it.
FLIGHT = {
    "carrier": "UA",
    "flight": 1545,
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-03-02T09:00",
    "tailnum": "N14228",
}


@dataclass(frozen=True)
class BuiltPlatform:
    """The session's pipeline output: data dir with landing, warehouse, registries and online stores, and each
    registered model's champion after the pipeline (None: it did not pass its first-model gates)."""

    settings: Settings
    champions: dict[str, str | None]


def delay(settings: Settings) -> ModelPaths:
    """``flight_delay``'s folders (registry, online store, prediction log) in ``settings``."""
    return settings.model(DELAY)


def current_store(settings: Settings, model: str = DELAY) -> str:
    """The online store version ``CURRENT`` names for ``model``."""
    return (settings.model(model).online_store_dir / "CURRENT").read_text().strip()


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> BuiltPlatform:
    root = tmp_path_factory.mktemp("serving-platform")
    settings = Settings(data_dir=root / "data", dagster_home=root / "home")
    replay_months(settings.landing_dir, MONTHS, every=20)
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        definitions = build_definitions(CATALOG, settings)
        tags = range_tags(MONTHS)
        assert definitions.resolve_job_def("training_pipeline").execute_in_process(instance=instance, tags=tags).success
        retraining = definitions.resolve_job_def(f"{DELAY}_retraining")
        assert retraining.execute_in_process(instance=instance, tags=tags).success
    registry = Registry(delay(settings).registry_dir)
    assert registry.alias(CHAMPION) == "v0001" and registry.alias("challenger") == "v0002"
    for model in CATALOG.models:  # every servable model got its own online store
        if model.features.online is not None:
            assert (settings.model(model.name).online_store_dir / "CURRENT").exists(), model.name
    champions = {m.name: Registry(settings.model(m.name).registry_dir).alias(CHAMPION) for m in CATALOG.models}
    return BuiltPlatform(settings, champions)


def copy_served_state(source: Settings, target: Settings) -> None:
    """The registries and online stores of every model (no warehouse: serving needs none)."""
    for folder in ("registry", "online_store"):
        shutil.copytree(source.data_dir / folder, target.data_dir / folder)


@pytest.fixture
def served(platform: BuiltPlatform, tmp_path: Path) -> Settings:
    """A data dir of this test's own: copies of the registries and the online stores."""
    settings = Settings(data_dir=tmp_path / "served", dagster_home=tmp_path / "served" / "home")
    copy_served_state(platform.settings, settings)
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

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self._connection.request(
                    method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
                )
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

    def post(self, payload: Any, path: str = "/predict") -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(payload).encode())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class Running:
    """A live server: its port, a client, and the services behind it (for what HTTP does not show): ``service`` is
    the default model's."""

    port: int
    client: Client
    service: PredictionService
    served: ServedCatalog

    def new_client(self) -> Client:
        return Client(self.port)


@contextmanager
def running(
    settings: Settings, config: ServeConfig | None = None, catalog: Catalog = CATALOG, default_model: str | None = DELAY
) -> Iterator[Running]:
    """The real app serving ``catalog`` (``default_model`` on ``POST /predict``; None: the catalog's first) on a real
    uvicorn, in a thread, on a free loopback port (bound here, so no race for it). Leaving the block shuts it down the
    way SIGTERM does (``should_exit``): requests finish, the logs are flushed."""
    config = config or ServeConfig(host="127.0.0.1", port=0)
    app = create_app(settings, catalog, config, default_model)
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
        yield Running(port, client, app.state.service, app.state.served)
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"
