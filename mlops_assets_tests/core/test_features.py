"""Point-in-time features: no future leaks in, a month built alone equals a full build, reruns replace."""

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.catalog import CATALOG
from mlops_assets.core.features import (
    FeatureBuildError,
    as_subquery,
    compute_features,
    entity_condition,
    feature_set_version,
    one_row_problems,
    write_month,
    write_months,
)
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.models.flight_delay import FLIGHT_FEATURES
from mlops_assets_tests.conftest import BuiltData

MONTHS = ["2013-01", "2013-02", "2013-03"]
#: Scheduled departure (UTC) of a flight, from the validated columns.
SCHEDULED = "strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') + to_minutes(minute)"


#: Every registered feature table over the flights feed: the point-in-time tests below hold each of them, a model
#: added to the catalog included (they held only flight_features, and a new model's own leak went through).
FLIGHT_TABLES = [spec for spec in CATALOG.feature_tables if "flights" in spec.inputs]


@pytest.fixture
def store(settings: Settings, built_data: BuiltData) -> Iterator[duckdb.DuckDBPyConnection]:
    with built_data.warehouse(settings, tuple(MONTHS)) as conn:
        yield conn


@pytest.mark.parametrize("spec", FLIGHT_TABLES, ids=lambda s: s.name)
@pytest.mark.parametrize("early", [40, 100])
def test_a_flights_own_departure_never_reaches_its_own_features(
    store: duckdb.DuckDBPyConnection, early: int, spec: FeatureTableSpec
) -> None:
    """A flight that leaves early has left before its prediction time (its scheduled departure), but a request for it
    never knows how it left: its own departure and outcome are no facts of its own features. A busy hour's short
    on-time flight is made to leave (and land) early: its features do not move (only its label may). Counted at its
    actual departure, its own delay joined its origin's 3-hour window (15,332 of March's 28,594 rows, at a delay rate of
    4% against 46%); 100 minutes early it also lands before its own scheduled departure, and its own label joined its
    carrier and route windows."""
    [(carrier, flight, origin, day, hour)] = store.execute(
        "SELECT carrier, flight, origin, day, hour FROM validated.flights WHERE _month = '2013-02' AND dep_delay = 0 "
        "AND tailnum IS NOT NULL AND hour BETWEEN 9 AND 17 AND air_time < 60 "
        "ORDER BY day, hour, carrier, flight LIMIT 1"
    ).fetchall()
    mine = (pl.col("carrier") == carrier) & (pl.col("flight") == flight) & (pl.col("origin") == origin)
    mine = mine & (pl.col("sched_dep_local").dt.day() == day) & (pl.col("sched_dep_local").dt.hour() == hour)
    label = [spec.label, spec.label_known_at]
    before = compute_features(store, spec, "2013-02").filter(mine)
    store.execute(
        "UPDATE validated.flights SET dep_delay = -?, arr_delay = arr_delay - ? "
        "WHERE _month = '2013-02' AND carrier = ? AND flight = ? AND origin = ? AND day = ? AND hour = ?",
        [early, early, carrier, flight, origin, day, hour],
    )
    after = compute_features(store, spec, "2013-02").filter(mine)
    assert before.height == 1
    if spec is FLIGHT_FEATURES:  # a busy hour: the window the departure would join has events
        assert before["origin_departures_3h"][0] > 0
    assert_frame_equal(before.drop(label), after.drop(label))


