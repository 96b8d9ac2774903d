"""The prediction API on a real uvicorn: answers, refusals, batches, shadow and A/B, health and models, and every
registered model on its own route, each with its own registry, online store and prediction log."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from typing import Any

import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import Registry, rollback
from mlops_assets.core.settings import Settings
from mlops_assets.serving import ServeConfig
from mlops_assets.serving.rows import MAX_ROWS
from mlops_assets_tests.serving.conftest import DELAY, FLIGHT, Client, copy_served_state, current_store, delay, running

#: What one prediction says, for every model.
ANSWER_FIELDS = (
    "request_id",
    "model",
    "entity_key",
    "probability",
    "predicted",
    "outcome",
    "model_version",
    "variant",
    "online_store",
    "features_as_of",
    "feature_age_hours",
    "features_stale",
    "unknown_codes",
)


def _flight(**changes: Any) -> dict[str, Any]:
    return {**FLIGHT, **changes}


def test_one_flight_and_a_batch_are_answered_by_the_champion_and_logged(served: Settings) -> None:
    with running(served) as server:
        status, body = server.client.post(FLIGHT)
        assert status == 200, body
        answer = body["prediction"]
        assert answer["model"] == DELAY and answer["model_version"] == "v0001" and answer["variant"] == "champion"
        assert 0.0 < answer["probability"] < 1.0 and answer["predicted"] == (answer["probability"] >= 0.5)
        assert answer["outcome"] == ("delayed" if answer["predicted"] else "not delayed")
        assert answer["entity_key"] == "UA|1545|EWR|2013-03-02T09:00:00"
        assert answer["online_store"] == current_store(served)
        # inside the export: features as of the flight's own prediction time (14:00 UTC), every code known
        assert answer["features_as_of"] == "2013-03-02T14:00:00" and answer["feature_age_hours"] == 0.0
        assert answer["features_stale"] is False and answer["unknown_codes"] == []
        assert set(answer) == set(ANSWER_FIELDS)

        # a batch: one answer per flight, in request order; the same flight scores the same alone and in a batch
        batch = [_flight(flight=n, tailnum=None) for n in (1, 2, 3)] + [FLIGHT]
        status, body = server.client.post(batch)
        assert status == 200, body
        items = body["predictions"]
        assert [i["entity_key"].split("|")[1] for i in items] == ["1", "2", "3", "1545"]
        assert items[-1]["probability"] == pytest.approx(answer["probability"], abs=1e-12)
        assert len({i["request_id"] for i in items}) == 4

        # a what-if: overrides replace the computed features, and change the answer (a bad day everywhere: the small
        # test model splits on some of them, not necessarily on each)
        bad_day = {"origin_dep_delay_mean_3h": 180.0, "prev_leg_dep_delay": 240}
        bad_day |= {"carrier_delay_rate_7d": 0.95, "route_delay_rate_30d": 0.95, "visib": 0.5, "precip": 1.0}
        status, body = server.client.post(_flight(overrides=bad_day))
        assert status == 200, body
        assert body["prediction"]["probability"] != answer["probability"]
        what_if = body["prediction"]["request_id"]
        ids = [answer["request_id"], *(i["request_id"] for i in items), what_if]

    log = read_log(delay(served).predictions_dir)  # the shutdown flushed it
    assert set(ids) <= set(log["request_id"].to_list())
    row = log.filter(pl.col("request_id") == answer["request_id"]).to_dicts()
    assert len(row) == 1
    assert list(row[0])[:4] == ["request_id", "logged_at", "model", "entity_key"]
    assert row[0] | {"logged_at": None, "latency_ms": None} == {
        "request_id": answer["request_id"],
        "logged_at": None,
        "model": DELAY,
        "entity_key": answer["entity_key"],
        "carrier": "UA",
        "flight": 1545,
        "origin": "EWR",
        "sched_dep_local": row[0]["sched_dep_local"],
        "prediction_time": row[0]["prediction_time"],
        "unknown_codes": None,
        "feature_age_hours": 0.0,
        "what_if": False,
        "variant": "champion",
        "model_version": "v0001",
        "score": answer["probability"],
        "served": True,
        "latency_ms": None,
        "status": "ok",
        "error": None,
    }
    assert (
        str(row[0]["sched_dep_local"]) == "2013-03-02 09:00:00"
        and str(row[0]["prediction_time"]) == "2013-03-02 14:00:00"
    )
    assert 0 < row[0]["latency_ms"] < 5000
    # the what-if kept its flight's key in the log (overrides change features, not the flight), marked as a what-if:
    # the month's live quality leaves it out (its answer is about a flight that did not happen)
    assert set(log["carrier"].to_list()) == {"UA"}
    assert log.filter(pl.col("request_id") == what_if)["what_if"].to_list() == [True]
    assert log.filter(pl.col("request_id") != what_if)["what_if"].to_list() == [False] * (log.height - 1)


REFUSED = [
    ({k: v for k, v in FLIGHT.items() if k != "carrier"}, 422, "carrier"),
    (_flight(flight="1545"), 422, "flight"),
    (_flight(flight=0), 422, "flight"),
    (_flight(flight=True), 422, "flight"),
    (_flight(flight=15.5), 422, "flight"),
    (_flight(origin=""), 422, "origin"),
    (_flight(origin="   "), 422, "origin"),
    # codes: their form, and the airports the model serves (the refusal names the field)
    (_flight(origin="XXX"), 422, "origin"),
    (_flight(origin="ewr"), 422, "origin"),
    (_flight(origin="../../etc/passwd"), 422, "origin"),
    (_flight(carrier="'; drop table x;--"), 422, "carrier"),
    (_flight(carrier="ua"), 422, "carrier"),
    (_flight(carrier="UAL"), 422, "carrier"),
    (_flight(dest="I A H"), 422, "dest"),
    (_flight(dest="../../etc/passwd"), 422, "dest"),
    (_flight(tailnum="N1'--"), 422, "tailnum"),
    ([FLIGHT, _flight(origin="XXX")], 422, "[1].origin"),
    (_flight(dest="X" * 65), 422, "dest"),
    (_flight(tailnum="N1\x00"), 422, "tailnum"),
    (_flight(carrier=["UA"]), 422, "carrier"),
    (_flight(scheduled_departure="yesterday"), 422, "scheduled_departure"),
    (_flight(scheduled_departure="2013-03-02"), 422, "scheduled_departure"),
    (_flight(scheduled_departure="2013-03-02T09:00+01:00"), 422, "scheduled_departure"),
    (_flight(scheduled_departure="3013-03-02T09:00"), 422, "scheduled_departure"),
    (_flight(scheduled_departure=1362215000), 422, "scheduled_departure"),
    (_flight(scheduled_departure="2013-03-10T02:30"), 422, "scheduled_departure"),  # skipped by the DST change
    ([FLIGHT, _flight(scheduled_departure="2013-03-10T02:30")], 422, "[1].scheduled_departure"),
    (_flight(sched_departure="2013-03-02T09:00"), 422, "sched_departure"),  # a typo is not ignored
    (_flight(overrides={"no_such_feature": 1}), 422, "overrides.no_such_feature"),
    (_flight(overrides={"temp": "hot"}), 422, "overrides.temp"),
    (_flight(overrides={"temp": True}), 422, "overrides.temp"),
    (_flight(overrides={"carrier": 7}), 422, "overrides.carrier"),
    (_flight(overrides=[1]), 422, "overrides"),
    ([FLIGHT, _flight(flight=-3)], 422, "[1].flight"),
    ([FLIGHT, "UA1545"], 422, "[1]"),
    ([], 422, "empty batch"),
    (42, 422, "JSON object"),
    (None, 422, "JSON object"),
]


@pytest.mark.parametrize(("payload", "status", "named"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_invalid_requests_get_a_4xx_naming_the_field(
    payload: Any, status: int, named: str, server_for_refusals: Any
) -> None:
    code, body = server_for_refusals.client.post(payload)
    assert code == status, body
    assert named in body["detail"], body
    assert not body["errors"] or any(named in e["field"] for e in body["errors"]) or named in body["detail"]


@pytest.fixture(scope="module")
def server_for_refusals(platform: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the many small refusal cases (none of them writes anything)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("refusals") / "data", dagster_home=platform.settings.dagster_home
    )
    copy_served_state(platform.settings, settings)
    with running(settings) as server:
        yield server


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"{", "malformed JSON"),
        (b'{"flight": NaN}', "malformed JSON"),
        (b"\xff\xfe\x00", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b"", "malformed JSON"),
        (b"1" * 5000, "malformed JSON"),
    ],
)
def test_malformed_json_is_a_400(raw: bytes, named: str, server_for_refusals: Any) -> None:
    code, body = server_for_refusals.client.request("POST", "/predict", raw)
    assert code == 400 and named in body["detail"], body


def test_oversized_bodies_and_batches_are_refused_with_413(server_for_refusals: Any) -> None:
    client: Client = server_for_refusals.client
    padding = json.dumps([FLIGHT] * 12_000).encode()  # ~1.5 MiB, under the batch limit's concern: bytes first
    assert len(padding) > 1 << 20
    code, body = client.request("POST", "/predict", padding)
    assert code == 413 and "larger than the limit of 1,048,576 bytes" in body["detail"]

    # the same, streamed without a Content-Length (chunked): counted while reading
    def chunks() -> Any:
        for start in range(0, len(padding), 65536):
            yield padding[start : start + 65536]

    code, body = client.request("POST", "/predict", chunks())  # type: ignore[arg-type]  # http.client sends it chunked
    assert code == 413 and "larger than the limit" in body["detail"]

    # a declared 100 MB body is refused before a byte of it is read
    with socket.create_connection(("127.0.0.1", server_for_refusals.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413") and "larger than the limit" in head

    # more flights than the batch limit, in a small body
    code, body = client.post([{"carrier": "UA"}] * 1001)
    assert code == 413 and "limit of 1000" in body["detail"]
    # the service still answers afterwards
    assert client.post(FLIGHT)[0] == 200


def test_a_body_shorter_than_declared_gets_408_and_frees_its_connection(served: Settings) -> None:
    """A client that declares more bytes than it sends no longer holds its connection for ever: after the body
    timeout it gets a 408 saying what to send, the connection is closed, and the service answers others meanwhile."""
    with running(served, ServeConfig(host="127.0.0.1", port=0, body_timeout_seconds=1.0)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                + b'{"carrier":'
            )
            assert server.client.post(FLIGHT)[0] == 200  # another client is answered while this body waits
            answer = b""
            while chunk := sock.recv(65536):  # until the service closes the connection
                answer += chunk
        head, _, body = answer.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 408") and "connection: close" in head.lower(), head
        assert "not whole after 1 s: send the bytes its Content-Length declares" in json.loads(body)["detail"]


def test_a_shadow_scores_every_request_and_is_logged_but_never_returned(served: Settings) -> None:
    Registry(delay(served).registry_dir).set_alias("shadow", "v0002", "shadowed", "test: v0002 scores silently")
    with running(served) as server:
        _, models = server.client.get(f"/models/{DELAY}")
        assert (
            models["shadow"]["version"] == "v0002" and models["shadow"]["serving"] is True and models["shadow_enabled"]
        )
        answers = [server.client.post(_flight(flight=n))[1]["prediction"] for n in range(1, 6)]
        batch = server.client.post([_flight(flight=n) for n in range(10, 20)])[1]["predictions"]
    served_ids = [a["request_id"] for a in answers + batch]
    assert all(a["variant"] == "champion" and a["model_version"] == "v0001" for a in answers + batch)
    assert all("shadow" not in json.dumps(a) for a in answers + batch)

    log = read_log(delay(served).predictions_dir)
    assert log.height == 2 * len(served_ids)
    shadow = log.filter(pl.col("variant") == "shadow")
    assert set(shadow["request_id"].to_list()) == set(served_ids)
    assert shadow["served"].to_list() == [False] * len(served_ids) and set(shadow["model_version"]) == {"v0002"}
    assert shadow["score"].is_not_null().all() and set(shadow["status"]) == {"ok"}
    champion = log.filter(pl.col("served"))
    assert champion.height == len(served_ids) and set(champion["variant"]) == {"champion"}


def test_ab_split_is_stable_per_flight_and_near_the_share(served: Settings) -> None:
    config = ServeConfig(port=0, ab_share=0.3)
    flights = [_flight(flight=n, tailnum=None) for n in range(1, 2001)]
    with running(served, config) as server:
        _, models = server.client.get(f"/models/{DELAY}")
        assert models["mode"] == "ab" and models["ab_share"] == 0.3
        assert models["challenger"]["version"] == "v0002" and models["challenger"]["serving"] is True
        first = [i for start in (0, 1000) for i in server.client.post(flights[start : start + 1000])[1]["predictions"]]
        # again, in another order and as single requests for some: the same flight, the same arm
        again = {i["entity_key"]: i for i in server.client.post(flights[::-1][:1000])[1]["predictions"]}
        singles = {f["flight"]: server.client.post(f)[1]["prediction"] for f in flights[:60]}
    variants = {i["entity_key"]: i["variant"] for i in first}
    assert len(variants) == 2000
    share = sum(v == "challenger" for v in variants.values()) / 2000
    assert abs(share - 0.3) <= 0.05, share
    assert all(variants[key] == item["variant"] for key, item in again.items())
    assert all(variants[a["entity_key"]] == a["variant"] for a in singles.values())
    assert {(i["variant"], i["model_version"]) for i in first} == {("champion", "v0001"), ("challenger", "v0002")}

    log = read_log(delay(served).predictions_dir).filter(pl.col("served"))
    by_request = dict(zip(log["request_id"], log["variant"], strict=True))
    assert all(by_request[i["request_id"]] == i["variant"] for i in first)


def test_a_rolled_back_challenger_answers_no_ab_traffic(served: Settings) -> None:
    """v0002 was promoted, then rolled back: the `challenger` alias still names it, but it gets no A/B share."""
    registry = Registry(delay(served).registry_dir)
    registry.set_alias("champion", "v0002", "promoted", "test: better AUC")
    rollback(registry, "test: live AUC fell", to="v0001")
    assert registry.alias("challenger") == "v0002"
    with running(served, ServeConfig(port=0, ab_share=0.3)) as server:
        _, models = server.client.get(f"/models/{DELAY}")
        answers = server.client.post([_flight(flight=n, tailnum=None) for n in range(1, 201)])[1]["predictions"]
        health = server.client.get("/health")[1]
    assert models["mode"] != "ab" or not models["challenger"]["serving"], models
    assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", "v0001")}
    # a rollback's normal course, not a fault: /health stays ok until the next challenger is trained
    assert models["waiting"] == [
        "challenger v0002 was rolled back: it answers no A/B traffic until a new one is trained"
    ]
    assert models["problems"] == [] and health["status"] == "ok", health


def test_a_damaged_event_log_leaves_the_ab_challenger_out_and_the_champion_answers(served: Settings) -> None:
    """Whether live quality rolled the challenger back is in the event log: unreadable, the challenger takes no A/B
    share, and the champion answers (the whole model answered 503 before, only with A/B on)."""
    registry = Registry(delay(served).registry_dir)
    with registry.events_path.open("a") as log:
        log.write('{"garbage\n')
    with running(served, ServeConfig(port=0, ab_share=0.5)) as server:
        status, body = server.client.post([_flight(flight=n, tailnum=None) for n in range(1, 101)])
        _, models = server.client.get(f"/models/{DELAY}")
        health = server.client.get("/health")[1]
    assert status == 200 and {(a["variant"], a["model_version"]) for a in body["predictions"]} == {
        ("champion", "v0001")
    }
    [problem] = models["problems"]
    assert problem.startswith("challenger v0002 answers no A/B traffic") and "events.jsonl" in problem, problem
    assert "mlops doctor --model flight_delay --repair" in problem
    assert health["status"] == "degraded"


def test_a_challenger_answers_ab_traffic_only_once_its_evaluation_stands(served: Settings) -> None:
    """A freshly trained challenger (the alias moves before its evaluation) takes no A/B share; once its evaluation is
    stored with refused scores, still none; once evaluated sound, it takes its share without a restart."""
    registry = Registry(delay(served).registry_dir)
    sound = registry.evaluation("v0002")
    assert sound is not None and sound.challenger_score_problem is None
    fresh = registry.register(registry.model_text("v0002") + "\n", registry.get("v0002").metadata, {}, run_id=None)
    registry.set_alias("challenger", fresh.version, "challenger", "test: just trained")
    flights = [_flight(flight=n, tailnum=None) for n in range(1, 201)]

    def arms() -> set[tuple[str, str]]:
        return {(a["variant"], a["model_version"]) for a in server.client.post(flights)[1]["predictions"]}

    def challenger_serving(expected: bool) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:  # the aliases and the evaluation are looked at every 0.5 s
            models = server.client.get(f"/models/{DELAY}")[1]
            if bool(models["challenger"]["serving"]) == expected or time.monotonic() > deadline:
                return models
            time.sleep(0.2)

    with running(served, ServeConfig(port=0, ab_share=0.5)) as server:
        models = challenger_serving(False)
        assert not models["challenger"]["serving"] and arms() == {("champion", "v0001")}, models
        assert models["waiting"] == [f"challenger {fresh.version} is not evaluated yet: it answers no A/B traffic"]
        assert models["problems"] == [] and server.client.get("/health")[1]["status"] == "ok"  # the normal course
        refused = dataclasses.replace(
            sound, challenger_version=fresh.version, challenger_score_problem="3 scores are NaN"
        )
        registry.save_evaluation(refused)
        time.sleep(1.5)  # two reload looks
        models = challenger_serving(False)
        assert not models["challenger"]["serving"] and arms() == {("champion", "v0001")}
        refusal = f"challenger {fresh.version} had its scores refused at its evaluation (3 scores are NaN)"
        assert models["problems"] == [f"{refusal}: it answers no A/B traffic"]
        registry.save_evaluation(dataclasses.replace(sound, challenger_version=fresh.version))
        assert challenger_serving(True)["challenger"]["serving"]
        assert arms() == {("champion", "v0001"), ("challenger", fresh.version)}


def test_health_and_models_describe_what_serves(served: Settings) -> None:
    with running(served) as server:
        server.client.post(FLIGHT)
        status, health = server.client.get("/health")
        assert status == 200 and health["status"] == "ok" and health["champion"] == "v0001"
        store = health["online_store"]
        assert store["version"] == current_store(served)
        assert store["newest_month"] == "2013-03" and store["facts_known_through"].startswith("2013-04-01")
        assert health["log"]["rows_written"] >= 0 and health["problems"] == []
        # every model's own health, the default model's also at the top level (clients of the one-model service)
        assert health["default"] == DELAY and list(health["models"]) == [m.name for m in CATALOG.models]
        assert {k: v for k, v in health["models"][DELAY].items() if k != "uptime_seconds"} == {
            "status": "ok",
            **{k: health[k] for k in ("champion", "fallback", "online_store", "log", "problems")},
        }
        assert health["fallback"] is None  # the champion alias's version serves
        assert health["log"]["folder"] == str(delay(served).predictions_dir)
        status, models = server.client.get(f"/models/{DELAY}")
        assert status == 200 and models["mode"] == "champion" and models["ab_share"] == 0.0
        assert models["positive"] == "delayed" and models["served"] and models["predict"] == f"/models/{DELAY}/predict"
        champion = models["champion"]
        assert champion["version"] == "v0001" and champion["serving"] and champion["test_month"] == "2013-03"
        assert 0.5 < champion["validation_auc"] < 1 and champion["registered_at"]
        assert models["challenger"] == {**models["challenger"], "version": "v0002", "serving": False}  # A/B is off
        assert models["shadow"] is None


def test_without_a_champion_or_an_online_store_the_service_says_what_to_do(tmp_path: Any) -> None:
    empty = Settings(data_dir=tmp_path / "empty", dagster_home=tmp_path / "empty" / "home")
    with running(empty) as server:
        status, body = server.client.post(FLIGHT)
        assert status == 503 and "make pipeline" in body["detail"] and DELAY in body["detail"]
        status, health = server.client.get("/health")
        assert (
            status == 503
            and health["status"] == "unavailable"
            and any("make pipeline" in p for p in health["problems"])
        )
        assert server.client.post({"carrier": 1})[0] == 422  # validation still answers first
        for name in server.served.services:  # every model says so, on its own route
            status, body = server.client.post(FLIGHT, f"/models/{name}/predict")
            assert status == 503 and name in body["detail"] and "make pipeline" in body["detail"], body
            assert health["models"][name]["status"] == "unavailable"


def test_a_request_whose_features_fail_is_logged_under_its_flight_and_month(
    served: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Computing the features fails (a bug in the store's code, injected here): the 500 is logged with the flight's
    key from its request fields, local departure time included, so the month's error rate counts it."""
    from mlops_assets.core.monitoring import online_rows_of
    from mlops_assets.core.online import OnlineStore
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES

    def broken(self: OnlineStore, requests: pl.DataFrame) -> pl.DataFrame:
        raise RuntimeError("injected: the store's feature code failed")

    monkeypatch.setattr(OnlineStore, "features", broken)
    flights = [_flight(flight=n) for n in range(1, MAX_ROWS + 2)]  # past the few-request path: the frame path
    with running(served) as server:
        status, failed = server.client.post(flights)
    assert status == 500 and "computing features failed" in failed["detail"]
    log = read_log(delay(served).predictions_dir).filter(pl.col("status") == "error")
    assert log.height == len(flights) and sorted(log["flight"].to_list()) == [f["flight"] for f in flights]
    row = log.filter(pl.col("flight") == 1).to_dicts()[0]
    assert (row["carrier"], row["origin"]) == (FLIGHT["carrier"], FLIGHT["origin"])
    assert str(row["sched_dep_local"]) == FLIGHT["scheduled_departure"].replace("T", " ") + ":00"
    assert online_rows_of(log, log.head(0), FLIGHT_FEATURES, "2013-03").height == len(flights)


