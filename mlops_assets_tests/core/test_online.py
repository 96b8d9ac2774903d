"""No training/serving skew: a flight's online feature vector, computed at request time from the exported online
store by the same point-in-time engine, equals its row in ``features.flight_features``; and a flight past the
export's horizon (its newest fact) gets the lookups and windows the offline engine gives at the horizon."""

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.catalog import CATALOG
from mlops_assets.core.features import compute_features, context_start_for, covered, feature_rows, used_params
from mlops_assets.core.features.pit import (
    AsOfLookup,
    add_lookup,
    add_prepared_lookup,
    add_trailing_windows,
    hours_from_micros,
    lookup_candidates,
)
from mlops_assets.core.landing import month_key
from mlops_assets.core.online import (
    CURRENT,
    KEYED_WINDOW_ROWS,
    SMALL_BATCH,
    OnlineStore,
    _KeyedLookup,
    build_export,
    current_version,
    write_export,
)
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.core.store import query_frame
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


def _assert_same(
    offline: pl.DataFrame, online: pl.DataFrame, columns: tuple[str, ...] | None = None, spec: FeatureTableSpec = SPEC
) -> None:
    """Same values, nulls included, in ``columns`` (default: the ids, the prediction time and every feature)."""
    assert online.height == offline.height
    for column in columns or (*spec.id_columns, spec.time_column, *spec.features):
        # a feature the request mapping (the spec's OnlineSpec) does not compute: named, not a bare polars error
        assert column in online.columns, f"{column!r}: not computed online; the feature table's OnlineSpec lacks it"
        left, right = offline[column], online[column]
        same = (left == right) | (left.is_null() & right.is_null())
        assert same.fill_null(False).all(), (
            column,
            offline.filter(~same.fill_null(False)).head(3),
            online.filter(~same.fill_null(False))[column].head(3),
        )


@pytest.mark.parametrize("spec", [t for t in CATALOG.feature_tables if t.online], ids=lambda s: s.name)
def test_online_vectors_equal_offline_features(
    warehouse_two_months: Path, tmp_path: Path, spec: FeatureTableSpec
) -> None:
    """Every served feature table (it held flight_features alone): what a request gets is what training saw."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        offline = compute_features(conn, spec, "2013-02")
        export = build_export(conn, spec, "2013-02")
    root = tmp_path / "online_store"
    version = write_export(export, root)
    store = OnlineStore.load(spec, root)
    assert store.version == version == current_version(root)

    # every February flight, as one batch and in a shuffled order (results come back in request order)
    shuffled = offline.sample(fraction=1.0, shuffle=True, seed=3)
    _assert_same(shuffled, store.features(_requests(shuffled)), spec=spec)
    # in small batches and one at a time, as requests arrive (the per-key binary-search path)
    for start in range(0, offline.height, SMALL_BATCH):
        chunk = shuffled.slice(start, SMALL_BATCH)
        _assert_same(chunk, store.features(_requests(chunk)), spec=spec)
    for row in range(0, offline.height, 97):
        one = offline.slice(row, 1)
        _assert_same(one, store.features(_requests(one)), spec=spec)


def _as_of_outputs(spec: FeatureTableSpec) -> tuple[str, ...]:
    """The features the engine adds as of a time (lookups and windows); the others are known in advance."""
    return (*(o for lookup in spec.lookups for o in lookup.outputs), *(o for w in spec.windows for o in w.outputs))


def _offline_at(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, month: str, at: datetime) -> pl.DataFrame:
    """The offline engine (as ``compute_features`` runs it) for ``month``'s flights, with every lookup and window
    evaluated at ``at`` instead of each flight's own prediction time."""
    start = context_start_for(spec, month)
    params = {"context_first": month_key(start.year, start.month), "target_last": month, "context_start": start}
    rows = feature_rows(conn, spec, params)
    targets = rows.filter((pl.col("_month") == month) & covered(spec)).with_columns(
        pl.lit(at, dtype=pl.Datetime("us")).alias(spec.time_column)
    )
    for lookup in spec.lookups:
        right = rows if lookup.sql is None else query_frame(conn, lookup.sql, used_params(lookup.sql, params))
        targets = add_lookup(targets, right, lookup, spec.time_column)
    return add_trailing_windows(rows, targets, spec.windows, spec.time_column)