@pytest.mark.parametrize("spec", FLIGHT_TABLES, ids=lambda s: s.name)
def test_features_before_t_do_not_change_when_the_future_changes(
    store: duckdb.DuckDBPyConnection, spec: FeatureTableSpec
) -> None:
    cutoff = datetime(2013, 2, 15, 12, 0)
    before = compute_features(store, spec, "2013-02")
    # What happens after the cutoff changes:
    # 1. flights scheduled before it but still on the ground at it leave an hour later (their own delay is future);
    store.execute(
        f"""UPDATE validated.flights SET dep_delay = dep_delay + 60, arr_delay = arr_delay + 60
            WHERE {SCHEDULED} < ? AND {SCHEDULED} + to_minutes(CAST(dep_delay AS BIGINT)) > ?""",
        [cutoff, cutoff],
    )
    # 2. flights in the air at it land two hours later (their own label is future);
    store.execute(
        f"""UPDATE validated.flights SET arr_delay = arr_delay + 120
            WHERE {SCHEDULED} < ? AND {SCHEDULED} + to_minutes(CAST(dep_delay AS BIGINT)) <= ?
              AND {SCHEDULED} + to_minutes(CAST(dep_delay + air_time AS BIGINT)) > ?""",
        [cutoff, cutoff, cutoff],
    )
    # 3. flights scheduled 2 hours or more after it get other delays (non-negative: none leaves before the cutoff),
    #    new flights are added, and later weather changes.
    future = cutoff + timedelta(hours=2)
    store.execute(
        f"""UPDATE validated.flights
            SET dep_delay = (flight * 37) % 600, arr_delay = (flight * 53) % 700 - 60
            WHERE {SCHEDULED} >= ?""",
        [future],
    )
    store.execute(
        f"""INSERT INTO validated.flights
            SELECT * REPLACE (flight + 5000 AS flight, _row + 100000 AS _row) FROM validated.flights
            WHERE {SCHEDULED} >= ? AND _month = '2013-02'""",
        [future],
    )
    store.execute(
        "UPDATE validated.weather SET temp = temp + 30, wind_speed = 0, visib = 0 "
        "WHERE strptime(time_hour, '%Y-%m-%dT%H:%M:%SZ') > ?",
        [cutoff],
    )
    after = compute_features(store, spec, "2013-02")

    past = pl.col(spec.time_column) < cutoff
    label = [spec.label, spec.label_known_at]
    assert before.filter(past).height > 1000
    assert_frame_equal(before.filter(past).drop(label), after.filter(past).drop(label))
    # and the test has teeth: some labels of flights before the cutoff changed, and later features saw the new future
    assert (before.filter(past)[spec.label_known_at] != after.filter(past)[spec.label_known_at]).sum() >= 1
    later = before.filter(~past).join(after, on=list(spec.key), suffix="_new")
    changed = {f: int((later[f] != later[f"{f}_new"]).sum()) for f in spec.features if f not in spec.key}
    assert changed["temp"] > 100 and sum(changed.values()) > 1000, changed


def _stored(store: duckdb.DuckDBPyConnection, spec: FeatureTableSpec = FLIGHT_FEATURES) -> pl.DataFrame:
    order = ", ".join(f'"{c}"' for c in (spec.time_column, *spec.key))
    return store.sql(f"SELECT * FROM features.{spec.name} ORDER BY {order}").pl()


@pytest.mark.parametrize("spec", CATALOG.feature_tables, ids=lambda s: s.name)
def test_a_month_built_alone_equals_the_full_build(store: duckdb.DuckDBPyConnection, spec: FeatureTableSpec) -> None:
    """Every registered feature table (a model added to the catalog is held to it too): a month built on its own,
    reading only its ``lookback_days`` of context, equals the same month of a build over everything (a look-back
    shorter than a window or a lookup's reach would differ)."""
    for month in MONTHS:
        write_month(store, spec, month)
    incremental = _stored(store, spec)
    full = compute_features(store, spec, MONTHS[0], MONTHS[-1], context_start=datetime(2000, 1, 1))
    full = full.sort(spec.time_column, *spec.key)
    in_scope = f"WHERE {entity_condition(spec)}" if spec.entity_filter else ""
    covered = store.execute(f"SELECT count(*) FROM validated.{spec.inputs[0]} {in_scope}").fetchall()[0][0]
    assert incremental.height == full.height == covered
    assert_frame_equal(incremental, full)
    # several months written in one pass (what a multi-month run does) give the same table
    assert write_months(store, spec, MONTHS, chunk=2) == {m: full.filter(pl.col("_month") == m).height for m in MONTHS}
    assert_frame_equal(_stored(store, spec), full)


