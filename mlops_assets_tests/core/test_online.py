"""No training/serving skew: a flight's online feature vector, computed at request time from the exported online
store by the same point-in-time engine, equals its row in ``features.flight_features``."""

import dataclasses
import json
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mlops_assets.core.features import compute_features
from mlops_assets.core.online import CURRENT, SMALL_BATCH, OnlineStore, build_export, current_version, write_export
from mlops_assets.core.settings import Settings
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_FEATURES
from mlops_assets_tests.conftest import MONTHLY, load_month

SPEC = FLIGHT_FEATURES
MONTHS = ["2013-01", "2013-02"]


@pytest.fixture(scope="module")
def warehouse_two_months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("online")
    settings = Settings(data_dir=root, dagster_home=root / "home")
    replay_months(settings.landing_dir, MONTHS, every=10)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        load_month(conn, settings, None, ["airlines", "airports", "planes"])
        for month in MONTHS:
            load_month(conn, settings, month, MONTHLY)
    return settings.warehouse_path


def _requests(features: pl.DataFrame) -> pl.DataFrame:
    """What a client sends for these flights: the request fields only."""
    return features.select(
        "carrier", "flight", "origin", "dest", pl.col("sched_dep_local").alias("scheduled_departure"), "tailnum"
    )


def _assert_same(offline: pl.DataFrame, online: pl.DataFrame) -> None:
    assert online.height == offline.height
    for column in (*SPEC.id_columns, SPEC.time_column, *SPEC.features):
        left, right = offline[column], online[column]
        same = (left == right) | (left.is_null() & right.is_null())
        assert same.fill_null(False).all(), (
            column,
            offline.filter(~same.fill_null(False)).head(3),
            online.filter(~same.fill_null(False))[column].head(3),
        )


def test_online_vectors_equal_offline_features(warehouse_two_months: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        offline = compute_features(conn, SPEC, "2013-02")
        export = build_export(conn, SPEC, "2013-02")
    root = tmp_path / "online_store"
    version = write_export(export, root)
    store = OnlineStore.load(SPEC, root)
    assert store.version == version == current_version(root)

    # every February flight, as one batch and in a shuffled order (results come back in request order)
    shuffled = offline.sample(fraction=1.0, shuffle=True, seed=3)
    _assert_same(shuffled, store.features(_requests(shuffled)))
    # in small batches and one at a time, as requests arrive (the per-key binary-search path)
    for start in range(0, offline.height, SMALL_BATCH):
        chunk = shuffled.slice(start, SMALL_BATCH)
        _assert_same(chunk, store.features(_requests(chunk)))
    for row in range(0, offline.height, 97):
        one = offline.slice(row, 1)
        _assert_same(one, store.features(_requests(one)))


def test_a_request_after_the_export_sees_only_facts_known_by_then(warehouse_two_months: Path) -> None:
    """A flight a day after the newest data: windows count only what the export knows, weather older than 3 h is
    missing (as offline), and nothing from the future can exist."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        store = OnlineStore.from_export(SPEC, build_export(conn, SPEC, "2013-02"))
    request = pl.DataFrame(
        {"carrier": ["UA"], "flight": [1545], "origin": ["EWR"], "dest": ["IAH"], "tailnum": ["N14228"]}
    ).with_columns(pl.datetime(2013, 3, 2, 9, 0).alias("scheduled_departure"))
    [row] = store.features(request).to_dicts()
    assert row["temp"] is None and row["origin_departures_3h"] == 0.0  # nothing known in the 3 h before
    assert row["carrier_flights_7d"] > 0 and row["route_flights_30d"] > 0  # last week's outcomes are known
    assert row["distance"] == 1400.0 and row["sched_hour"] == 9 and row["sched_weekday"] == 6


def test_the_store_refuses_another_feature_set_version(warehouse_two_months: Path, tmp_path: Path) -> None:
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        export = build_export(conn, SPEC, "2013-02")
    root = tmp_path / "online_store"
    version = write_export(export, root)
    manifest = root / "versions" / version / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "feature_set_version": "older"}))
    with pytest.raises(ValueError, match="materialize features/online_store again"):
        OnlineStore.load(SPEC, root)
    assert (root / CURRENT).read_text() == version
    with pytest.raises(ValueError, match="declares no online spec"):
        build_export(duckdb.connect(), dataclasses.replace(SPEC, online=None), "2013-02")


def test_request_rows_from_the_index_equal_the_frame_path(warehouse_two_months: Path) -> None:
    """The per-request path (dict lookups) and the batch path (joins) give the same entity rows, daylight-saving
    edges included: an ambiguous hour takes its first occurrence, a skipped one has no prediction time."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        store = OnlineStore.from_export(SPEC, build_export(conn, SPEC, "2013-02"))
    assert SPEC.online is not None and SPEC.online.entity_rows is not None
    requests = pl.DataFrame(
        {
            "carrier": ["UA", "B6", "AA", "ZZ"],
            "flight": [1545, 27, 1, 9],
            "origin": ["EWR", "JFK", "LGA", "JFK"],
            "dest": ["IAH", "SJU", "ORD", "NOWHERE"],
            "tailnum": ["N14228", None, "NOPLANE", "N14228"],
            "scheduled_departure": [
                datetime(2013, 2, 20, 9, 0),
                datetime(2013, 11, 3, 1, 30),
                datetime(2013, 3, 10, 2, 30),
                datetime(2013, 7, 4, 23, 59),
            ],
        }
    )
    by_frames = SPEC.online.entities(requests, store.reference)
    by_index = SPEC.online.entity_rows(requests.to_dicts(), store.index)
    assert by_index.equals(by_frames, null_equal=True), (by_index, by_frames)
    assert by_index["prediction_time"].to_list()[1:3] == [datetime(2013, 11, 3, 5, 30), None]