@pytest.mark.parametrize("spec", [t for t in CATALOG.feature_tables if t.online], ids=lambda s: s.name)
def test_requests_past_the_horizon_get_the_offline_features_at_the_horizon(
    warehouse_two_months: Path, spec: FeatureTableSpec
) -> None:
    """Every February flight asked about five and six weeks later (same weekday and hour, all past the export's
    newest fact): its lookups and windows equal the offline engine's at the horizon, its features known in advance
    stay its own, in one large batch (the as-of joins), in small batches and one at a time (binary search)."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        offline = compute_features(conn, spec, "2013-02")
        store = OnlineStore.from_export(spec, build_export(conn, spec, "2013-02"))
        assert store.horizon is not None and datetime(2013, 3, 1) < store.horizon < datetime(2013, 3, 2)
        at_horizon = _offline_at(conn, spec, "2013-02", store.horizon)
    advance = tuple(c for c in dict.fromkeys((*spec.id_columns, *spec.features)) if c not in _as_of_outputs(spec))
    joined = offline.select(*advance).join(
        at_horizon.select(*spec.key, *_as_of_outputs(spec)), on=list(spec.key), how="left"
    )
    # no February flight leaves at 02:xx, so none moves into the spring-forward gap (it would have no prediction time)
    expected = pl.concat(
        [joined.with_columns(pl.col("sched_dep_local") + timedelta(weeks=weeks)) for weeks in (5, 6)]
    ).sample(fraction=1.0, shuffle=True, seed=5)
    assert expected.height > KEYED_WINDOW_ROWS and joined.height == offline.height == at_horizon.height
    requests = _requests(expected)
    columns = (*advance, *_as_of_outputs(spec))
    online = store.features(requests)
    assert (online[spec.time_column] > store.horizon).all()  # each keeps its own prediction time
    _assert_same(expected, online, columns)
    for start in range(0, expected.height, SMALL_BATCH):
        _assert_same(expected.slice(start, SMALL_BATCH), store.features(requests.slice(start, SMALL_BATCH)), columns)
    for row in range(0, expected.height, 97):
        _assert_same(expected.slice(row, 1), store.features(requests.slice(row, 1)), columns)


def test_a_request_after_the_export_sees_only_facts_known_by_then(warehouse_two_months: Path) -> None:
    """A flight past the newest data gets the lookups and windows as of the export's horizon, whether it departs
    just after it or a day later: windows count only what the export knows (never hours without data as hours
    without delays), the weather is the newest observation known then; its own schedule, route and plane stay."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        export = build_export(conn, SPEC, "2013-02")
    store = OnlineStore.from_export(SPEC, export)
    assert store.horizon is not None and store.horizon == export.events[SPEC.time_column].max()
    # EWR's departures in the 3 h before the horizon (the export's newest scheduled departure), by brute force
    left = export.events.filter(
        (pl.col("origin") == "EWR")
        & pl.col("dep_known_utc").is_between(store.horizon - timedelta(hours=3), store.horizon, closed="left")
    ).height
    assert left > 0  # late-evening departures: the count is what the export knows, not zero
    just_after = store.horizon + timedelta(minutes=1) - timedelta(hours=5)  # EWR local time (EST) of that instant
    departures = [just_after, just_after + timedelta(days=1), datetime(2013, 3, 2, 9, 0)]
    request = pl.DataFrame(
        {"carrier": ["UA"] * 3, "flight": [1545] * 3, "origin": ["EWR"] * 3, "dest": ["IAH"] * 3}
    ).with_columns(pl.lit("N14228").alias("tailnum"), pl.Series("scheduled_departure", departures))
    rows = store.features(request).to_dicts()
    for row in rows:
        assert {c: row[c] for c in _as_of_outputs(SPEC)} == {c: rows[0][c] for c in _as_of_outputs(SPEC)}
        assert row["temp"] is not None  # the newest observation the export knows, under 3 h before the horizon
        assert row["origin_departures_3h"] == left  # what left before the horizon, nothing after
        assert row["carrier_flights_7d"] > 0 and row["route_flights_30d"] > 0  # last week's outcomes are known
        assert row["distance"] == 1400.0 and row[SPEC.time_column] > store.horizon
    assert [r["sched_weekday"] for r in rows] == [d.isoweekday() for d in departures]
    assert store.as_of(rows[1][SPEC.time_column]) == store.horizon
    assert store.feature_age_hours(rows[1][SPEC.time_column]) == pytest.approx(24 + 1 / 60)
    assert store.feature_age_hours(store.horizon - timedelta(hours=1)) == 0.0


def test_the_same_facts_in_another_row_order_are_the_same_version(warehouse_two_months: Path, tmp_path: Path) -> None:
    """DuckDB's threads return rows in varying order: a rerun of the same month must not add a version."""
    with duckdb.connect(str(warehouse_two_months), read_only=True) as conn:
        export = build_export(conn, SPEC, "2013-02")
    shuffled = dataclasses.replace(
        export,
        events=export.events.sample(fraction=1.0, shuffle=True, seed=1),
        lookups=[f.sample(fraction=1.0, shuffle=True, seed=2) for f in export.lookups],
        reference={n: f.sample(fraction=1.0, shuffle=True, seed=3) for n, f in export.reference.items()},
    )
    root = tmp_path / "online_store"
    assert write_export(export, root) == write_export(shuffled, root)
    assert len(list((root / "versions").iterdir())) == 1


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
    # the service's few-request path: the same rows as dicts, value for value and type for type
    assert SPEC.online.entity_dicts is not None
    as_dicts = SPEC.online.entity_dicts(requests.to_dicts(), store.index)
    expected = by_index.to_dicts()
    assert as_dicts == expected
    assert [{k: type(v) for k, v in row.items()} for row in as_dicts] == [
        {k: type(v) for k, v in row.items()} for row in expected
    ]