def test_a_flight_without_a_tail_number_gets_no_delay_features_but_stays_an_event(
    store: duckdb.DuckDBPyConnection,
) -> None:
    """The data records no aircraft only for cancelled flights: such a row's missing plane facts and previous leg
    would give its label away (a cancellation counts as delayed). It gets no feature row, so the delay model never
    trains on, scores or is evaluated on it, and every other flight's features are what they were without the filter:
    its cancellation still counts in the windows."""
    rows, cancelled = store.execute(
        "SELECT count(*), count(*) FILTER (dep_time IS NULL) FROM validated.flights WHERE tailnum IS NULL"
    ).fetchall()[0]
    assert rows > 0 and rows == cancelled
    assert FLIGHT_FEATURES.entity_filter == "tailnum IS NOT NULL"
    filtered = compute_features(store, FLIGHT_FEATURES, "2013-02", "2013-03")
    unfiltered = compute_features(store, dataclasses.replace(FLIGHT_FEATURES, entity_filter=""), "2013-02", "2013-03")
    assert filtered["tailnum"].null_count() == 0 and unfiltered["tailnum"].null_count() > 0
    same = unfiltered.filter(pl.col("tailnum").is_not_null()).drop("feature_set_version")
    assert_frame_equal(filtered.drop("feature_set_version"), same)
    assert feature_set_version(FLIGHT_FEATURES) != feature_set_version(
        dataclasses.replace(FLIGHT_FEATURES, entity_filter="")
    )