def _register_broken_version(settings: Settings) -> str:
    """A real registry version whose stored encoder names a feature the store does not compute: it loads (checksum
    fine) but fails when it scores, as a model trained by other feature code would."""
    registry = Registry(delay(settings).registry_dir)
    source = registry.get("v0001")
    metadata = {
        k: v for k, v in source.metadata.items() if k not in ("version", "model_sha256", "registered_at", "run_id")
    }
    encoder = metadata["encoder"]
    metadata["encoder"] = {**encoder, "numeric": [*encoder["numeric"][:-1], "no_such_feature"]}
    return registry.register(registry.model_text("v0001"), metadata, registry.profile("v0001"), run_id=None).version


def test_a_failing_shadow_never_costs_the_answer_and_a_failing_champion_is_a_logged_error(served: Settings) -> None:
    registry = Registry(delay(served).registry_dir)
    broken = _register_broken_version(served)
    registry.set_alias("shadow", broken, "shadowed", "test: a shadow that fails")
    with running(served) as server:
        status, body = server.client.post(FLIGHT)
        assert status == 200 and body["prediction"]["model_version"] == "v0001"
        shadowed = body["prediction"]["request_id"]
        registry.set_alias("shadow", None, "cleared", "test")
        registry.set_alias("champion", broken, "promoted", "test: a champion that fails (forced in by hand)")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.client.get("/health")[1]["champion"] != broken:
            time.sleep(0.05)
        status, failed = server.client.post(FLIGHT)
    assert status == 500 and "scoring failed" in failed["detail"]  # an internal failure, not the request's fault
    log = read_log(delay(served).predictions_dir)
    shadow_row = log.filter((pl.col("request_id") == shadowed) & (pl.col("variant") == "shadow")).to_dicts()[0]
    assert shadow_row["status"] == "error" and "no_such_feature" in shadow_row["error"] and shadow_row["score"] is None
    error_rows = log.filter(pl.col("status") == "error").filter(pl.col("variant") == "champion").to_dicts()
    assert (
        len(error_rows) == 1
        and error_rows[0]["request_id"] in failed["detail"]
        and error_rows[0]["model_version"] == broken
    )
    assert error_rows[0]["served"] is False and str(error_rows[0]["prediction_time"]) == "2013-03-02 14:00:00"