@pytest.mark.parametrize("max_age", [timedelta(hours=72), None], ids=["max_age", "no_max_age"])
def test_the_per_key_lookup_equals_the_as_of_join_for_every_key_and_unknown_value(max_age: timedelta | None) -> None:
    """The few-request path (`_KeyedLookup`: each key's rows as slices of one sorted frame) gives what the offline
    as-of join gives, for keys in any order, a key with one row, a null key, a request without a prediction time
    (a local time that does not exist) and a value whose own known-at time is null (unknown: no value, as offline;
    a NaN there had compared as known)."""
    lookup = AsOfLookup(
        name="previous leg",
        by=("tail",),
        known_at="sched",
        columns={"delay": "prev_delay"},
        max_age=max_age,
        value_known_at={"prev_delay": "left_at"},
        age_hours="prev_age_h",
    )
    t = datetime(2013, 1, 1)
    right = pl.DataFrame(
        {
            "tail": ["B", "A", "B", "A", "C", None, "A"],
            "sched": [t + timedelta(hours=h) for h in (5, 1, 2, 3, 4, 6, 30)],
            "delay": [7.0, 1.0, 2.0, 3.0, 4.0, 6.0, 9.0],
            "left_at": [t + timedelta(hours=h) for h in (5, 1, 2, 3, 4, 6)] + [None],
        }
    )
    candidates = lookup_candidates(right, lookup)
    targets = pl.DataFrame(
        {
            "tail": ["A", "B", "A", "C", "A", "B", None, "D", "A", "B", "A", "A"],
            # hours, and times with seconds and a fraction of one (a request may carry them): ages to the last bit
            "at": [t + timedelta(hours=h) for h in (0, 3, 2, 5, 31, 6, 7, 8, 200)]
            + [None, t + timedelta(hours=1, seconds=24), t + timedelta(hours=3, minutes=54, seconds=34.25)],
        },
        schema={"tail": pl.String, "at": pl.Datetime("us")},
    ).sort("at")
    expected = add_prepared_lookup(targets, candidates, lookup, "at").select(lookup.outputs)
    keyed = _KeyedLookup(candidates, lookup)
    times = targets["at"].dt.cast_time_unit("us").cast(pl.Int64).to_numpy()
    got = pl.DataFrame(list(keyed.columns(targets.to_dicts(), times).values()))
    assert_frame_equal(got.select(lookup.outputs), expected, check_exact=True)
    unknown = expected.filter(targets["at"] > t + timedelta(hours=30))["prev_delay"]
    assert unknown.to_list() == [None, None]  # A after 30 h: its newest leg's departure is unknown
    assert expected["prev_delay"][0] is None  # no prediction time: nothing found


def test_a_lookup_age_in_hours_is_the_as_of_join_s_to_the_last_bit() -> None:
    """`hours_from_micros` (the per-key paths: a few requests, the service's rows) against the as-of join's
    expression, over spans with seconds and fractions of one, where an exact division differed in the last digit."""
    spans = np.random.default_rng(13).integers(0, 72 * 3_600_000_000, 20_000)
    joined = (pl.Series(spans, dtype=pl.Duration("us")).dt.total_seconds(fractional=True) / 3600.0).to_list()
    assert [hours_from_micros(int(span)) for span in spans] == joined
    assert hours_from_micros(3_600_000_000) == 1.0


def test_a_route_s_distance_is_its_newest() -> None:
    """The online store's route distance is the one the route's next flights carry, its newest: the offline features
    take each flight's own, and JFK-EGE went from 1747 to 1746 miles in 2013 (the longest ever had been served)."""
    assert SPEC.online is not None
    with duckdb.connect() as conn:
        conn.execute("CREATE SCHEMA validated")
        conn.execute(
            "CREATE TABLE validated.flights AS SELECT * FROM (VALUES "
            "('JFK', 'EGE', 1747, '2013-02-20T17:00:00Z'), ('JFK', 'EGE', 1746, '2013-03-02T17:00:00Z'), "
            "('JFK', 'EGE', 1746, '2013-03-09T17:00:00Z'), ('EWR', 'ORD', 719, '2013-03-01T12:00:00Z')) "
            "AS t(origin, dest, distance, time_hour)"
        )
        routes = query_frame(conn, SPEC.online.reference_sql["routes"]).sort("origin", "dest")
    assert routes.rows() == [("EWR", "ORD", 719.0), ("JFK", "EGE", 1746.0)]