def test_a_feature_sql_ending_in_a_semicolon_and_a_comment_builds_as_without_them(
    store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The entity filter wraps the SQL in a subquery: its closing semicolon and any comment after it are left out
    (found by DuckDB's tokenizer, so a semicolon inside a string or a comment stays), and two statements are refused."""
    edited = tmp_path / "with_semicolon.sql"
    edited.write_text(FLIGHT_FEATURES.sql.rstrip() + "; -- the flights of the month\n/* end */\n")
    with_semicolon = dataclasses.replace(FLIGHT_FEATURES, sql_path=edited)
    assert_frame_equal(  # the feature-set version follows the SQL's text, so it differs
        compute_features(store, with_semicolon, "2013-02", "2013-03").drop("feature_set_version"),
        compute_features(store, FLIGHT_FEATURES, "2013-02", "2013-03").drop("feature_set_version"),
    )
    assert as_subquery("SELECT ';' AS a -- ;\n;") == "SELECT ';' AS a -- ;\n"
    assert as_subquery("SELECT 1 AS a /* ; */") == "SELECT 1 AS a /* ; */"
    with pytest.raises(ValueError, match="one SELECT statement"):
        as_subquery("SELECT 1; SELECT 2")
    # the entity filter's own comment ends on its line; a semicolon in it is refused, naming the table
    commented = dataclasses.replace(FLIGHT_FEATURES, entity_filter="tailnum IS NOT NULL -- planes only")
    assert_frame_equal(
        compute_features(store, commented, "2013-02", "2013-03").drop("feature_set_version"),
        compute_features(store, FLIGHT_FEATURES, "2013-02", "2013-03").drop("feature_set_version"),
    )
    with pytest.raises(ValueError, match="flight_features: entity_filter .* without a semicolon"):
        compute_features(
            store, dataclasses.replace(FLIGHT_FEATURES, entity_filter="tailnum IS NOT NULL;"), "2013-02", "2013-03"
        )


def test_a_build_that_breaks_the_one_row_rule_is_rolled_back_never_published(
    store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Feature SQL edited into a join that repeats rows: the build raises before it commits, and readers (a training
    set, the monitoring) still see the last good months, as the design's "publish on success" asks."""
    write_months(store, FLIGHT_FEATURES, MONTHS)
    good = _stored(store)
    edited = tmp_path / "repeating.sql"
    edited.write_text(
        f"SELECT * FROM (\n{FLIGHT_FEATURES.sql}\n)\nUNION ALL\nSELECT * FROM (\n{FLIGHT_FEATURES.sql}\n) WHERE carrier = 'UA'"
    )
    broken = dataclasses.replace(FLIGHT_FEATURES, sql_path=edited)
    with pytest.raises(FeatureBuildError, match=r"not published .*2013-02: \d+ duplicate keys") as raised:
        write_months(store, broken, MONTHS)
    assert all("duplicate keys" in p or "feature rows for" in p for p in raised.value.problems)
    assert_frame_equal(_stored(store), good)  # the last good build, untouched


def test_rerunning_a_month_replaces_it(store: duckdb.DuckDBPyConnection) -> None:
    first = write_month(store, FLIGHT_FEATURES, "2013-02")
    write_month(store, FLIGHT_FEATURES, "2013-02")
    counts = store.execute(
        "SELECT count(*), count(DISTINCT (carrier, flight, origin, sched_dep_local)) FROM features.flight_features"
    ).fetchone()
    assert counts == (first.height, first.height)


@pytest.mark.parametrize("spec", CATALOG.feature_tables, ids=lambda s: s.name)
def test_labels_become_known_only_after_the_prediction_time(
    store: duckdb.DuckDBPyConnection, spec: FeatureTableSpec
) -> None:
    frame = compute_features(store, spec, "2013-02")
    assert frame.filter(pl.col(spec.label_known_at) < pl.col(spec.time_column)).height == 0
    assert spec.label not in spec.features and spec.label_known_at not in spec.features


def test_the_delay_label_has_real_signal_and_rates(store: duckdb.DuckDBPyConnection) -> None:
    frame = compute_features(store, FLIGHT_FEATURES, "2013-02")
    # real signal, real rates: about a quarter of flights are late, cancelled or diverted
    assert 0.1 < frame["is_delayed"].mean() < 0.4  # type: ignore[operator]
    assert frame["carrier_delay_rate_7d"].is_between(0, 1).all()


def test_every_row_carries_the_feature_set_version_which_follows_the_sql(
    store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    frame = compute_features(store, FLIGHT_FEATURES, "2013-01")
    version = feature_set_version(FLIGHT_FEATURES)
    assert frame["feature_set_version"].unique().to_list() == [version]
    edited = tmp_path / "edited.sql"
    edited.write_text(FLIGHT_FEATURES.sql.replace("arr_delay > 15", "arr_delay > 30"))
    assert edited.read_text() != FLIGHT_FEATURES.sql
    assert feature_set_version(dataclasses.replace(FLIGHT_FEATURES, sql_path=edited)) != version


def test_the_one_row_check_names_each_broken_month_and_passes_the_others(store: duckdb.DuckDBPyConnection) -> None:
    write_months(store, FLIGHT_FEATURES, MONTHS)
    assert one_row_problems(store, FLIGHT_FEATURES, MONTHS) == []
    table = f"features.{FLIGHT_FEATURES.name}"
    # February: a row twice (a duplicate key, one row too many) and a label gone; March: untouched
    store.execute(f"INSERT INTO {table} SELECT * FROM {table} WHERE _month = '2013-02' LIMIT 1")
    store.execute(
        f"UPDATE {table} SET {FLIGHT_FEATURES.label} = NULL WHERE _month = '2013-02' AND rowid = "
        f"(SELECT min(rowid) FROM {table} WHERE _month = '2013-02')"
    )
    store.execute(f"DELETE FROM {table} WHERE _month = '2013-01'")  # January: nothing built
    # March: two labels that are not 0 or 1 (a SQL that gives minutes of delay, not whether the flight was late)
    store.execute(
        f"UPDATE {table} SET {FLIGHT_FEATURES.label} = 42 WHERE _month = '2013-03' AND rowid IN "
        f"(SELECT rowid FROM {table} WHERE _month = '2013-03' ORDER BY rowid LIMIT 2)"
    )
    problems = one_row_problems(store, FLIGHT_FEATURES, MONTHS)
    validated = dict(
        store.execute("SELECT _month, count(*) FROM validated.flights WHERE tailnum IS NOT NULL GROUP BY 1").fetchall()
    )
    rows = "validated rows of flights where `tailnum IS NOT NULL`"
    assert problems == [
        f"2013-01: 0 feature rows for {validated['2013-01']} {rows}",
        f"2013-02: {validated['2013-02'] + 1} feature rows for {validated['2013-02']} {rows}",
        "2013-02: 1 duplicate keys",
        "2013-02: 1 rows without a label",
        (
            f"2013-03: 2 rows whose label {FLIGHT_FEATURES.label} is not 0 or 1 (models here are binary classifiers: "
            f"the feature SQL of {FLIGHT_FEATURES.name} gives 1 for the outcome, 0 otherwise)"
        ),
    ]
