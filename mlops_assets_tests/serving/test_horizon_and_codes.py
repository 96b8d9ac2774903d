"""Requests past the online store's horizon and codes the store has never seen, on a real uvicorn.

A flight past the store's newest fact (``facts_known_through``) is scored with the lookups and windows as of that fact,
the answer says how old they are, and past ``max_feature_age_hours`` it is refused saying what to do. A well-formed
destination or carrier the store has not seen is answered, flagged in the answer and in the prediction log.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from mlops_assets.core.online import OnlineStore
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.settings import Settings
from mlops_assets.serving import ServeConfig
from mlops_assets_tests.serving.conftest import FLIGHT, SPEC, delay, running

NEW_YORK = ZoneInfo("America/New_York")
#: The features computed as of a time (the lookups and windows); the others are known in advance.
AS_OF_FEATURES = (
    *(o for lookup in SPEC.lookups for o in lookup.outputs),
    *(o for w in SPEC.windows for o in w.outputs),
)


def _horizon(health: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(health["online_store"]["facts_known_through"])


def _local(utc: datetime) -> str:
    """A request's ``scheduled_departure`` at EWR: the local time of the first whole minute at or after ``utc``."""
    minute = utc.replace(second=0, microsecond=0)
    if minute < utc:
        minute += timedelta(minutes=1)
    return minute.replace(tzinfo=UTC).astimezone(NEW_YORK).replace(tzinfo=None).isoformat(timespec="minutes")


def test_flights_past_the_horizon_get_the_features_known_at_the_horizon(served: Settings) -> None:
    """Just past the horizon and a day later: identical lookups and windows (those of the horizon), the answer says
    when they are from and how old; same weekday by override, so the whole vector and the score are identical."""
    config = ServeConfig(port=0, max_feature_age_hours=48)
    with running(served, config) as server:
        _, health = server.client.get("/health")
        horizon = _horizon(health)
        just_after = horizon + timedelta(minutes=1)
        flights = [
            {**FLIGHT, "scheduled_departure": _local(just_after), "overrides": {"sched_weekday": 3}},
            {
                **FLIGHT,
                "scheduled_departure": _local(just_after + timedelta(days=1)),
                "overrides": {"sched_weekday": 3},
            },
            {**FLIGHT, "scheduled_departure": _local(horizon - timedelta(hours=2))},  # inside the export
        ]
        answers = [server.client.post(flight) for flight in flights]
        status, batch = server.client.post(flights)
        service = server.service
        store = service.store.current
        assert store is not None
        plain = [{k: v for k, v in flight.items() if k != "overrides"} for flight in flights]
        requests, _ = service.schema.parse(json.dumps(plain).encode())
        features = store.value.store.features(service.schema.frame(requests))

    assert [code for code, _ in answers] == [200, 200, 200] and status == 200, (answers, batch)
    first, later, inside = (body["prediction"] for _, body in answers)
    assert first["features_as_of"] == later["features_as_of"] == horizon.isoformat()
    assert first["feature_age_hours"] == pytest.approx(1 / 60, abs=0.001)  # rounded to 3.6 s
    assert later["feature_age_hours"] == pytest.approx(24 + 1 / 60, abs=0.001)
    assert first["features_stale"] is True and later["features_stale"] is True
    assert first["probability"] == later["probability"]  # the same features throughout
    assert inside["features_stale"] is False and inside["feature_age_hours"] == 0.0
    assert inside["features_as_of"] < horizon.isoformat()
    assert [a["probability"] for a in batch["predictions"]] == [
        first["probability"],
        later["probability"],
        inside["probability"],
    ]

    rows = features.to_dicts()
    assert {c: rows[0][c] for c in AS_OF_FEATURES} == {c: rows[1][c] for c in AS_OF_FEATURES}
    assert rows[0]["prediction_time"] > horizon and rows[1]["prediction_time"] - rows[0][
        "prediction_time"
    ] == timedelta(days=1)
    assert rows[0]["carrier_flights_7d"] > 0 and rows[0]["route_flights_30d"] > 0  # what the store knows, not zeros


