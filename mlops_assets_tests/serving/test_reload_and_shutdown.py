"""Hot reload without a failed request, a broken new champion that never serves, and SIGTERM flushing the log of a
real ``mlops serve`` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import duckdb
import polars as pl
import pytest

from mlops_assets.core.online import build_export, write_export
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import Settings
from mlops_assets.serving import ServeConfig, load_serve_config
from mlops_assets_tests.serving.conftest import (
    DELAY,
    FLIGHT,
    SPEC,
    BuiltPlatform,
    Client,
    current_store,
    delay,
    free_port,
    running,
)


def test_hot_reload_swaps_champion_and_online_store_with_no_failed_request(
    served: Settings, platform: BuiltPlatform
) -> None:
    old_store = current_store(served)
    # the next export (another month, so another version), made the way the online_store asset makes it; the test
    # may open DuckDB, the service never does
    with duckdb.connect(str(platform.settings.warehouse_path), read_only=True) as conn:
        export = build_export(conn, SPEC, "2013-02")
    stop = threading.Event()
    seen: dict[str, list[tuple[float, int, str | None, str | None]]] = {"single": [], "batch": []}

    def keep_asking(name: str, payload: Any, client: Client) -> None:
        while not stop.is_set():
            try:
                status, body = client.post(payload)
            except OSError as error:  # a refused or reset connection is a failed request too
                seen[name].append((time.monotonic(), 0, repr(error), None))
                continue
            items = [body["prediction"]] if status == 200 and "prediction" in body else body.get("predictions") or [{}]
            assert len({(i.get("model_version"), i.get("online_store")) for i in items}) == 1  # one set per request
            seen[name].append((time.monotonic(), status, items[0].get("model_version"), items[0].get("online_store")))

    with running(served) as server:
        threads = [
            threading.Thread(target=keep_asking, args=("single", FLIGHT, server.new_client())),
            threading.Thread(
                target=keep_asking, args=("batch", [{**FLIGHT, "flight": n} for n in range(1, 21)], server.new_client())
            ),
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.6)
        switched = time.monotonic()
        new_store = write_export(export, delay(served).online_store_dir)
        Registry(delay(served).registry_dir).set_alias("champion", "v0002", "promoted", "test: hot reload")
        deadline = switched + 5
        while time.monotonic() < deadline and not all(s and s[-1][2:] == ("v0002", new_store) for s in seen.values()):
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        _, health = server.client.get("/health")

    assert new_store != old_store
    for name, answers in seen.items():
        assert len(answers) > 20, (name, len(answers))
        assert [a for a in answers if a[1] != 200] == [], name  # not one failed request during the swap
        assert answers[0][2:] == ("v0001", old_store) and answers[-1][2:] == ("v0002", new_store), name
        # each part switches once and never goes back
        for part in (2, 3):
            values = [a[part] for a in answers]
            first_new = values.index(values[-1])
            assert set(values[first_new:]) == {values[-1]}, (name, part)
        first_full = next(a[0] for a in answers if a[2:] == ("v0002", new_store))
        assert first_full - switched < 3.0, (name, first_full - switched)
    assert health["champion"] == "v0002" and health["online_store"]["version"] == new_store and health["problems"] == []


def test_a_broken_new_champion_never_serves_and_health_says_why(served: Settings) -> None:
    registry = Registry(delay(served).registry_dir)
    with running(served) as server:
        model = registry.get("v0002").model_path
        model.write_text(model.read_text().replace("num_leaves=", "num_leaves=9", 1))
        registry.set_alias("champion", "v0002", "promoted", "test: a tampered model")
        deadline = time.monotonic() + 5
        health: dict[str, Any] = {}
        while time.monotonic() < deadline and not health.get("problems"):
            time.sleep(0.1)
            _, health = server.client.get("/health")
        status, body = server.client.post(FLIGHT)
    assert "does not match its checksum" in " ".join(health["problems"]) and health["status"] == "degraded"
    assert health["champion"] == "v0001"
    assert status == 200 and body["prediction"]["model_version"] == "v0001"  # the last good set keeps serving


def test_sigterm_shuts_mlops_serve_down_gracefully_and_flushes_the_log(served: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_DATA_DIR": str(served.data_dir),
        "DAGSTER_HOME": str(served.dagster_home),
        "MLOPS_AB_SHARE": "0.9",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops_assets.cli", "serve", "--port", str(port), "--ab-share", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = Client(port, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health")[0] == 200:
                    break
            except OSError:
                client.close()
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "mlops serve did not become healthy"
            time.sleep(0.1)
        _, models = client.get("/models")
        assert models["default"] == DELAY  # the catalog's first model answers POST /predict
        assert all(m["ab_share"] == 0.5 for m in models["models"].values() if m["served"])  # the flag wins over the env
        answers = [client.post({**FLIGHT, "flight": n})[1]["prediction"] for n in range(1, 21)]
        answers += client.post([{**FLIGHT, "flight": n} for n in range(100, 130)])[1]["predictions"]
        client.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # uvicorn re-raises the SIGTERM after its graceful shutdown, so the exit is "terminated by SIGTERM" (or 0)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    log = read_log(delay(served).predictions_dir)
    assert set(log["request_id"]) >= {a["request_id"] for a in answers}
    served_rows = log.filter(pl.col("served"))
    assert served_rows.height == len(answers) and set(served_rows["variant"]) == {"champion", "challenger"}
    assert not served.warehouse_path.exists()  # the service never opened DuckDB (connecting would create the file)


def test_config_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_AB_SHARE", "0.25")
    assert load_serve_config() == ServeConfig(ab_share=0.25)
    assert load_serve_config(port=9000, ab_share=0.0) == ServeConfig(port=9000, ab_share=0.0)
    monkeypatch.setenv("MLOPS_AB_SHARE", "lots")
    with pytest.raises(ValueError, match="MLOPS_AB_SHARE"):
        load_serve_config()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_serve_config(ab_share=1.5)
