"""Hot reload without a failed request, a champion failing its checksum (the service falls back to the newest earlier
version that verifies, says so, records it in the registry, and recovers when the file is restored), and SIGTERM
flushing the log of a real ``mlops serve`` process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from mlops_assets.core.online import build_export, write_export
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import Settings
from mlops_assets.serving import ServeConfig, load_serve_config
from mlops_assets.serving.models import FALLBACK_EVENT, RECOVERED_EVENT
from mlops_assets.serving.reloading import Reloading
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
    # inside both exports' facts: the 2013-03 export serves flights from March 1st, the 2013-02 one up to 24 h past
    # its last February departure
    edge_flight = {**FLIGHT, "scheduled_departure": "2013-03-01T09:00"}

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
            threading.Thread(target=keep_asking, args=("single", edge_flight, server.new_client())),
            threading.Thread(
                target=keep_asking,
                args=("batch", [{**edge_flight, "flight": n} for n in range(1, 21)], server.new_client()),
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


def _tamper(registry: Registry, version: str) -> bytes:
    """Change one byte-level detail of ``version``'s model file (its checksum no longer matches); return the
    original bytes."""
    model = registry.get(version).model_path
    original = model.read_bytes()
    model.write_bytes(original.replace(b"num_leaves=", b"num_leaves=9", 1))
    return original


def _health_until(client: Client, done: Any, seconds: float = 5.0) -> dict[str, Any]:
    """``GET /health`` until ``done(body)`` (the service reloads on its own, every ``reload_seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        _, health = client.get("/health")
        if done(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def _events(registry: Registry, event: str) -> list[dict[str, Any]]:
    return [e for e in registry.events() if e["event"] == event]


def test_a_broken_new_champion_never_serves_health_says_why_and_restoring_it_clears_degraded(
    served: Settings,
) -> None:
    registry = Registry(delay(served).registry_dir)
    with running(served) as server:
        original = _tamper(registry, "v0002")
        registry.set_alias("champion", "v0002", "promoted", "test: a tampered model")
        health = _health_until(server.client, lambda h: h["problems"])
        status, body = server.client.post(FLIGHT)
        assert "does not match its checksum" in " ".join(health["problems"]) and health["status"] == "degraded"
        assert health["champion"] == "v0001" and health["fallback"]["champion_alias"] == "v0002"
        assert status == 200 and body["prediction"]["model_version"] == "v0001"  # the last good version serves

        registry.get("v0002").model_path.write_bytes(original)  # the cause is gone: so is "degraded"
        health = _health_until(server.client, lambda h: h["status"] == "ok")
        status, body = server.client.post(FLIGHT)
    assert health["champion"] == "v0002" and health["fallback"] is None and health["problems"] == []
    assert status == 200 and body["prediction"]["model_version"] == "v0002"
    [fallback] = _events(registry, FALLBACK_EVENT)
    assert fallback["version"] == "v0002" and fallback["served_version"] == "v0001"
    assert [e["version"] for e in _events(registry, RECOVERED_EVENT)] == ["v0002"]


def test_a_champion_failing_its_checksum_at_startup_falls_back_to_an_earlier_champion(
    served: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The service starts while the champion's file fails its checksum: it serves the newest earlier gated champion
    instead of answering 503, says so on /health, /models and in its log, records the event in the registry once
    (not on every poll), and serves the champion again once its file is restored."""
    registry = Registry(delay(served).registry_dir)
    registry.set_alias("champion", "v0002", "promoted", "test: v0002 passed the gates")
    # the fallback's version is also the shadow: it answers as the champion only (it was scored and logged twice)
    registry.set_alias("shadow", "v0001", "shadow_set", "test")
    original = _tamper(registry, "v0002")
    caplog.set_level(logging.INFO, logger="mlops_assets.serving")
    with running(served) as server:
        status, body = server.client.post(FLIGHT)
        _, health = server.client.get("/health")
        _, models = server.client.get(f"/models/{DELAY}")
        time.sleep(1.0)  # two polls at least: still one event
        events = _events(registry, FALLBACK_EVENT)

        registry.get("v0002").model_path.write_bytes(original)
        recovered = _health_until(server.client, lambda h: h["status"] == "ok")
        after = server.client.post(FLIGHT)[1]["prediction"]

    assert status == 200 and body["prediction"]["model_version"] == "v0001", body
    assert body["prediction"]["variant"] == "champion"
    assert health["status"] == "degraded" and health["champion"] == "v0001"
    fallback = health["fallback"]
    assert fallback["champion_alias"] == "v0002" and fallback["serving"] == "v0001"
    assert "v0002" in fallback["reason"] and "does not match its checksum" in fallback["reason"]
    assert fallback["reason"] in health["problems"] and health["models"][DELAY]["fallback"] == fallback
    champion = models["champion"]
    assert champion["version"] == "v0002" and champion["serving"] is False and champion["served_instead"] == "v0001"
    assert models["shadow"]["serving"] is False and models["shadow_enabled"] is False
    assert "shadow v0001 answers as the champion (the fallback): not as shadow" in health["problems"]
    assert models["fallback"] == fallback
    assert any("cannot be served" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert len(events) == 1 and events[0]["version"] == "v0002" and events[0]["served_version"] == "v0001"
    assert events[0]["reason"] == fallback["reason"]

    assert recovered["champion"] == "v0002" and recovered["fallback"] is None and recovered["problems"] == []
    assert after["model_version"] == "v0002"
    assert len(_events(registry, FALLBACK_EVENT)) == 1 and len(_events(registry, RECOVERED_EVENT)) == 1


def test_a_serving_champion_whose_file_is_tampered_keeps_its_verified_copy(served: Settings) -> None:
    """The champion's file changes under the running service: it keeps answering with the copy it verified, and
    /health says the file on disk no longer verifies until it is restored."""
    registry = Registry(delay(served).registry_dir)
    with running(served) as server:
        assert server.client.post(FLIGHT)[1]["prediction"]["model_version"] == "v0001"
        original = _tamper(registry, "v0001")
        health = _health_until(server.client, lambda h: h["status"] == "degraded")
        status, body = server.client.post(FLIGHT)
        registry.get("v0001").model_path.write_bytes(original)
        recovered = _health_until(server.client, lambda h: h["status"] == "ok")
    assert health["fallback"]["serving"] == health["fallback"]["champion_alias"] == "v0001"
    assert "no longer verify" in health["fallback"]["reason"] and health["champion"] == "v0001"
    assert status == 200 and body["prediction"]["model_version"] == "v0001"
    assert recovered["fallback"] is None and recovered["problems"] == []
    assert [e["version"] for e in _events(registry, FALLBACK_EVENT)] == ["v0001"]


@pytest.mark.parametrize(
    ("damaged", "said"),
    [
        ('{"champion": "v0009"', "is not valid JSON"),
        ("", "is not valid JSON"),
        (None, "is missing, but the event log's last move named champion v0001"),
        ('{"champion": null}', "names no champion, but the event log's last move named champion v0001"),
    ],
    ids=["cut-short", "empty", "deleted", "no-champion"],
)
def test_a_damaged_aliases_file_names_itself_and_the_repair_while_the_last_set_serves(
    served: Settings, damaged: str | None, said: str
) -> None:
    """A hand edit cut short, or a write that left the file empty (a crash, a full disk: it was taken for "no aliases
    yet", and the champion answered 503 with fixes that failed on the same file). A deleted file, or a champion
    unset by hand, while the event log names one: the same (no command unsets the champion; they dropped the good
    champion, answered 503 saying to train one, and logged the fallback's end as a recovery)."""
    registry = Registry(delay(served).registry_dir)
    original = registry.aliases_path.read_bytes()
    with running(served) as server:
        if damaged is None:
            registry.aliases_path.unlink()
        else:
            registry.aliases_path.write_text(damaged)
        health = _health_until(server.client, lambda h: h["status"] == "degraded")
        status, body = server.client.post(FLIGHT)
        registry.aliases_path.write_bytes(original)
        recovered = _health_until(server.client, lambda h: h["status"] == "ok")
    problems = " ".join(health["problems"])
    assert str(registry.aliases_path) in problems and said in problems, problems
    assert "mlops doctor --model flight_delay --repair" in problems
    assert status == 200 and body["prediction"]["model_version"] == "v0001"  # the last good set serves
    assert recovered["problems"] == []


def test_a_reload_failure_clears_when_the_source_is_back_to_what_serves() -> None:
    """The aliases move to something that cannot be built and back: nothing is wrong any more, so no error stays."""
    source = {"token": "good"}

    def build(token: str | None) -> str:
        if token == "broken":
            raise ValueError("cannot build it")
        return str(token)

    holder: Reloading[str] = Reloading("thing", lambda: source["token"], build)
    assert holder.refresh() and holder.error is None
    source["token"] = "broken"
    assert not holder.refresh() and holder.error == "ValueError: cannot build it"
    assert holder.current is not None and holder.current.value == "good"  # the last good value serves
    source["token"] = "good"
    assert not holder.refresh() and holder.error is None


def _healthy_serve(served: Settings, *args: str) -> tuple[subprocess.Popen[str], Client]:
    """`mlops serve` on a free port in a process of its own, once it answers /health."""
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_DATA_DIR": str(served.data_dir),
        "DAGSTER_HOME": str(served.dagster_home),
        "MLOPS_AB_SHARE": "0.9",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops_assets.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = Client(port, timeout=10)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/health")[0] == 200:
                return process, client
        except OSError:
            client.close()
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlops serve did not become healthy:\n{process.communicate()[0]}")
        time.sleep(0.1)


def test_ctrl_c_stops_mlops_serve_with_a_line_not_a_traceback(served: Settings) -> None:
    """uvicorn shuts down gracefully on Ctrl-C, then raises it again: the person at the keyboard saw a traceback."""
    process, client = _healthy_serve(served)
    client.close()
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, output
    assert "Application shutdown complete" in output and "Traceback" not in output, output
    assert output.rstrip().endswith("Stopped (Ctrl-C): requests in flight were answered, the prediction log flushed.")


def test_sigterm_shuts_mlops_serve_down_gracefully_and_flushes_the_log(served: Settings) -> None:
    process, client = _healthy_serve(served, "--ab-share", "0.5")
    try:
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
    monkeypatch.delenv("MLOPS_MAX_FEATURE_AGE_HOURS", raising=False)
    assert load_serve_config().max_feature_age_hours == 24.0
    monkeypatch.setenv("MLOPS_AB_SHARE", "0.25")
    assert load_serve_config() == ServeConfig(ab_share=0.25)
    assert load_serve_config(port=9000, ab_share=0.0) == ServeConfig(port=9000, ab_share=0.0)
    monkeypatch.setenv("MLOPS_MAX_FEATURE_AGE_HOURS", "72")
    assert load_serve_config() == ServeConfig(ab_share=0.25, max_feature_age_hours=72.0)
    assert load_serve_config(max_feature_age_hours=1.5).max_feature_age_hours == 1.5
    for wrong in ("a day", "-1", "nan"):
        monkeypatch.setenv("MLOPS_MAX_FEATURE_AGE_HOURS", wrong)
        with pytest.raises(ValueError, match="MLOPS_MAX_FEATURE_AGE_HOURS"):
            load_serve_config()
    monkeypatch.delenv("MLOPS_MAX_FEATURE_AGE_HOURS")
    monkeypatch.setenv("MLOPS_AB_SHARE", "lots")
    with pytest.raises(ValueError, match="MLOPS_AB_SHARE"):
        load_serve_config()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_serve_config(ab_share=1.5)


def test_a_row_the_log_cannot_hold_is_set_aside_and_the_writer_goes_on(tmp_path: Path) -> None:
    """A row that does not fit the log's schema used to stop its writer thread for good, or be retried in front of
    every later row forever: it is kept as JSON beside the log, and the rows after it are written."""
    from mlops_assets.core.prediction_log import PredictionLog, log_schema

    schema = log_schema(["flight"], {"flight": pl.Int64()})
    log = PredictionLog(tmp_path, schema, flush_rows=1000, flush_seconds=0.2)
    good = {name: None for name in schema} | {"request_id": "r1", "flight": 1, "score": 0.5, "status": "ok"}
    # a bug upstream, say, in the middle of a batch: that row alone is set aside, the batch's others are written
    log.append([{**good, "request_id": "r0"}, {**good, "score": "not a number", "request_id": "bad"}])
    deadline = time.monotonic() + 10
    while log.rows_set_aside == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    log.append([good])
    assert log.close() == 1 and log.rows_set_aside == 1 and log.failed_flushes == 0
    assert sorted(read_log(tmp_path)["request_id"].to_list()) == ["r0", "r1"]
    [aside] = list((tmp_path / "online").glob("*/*.unwritable.jsonl"))
    assert json.loads(aside.read_text())["request_id"] == "bad"
    assert not list((tmp_path / "online").glob("*/.*.tmp"))


def test_a_log_that_cannot_be_written_degrades_health_and_its_rows_are_kept_at_shutdown(served: Settings) -> None:
    """The day's log folder cannot be made (here a file holds its name; a full disk alike): `/health` said "ok" while
    the rows piled up in memory, and the shutdown ended in a traceback that lost them without a word."""
    from datetime import UTC, datetime

    online = delay(served).predictions_dir / "online"
    online.mkdir(parents=True, exist_ok=True)
    blocker = online / datetime.now(UTC).strftime("%Y-%m-%d")
    blocker.write_text("not a folder")
    with running(served) as server:
        for _ in range(3):
            assert server.client.post(FLIGHT)[0] == 200  # answers never wait for the log
        health = _health_until(server.client, lambda h: bool(h["problems"]))
    [problem] = health["problems"]
    assert problem.startswith("the prediction log cannot be written (") and "row(s) kept in memory" in problem
    assert health["status"] == "degraded" and health["log"]["failed_writes"] >= 1
    assert health["log"]["rows_pending"] >= 3 and health["log"]["rows_written"] == 0
    # leaving the block shut the service down: the rows it could not write are kept beside the log
    [kept] = list(online.glob("unwritten-*.jsonl"))
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    assert len(lines) >= 3 and {row["status"] for row in lines} == {"ok"}


def test_an_online_store_that_cannot_be_loaded_says_what_serves_and_how_to_export_it_again(served: Settings) -> None:
    """`/health` gave the bare exception (`FileNotFoundError: .../manifest.json`) with no next step."""
    pointer = delay(served).online_store_dir / "CURRENT"
    original = pointer.read_text()
    with running(served) as server:
        pointer.write_text("no-such-version\n")
        health = _health_until(server.client, lambda h: h["status"] == "degraded")
        status, _ = server.client.post(FLIGHT)
        pointer.write_text(original)
    [problem] = health["problems"]
    assert problem.startswith("the newest online store of flight_delay cannot be loaded (") and status == 200
    assert f"the last good one ({original.strip()}) keeps serving" in problem
    assert problem.endswith("materialize flight_delay/online_store to export it again")


def test_a_champion_trained_on_another_feature_set_is_not_served(served: Settings) -> None:
    """The feature SQL changed and the champion was trained before: the online store computes other columns, and
    every request to it failed with a 500 while /health said ok. It is refused like a damaged version: the earlier
    champion on today's features serves, and /health says why."""
    registry = Registry(delay(served).registry_dir)
    registry.set_alias("champion", "v0002", "promoted", "test: v0002 passed the gates")
    metadata_path = registry.get("v0002").path / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["feature_set_version"] = "features-before-the-sql-changed"
    metadata_path.write_text(json.dumps(metadata))
    with running(served) as server:
        status, body = server.client.post(FLIGHT)
        _, health = server.client.get("/health")
    assert status == 200 and body["prediction"]["model_version"] == "v0001", body
    assert health["status"] == "degraded" and health["fallback"]["champion_alias"] == "v0002"
    assert "v0002 was trained on feature set features-before-the-sql-changed" in health["fallback"]["reason"]


def test_a_model_with_no_online_store_yet_says_so_once_in_plain_words(served: Settings) -> None:
    """It said "no online store for flight_delay: FileNotFoundError: no online store under ...": the class name and
    the same words twice."""
    shutil.rmtree(delay(served).online_store_dir)
    with running(served) as server:
        _, health = server.client.get("/health")
    problem = next(p for p in health["problems"] if "online store" in p)
    assert problem.startswith(f"no online store for {DELAY}: nothing exported under {delay(served).online_store_dir}")
    assert "FileNotFoundError" not in problem and "make pipeline" in problem