def test_a_flight_further_past_the_horizon_than_the_max_age_is_refused_saying_what_to_do(served: Settings) -> None:
    with running(served) as server:  # the default: 24 h
        _, health = server.client.get("/health")
        horizon = _horizon(health)
        inside_limit = {**FLIGHT, "scheduled_departure": _local(horizon + timedelta(hours=23))}
        too_old = {**FLIGHT, "scheduled_departure": _local(horizon + timedelta(hours=25))}
        ok_status, ok = server.client.post(inside_limit)
        status, body = server.client.post(too_old)
        batch_status, batch = server.client.post(
            [inside_limit, too_old, {**FLIGHT, "scheduled_departure": "2014-06-01T10:00"}]
        )
    assert ok_status == 200 and ok["prediction"]["feature_age_hours"] == pytest.approx(23, abs=0.02)
    assert status == 422, body
    assert [e["field"] for e in body["errors"]] == ["scheduled_departure"]
    detail = body["detail"]
    assert "25.0 h past the newest facts" in detail and horizon.isoformat(timespec="minutes") in detail
    assert "mlops replay --month" in detail and "make pipeline THROUGH=" in detail and "older than 24 h" in detail
    assert batch_status == 422 and [e["field"] for e in batch["errors"]] == [
        "[1].scheduled_departure",
        "[2].scheduled_departure",
    ], batch
    log = read_log(delay(served).predictions_dir)
    assert log["request_id"].to_list() == [ok["prediction"]["request_id"]]  # refusals are not predictions


def test_a_flight_before_the_stores_facts_begin_is_refused_not_answered_from_nothing(served: Settings) -> None:
    """The store holds March 2013 and the 35 days before it: a flight of February 20th would get windows that miss
    their first days (counted as days without delays), one of 2000 no facts at all."""
    with running(served) as server:
        first_status, first = server.client.post({**FLIGHT, "scheduled_departure": "2013-03-01T06:00"})
        statuses = [
            server.client.post({**FLIGHT, "scheduled_departure": when})
            for when in ("2013-02-20T09:00", "2000-01-01T09:00")
        ]
    assert first_status == 200, first
    for status, body in statuses:
        assert status == 422 and [e["field"] for e in body["errors"]] == ["scheduled_departure"], body
        assert "serves flights from 2013-03-01T00:00 (its newest month, 2013-03" in body["detail"], body["detail"]
        assert "flight_delay/batch_predictions" in body["detail"]
    log = read_log(delay(served).predictions_dir)
    assert log["request_id"].to_list() == [first["prediction"]["request_id"]]


def test_unknown_but_well_formed_codes_are_answered_flagged_and_logged(served: Settings) -> None:
    new_route = {**FLIGHT, "dest": "ZZZ"}
    new_airline = {**FLIGHT, "carrier": "Q9", "dest": "ZZZ"}
    with running(served) as server:
        answers = [server.client.post(flight)[1]["prediction"] for flight in (FLIGHT, new_route, new_airline)]
        status, batch = server.client.post([new_route, FLIGHT])
    assert [a["unknown_codes"] for a in answers] == [[], ["dest"], ["carrier", "dest"]]
    assert all(0.0 < a["probability"] < 1.0 for a in answers)
    assert status == 200 and [a["unknown_codes"] for a in batch["predictions"]] == [["dest"], []]

    log = read_log(delay(served).predictions_dir)
    flagged = dict(zip(log["request_id"], log["unknown_codes"], strict=True))
    assert [flagged[a["request_id"]] for a in answers] == [None, "dest", "carrier,dest"]
    # what monitoring counts: the share of answered requests with a code the store has never seen
    assert log.filter(pl.col("served"))["unknown_codes"].is_not_null().sum() == 3


def test_a_route_never_flown_from_its_origin_is_flagged_though_both_airports_are_known(served: Settings) -> None:
    """A destination the store knows, flown only from another New York airport: its route's distance and windows are
    missing, which the model never saw in training. Answered, and flagged as `route` (not as `dest`: that is known)."""
    routes = OnlineStore.load(SPEC, delay(served).online_store_dir).reference["routes"]
    from_origin = set(routes.filter(pl.col("origin") == FLIGHT["origin"])["dest"])
    elsewhere = sorted(set(routes.filter(pl.col("origin") != FLIGHT["origin"])["dest"]) - from_origin)
    assert elsewhere, "the served data holds a destination flown only from another airport"
    with running(served) as server:
        status, body = server.client.post({**FLIGHT, "dest": elsewhere[0]})
    assert status == 200 and body["prediction"]["unknown_codes"] == ["route"], body
    log = read_log(delay(served).predictions_dir)
    assert log.filter(pl.col("served"))["unknown_codes"].to_list() == ["route"]
