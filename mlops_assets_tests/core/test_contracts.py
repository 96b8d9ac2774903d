"""Contract tests: a clean real month passes; each kind of bad batch is rejected or quarantined with the right rule and
column, rows are accounted for, and a rejected batch never replaces the last accepted state. (The same faults through
the Dagster assets, with the month after them: ``defs/test_bad_input.py``.)"""

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mlops_assets.core.contracts import (
    RULE_BATCH_REJECTED,
    RULE_CHECKSUM_MISMATCH,
    RULE_COLUMN_PRESENT,
    RULE_COLUMN_TYPE,
    RULE_CONFLICTING_KEY,
    RULE_DUPLICATE_ROW,
    RULE_LABEL_IMPLAUSIBLE,
    RULE_NON_EMPTY,
    RULE_READABLE,
    WHOLE_ROW,
    BatchVerdict,
    dropped_codes,
    implausible_share,
)
from mlops_assets.core.ingest import (
    history_without,
    ingest_raw,
    latest_verdicts,
    row_accounting,
    shares_by_month,
    validate_partition,
    validate_partitions,
)
from mlops_assets.core.landing import checksum_path, find_landed, land_file
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import ContractContext, ShareRule, TableSpec
from mlops_assets.core.store import append_row, ensure_batch_log
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets_tests.conftest import EVERY, REFERENCE, BuiltData, load_month

MONTH = "2013-03"


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def _clean_flights(settings: Settings) -> pl.DataFrame:
    landed = find_landed(settings.landing_dir, "flights", MONTH)
    assert landed is not None
    return pl.read_parquet(landed.path)


def _run_batch(
    conn: duckdb.DuckDBPyConnection, settings: Settings, data: bytes, run: str
) -> tuple[BatchVerdict, BatchVerdict | None]:
    """Land ``data`` as the flights batch of MONTH and push it through raw and (when raw accepts it) validated."""
    landed, _ = land_file(settings.landing_dir, "flights", MONTH, data)
    spec = NYCFLIGHTS13.table("flights")
    raw = ingest_raw(
        conn, spec, landed, settings.landing_dir, settings.data_dir / "quarantine", run, datetime(2026, 1, 2)
    )
    validated = validate_partition(conn, spec, MONTH, run, datetime(2026, 1, 2)) if raw.accepted else None
    return raw, validated


def _validated_shas(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        r[0]
        for r in conn.execute("SELECT DISTINCT _sha256 FROM validated.flights WHERE _month = ?", [MONTH]).fetchall()
    }


@pytest.fixture
def loaded(settings: Settings, built_data: BuiltData) -> Iterator[duckdb.DuckDBPyConnection]:
    """Reference tables plus a clean, accepted March."""
    with built_data.warehouse(settings, (MONTH,)) as conn:
        yield conn


def test_clean_real_month_passes_with_no_quarantined_flights(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    [flights] = latest_verdicts(loaded, "flights", "validated", [MONTH])
    [weather] = latest_verdicts(loaded, "weather", "validated", [MONTH])
    assert flights["accepted"] and flights["rows_quarantined"] == 0
    assert flights["rows_valid"] == _clean_flights(settings).height
    # real weather: at most a handful of physically impossible readings
    assert weather["accepted"] and weather["rows_quarantined"] <= 2
    batch = (MONTH, str(flights["sha256"]))
    counted = row_accounting(loaded, "flights", [batch, (MONTH, "a file never landed")])
    counts = counted[batch]
    assert counts["validated"] + counts["quarantined"] == counts["landed"] == flights["rows_landed"]
    assert counted[(MONTH, "a file never landed")] == {"landed": 0, "validated": 0, "quarantined": 0}


#: (stage, file, accepted) entries of one month's batch log, oldest first; the verdict status gives for the month.
LOG_HISTORIES = {
    "validated after raw": ([("raw", "v1", True), ("validated", "v1", True)], ("validated", "v1", True)),
    "raw rejects a new file": (
        [("raw", "v1", True), ("validated", "v1", True), ("raw", "v2", False)],
        ("raw", "v2", False),
    ),
    # raw keeps v1, so validating again re-judges v1, not the newest file
    "then the serving file is validated again": (
        [("raw", "v1", True), ("validated", "v1", True), ("raw", "v2", False), ("validated", "v1", True)],
        ("raw", "v2", False),
    ),
    # the same bytes with a checksum file that does not vouch for them, then validated again
    "raw rejects the same bytes": (
        [("raw", "v1", True), ("validated", "v1", True), ("raw", "v1", False), ("validated", "v1", True)],
        ("raw", "v1", False),
    ),
    # raw takes the file again; validated's rejection of it still stands until validated judges it again
    "raw accepts a file validated rejected": (
        [("raw", "v1", True), ("validated", "v1", False), ("raw", "v1", True)],
        ("validated", "v1", False),
    ),
    "the good file landed again": (
        [("raw", "v1", True), ("validated", "v1", True), ("raw", "v2", False), ("raw", "v1", True)],
        ("validated", "v1", True),
    ),
    "raw accepted a new file, not validated yet": (
        [("raw", "v1", True), ("validated", "v1", True), ("raw", "v2", True)],
        ("raw", "v2", True),
    ),
}


@pytest.mark.parametrize("history", LOG_HISTORIES.values(), ids=LOG_HISTORIES)
def test_status_gives_the_verdict_on_the_newest_landed_file(
    history: tuple[list[tuple[str, str, bool]], tuple[str, str, bool]],
) -> None:
    entries, expected = history
    with duckdb.connect() as conn:
        log = ensure_batch_log(conn)
        for i, (stage, sha256, accepted) in enumerate(entries):
            for month in (MONTH, None):  # a month, and the reference table's one partition
                row = {"table_name": "flights", "month": month, "stage": stage, "sha256": sha256, "accepted": accepted}
                append_row(conn, log, {**row, "checked_at": datetime(2026, 1, 1, 0, i)})
        verdicts = latest_verdicts(conn, "flights", ("raw", "validated"))
        assert [(v["month"], v["stage"], v["sha256"], v["accepted"]) for v in verdicts] == [
            (MONTH, *expected),
            (None, *expected),
        ]
        # one stage: its newest entry, whatever the other stage logged
        for stage in ("raw", "validated"):
            newest = [e for e in entries if e[0] == stage][-1]
            [verdict] = latest_verdicts(conn, "flights", stage, [MONTH])
            assert (verdict["stage"], verdict["sha256"], verdict["accepted"]) == newest


def test_the_row_check_fails_when_a_months_rows_do_not_add_up(loaded: duckdb.DuckDBPyConnection) -> None:
    import dagster as dg

    from mlops_assets.defs.batches import judge_batches

    def judge() -> dg.AssetCheckResult:
        """The validated stage's blocking check, on the connection that wrote the batch, as the step runs it."""
        flights = NYCFLIGHTS13.table("flights")
        return judge_batches(loaded, flights, dg.AssetKey("validated"), "validated", "row_contract", [MONTH])

    assert judge().passed
    loaded.execute("DELETE FROM validated.flights WHERE _row = (SELECT min(_row) FROM validated.flights)")
    result = judge()
    assert not result.passed
    assert f"flights {MONTH}: rows do not add up: " in (result.description or ""), result.description


def test_an_empty_file_says_so(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    raw, validated = _run_batch(loaded, settings, b"", "empty")
    assert not raw.accepted and raw.rule == RULE_READABLE and validated is None
    assert "the file is empty (0 bytes)" in raw.message and "Next: land a corrected" in raw.message


def test_corrupt_file_is_rejected_and_kept(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    good = _validated_shas(loaded)
    data = _parquet(_clean_flights(settings))
    corrupt = data[: len(data) // 2] + b"\x00garbage"
    raw, validated = _run_batch(loaded, settings, corrupt, "corrupt")
    assert not raw.accepted and raw.rule == RULE_READABLE and validated is None
    assert "not readable as parquet" in raw.message
    [entry] = latest_verdicts(loaded, "flights", "raw", [MONTH])
    kept = entry["quarantined_file"]
    assert kept and Path(str(kept)).read_bytes() == corrupt  # the exact bytes can be found again
    assert _validated_shas(loaded) == good  # last good state keeps serving


@pytest.mark.parametrize(
    ("mutate", "rule", "column", "hint"),
    [
        (lambda f: f.drop("dep_delay"), RULE_COLUMN_PRESENT, "dep_delay", "is missing"),
        (
            lambda f: f.rename({"arr_delay": "arrival_delay"}),
            RULE_COLUMN_PRESENT,
            "arr_delay",
            "renamed to 'arrival_delay'",
        ),
        (
            lambda f: f.with_columns(pl.col("dep_delay").cast(pl.String)),
            RULE_COLUMN_TYPE,
            "dep_delay",
            "has type String",
        ),
        # strings written as untagged bytes (as some writers do): polars cannot write bytes to JSON, which crashed the
        # ingest before anything was quarantined
        (
            lambda f: f.with_columns(pl.col("tailnum").cast(pl.Binary)),
            RULE_COLUMN_TYPE,
            "tailnum",
            "has type Binary",
        ),
    ],
    ids=["missing-column", "renamed-column", "retyped-column", "bytes-column"],
)
def test_schema_change_rejects_the_batch_whole(
    loaded: duckdb.DuckDBPyConnection, settings: Settings, mutate, rule: str, column: str, hint: str
) -> None:
    good = _validated_shas(loaded)
    batch = mutate(_clean_flights(settings))
    raw, validated = _run_batch(loaded, settings, _parquet(batch), "schema")
    assert not raw.accepted and validated is None
    assert (raw.rule, raw.column) == (rule, column)
    assert hint in raw.message and column in raw.message
    # every row of the rejected batch is kept in quarantine, as JSON, with the reason
    quarantined = loaded.execute(
        "SELECT count(*), min(rule), min(column_name) FROM quarantine.flights "
        "WHERE stage = 'raw' AND _sha256 <> ALL(?)",
        [list(good)],
    ).fetchone()
    assert quarantined == (batch.height, rule, column)
    if column == "tailnum":  # the bytes are kept, as hex
        tailnum = batch["tailnum"].drop_nulls()[0]
        kept = loaded.execute(
            "SELECT count(*) FROM quarantine.flights WHERE stage = 'raw' AND row_json LIKE ?", [f'%"{tailnum.hex()}"%']
        ).fetchone()
        assert kept is not None and kept[0] >= 1
    assert _validated_shas(loaded) == good
    # raw still holds the last accepted batch
    assert {
        r[0] for r in loaded.execute("SELECT DISTINCT _sha256 FROM raw.flights WHERE _month = ?", [MONTH]).fetchall()
    } == good


def test_empty_batch_is_rejected(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    raw, _ = _run_batch(loaded, settings, _parquet(_clean_flights(settings).clear()), "empty")
    assert not raw.accepted and raw.rule == RULE_NON_EMPTY


def _assert_quarantined(
    conn: duckdb.DuckDBPyConnection, verdict: BatchVerdict, rows: list[int], rule_part: str, column: str
) -> None:
    """The given rows (positions in the landed file) are quarantined with the rule and column; the rest flowed."""
    assert verdict.accepted, verdict.message
    found = conn.execute(
        """SELECT _row, rule, column_name, row_json, _source_file FROM quarantine.flights
           WHERE stage = 'validated' AND _run_id = 'bad-rows' ORDER BY _row"""
    ).fetchall()
    assert [r[0] for r in found] == rows
    assert all(
        rule_part in r[1] and r[2] == column and r[3].startswith("{") and r[4] == f"flights/{MONTH}.parquet"
        for r in found
    )
    assert verdict.rows_valid + verdict.rows_quarantined == verdict.rows_landed
    assert verdict.rows_quarantined == len(rows)


def test_out_of_range_rows_are_quarantined_and_the_rest_flows(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    batch = _clean_flights(settings)
    bad = [3, 17, 50]
    batch = batch.with_columns(
        pl.when(pl.int_range(pl.len()).is_in(bad))
        .then(pl.lit(99_999.0))
        .otherwise(pl.col("dep_delay"))
        .alias("dep_delay")
    )
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, bad, "in_range", "dep_delay")
    n_validated = loaded.execute("SELECT count(*) FROM validated.flights WHERE _month = ?", [MONTH]).fetchone()
    assert n_validated == (batch.height - len(bad),)


def test_a_quarantined_nan_or_infinity_keeps_its_value(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """JSON has no NaN or infinity, and polars writes them as null, which `dep_delay` may hold legally: the
    quarantined row keeps them as the strings "NaN", "Infinity" and "-Infinity"."""
    batch = _clean_flights(settings)
    odd = {3: float("inf"), 17: float("nan"), 50: float("-inf")}
    row = pl.int_range(pl.len())
    delay = pl.col("dep_delay")
    for position, value in odd.items():
        delay = pl.when(row == position).then(pl.lit(value)).otherwise(delay)
    _, validated = _run_batch(loaded, settings, _parquet(batch.with_columns(delay.alias("dep_delay"))), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, sorted(odd), "in_range", "dep_delay")
    kept = loaded.execute(
        "SELECT _row, row_json FROM quarantine.flights WHERE _run_id = 'bad-rows' ORDER BY _row"
    ).fetchall()
    assert [json.loads(text)["dep_delay"] for _, text in kept] == ["Infinity", "NaN", "-Infinity"]
    assert json.loads(kept[0][1])["carrier"] == batch["carrier"][3]  # the rest of the row as it was


def test_unknown_carrier_is_quarantined(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    batch = _clean_flights(settings)
    batch = batch.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier")
    )
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, [7], "isin", "carrier")


def test_an_exact_copy_is_quarantined_and_the_row_flows_once(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    batch = _clean_flights(settings)
    batch = pl.concat([batch, batch.slice(5, 1)])  # the same flight twice, every value equal
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, [batch.height - 1], RULE_DUPLICATE_ROW, WHOLE_ROW)
    assert (validated.rows_duplicate, validated.rows_conflicting) == (1, 0)
    assert "1 exact copies of other rows" in validated.message
    [(kept,)] = loaded.execute(
        "SELECT count(*) FROM validated.flights WHERE _month = ? AND _run_id = 'bad-rows' AND _row = 5", [MONTH]
    ).fetchall()
    assert kept == 1


def test_rows_sharing_a_key_with_different_values_are_all_quarantined(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    batch = _clean_flights(settings)
    other_plane = batch.slice(5, 1).with_columns(pl.lit("N999ZZ").alias("tailnum"))
    batch = pl.concat([batch, other_plane, batch.slice(5, 1)])  # a conflict, and an exact copy of one side of it
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None and validated.accepted
    found = loaded.execute(
        """SELECT _row, rule, column_name, failures FROM quarantine.flights
           WHERE stage = 'validated' AND _run_id = 'bad-rows' ORDER BY _row"""
    ).fetchall()
    key = "carrier+flight+year+month+day+sched_dep_time"
    last = batch.height - 1
    assert [r[:3] for r in found] == [
        (5, RULE_CONFLICTING_KEY, key),
        (last - 1, RULE_CONFLICTING_KEY, key),
        (last, RULE_DUPLICATE_ROW, WHOLE_ROW),
    ]
    assert f"rows 5, {last - 1} share this key" in found[0][3] and "exact copy of row 5" in found[2][3]
    assert (validated.rows_duplicate, validated.rows_conflicting, validated.rows_quarantined) == (1, 2, 3)
    assert validated.rows_valid == batch.height - 3


@pytest.mark.parametrize(
    ("mutate", "rule", "column"),
    [
        # one hour off: as if the local hour were another time zone's (UTC-6 instead of New York's UTC-5)
        (
            lambda f: _shift_time_hour(f, hours=1),
            "time_hour_matches_local_hour",
            "time_hour",
        ),
        (
            lambda f: f.with_columns(pl.lit("2013-02-30T10:00:00Z").alias("time_hour")),  # the pattern, no date
            "time_hour_matches_local_hour",
            "time_hour",
        ),
        (  # the departure delay moved with it, so only the schedule disagrees with hour and minute
            lambda f: f.with_columns(pl.col("sched_dep_time") + 1, pl.col("dep_delay") - 1),
            "sched_dep_time_matches_hour_minute",
            "sched_dep_time",
        ),
        (lambda f: f.with_columns(pl.col("dep_delay") + 7), "dep_delay_matches_dep_time", "dep_delay"),
        (lambda f: f.with_columns(pl.col("arr_delay") - 60), "arr_delay_matches_arr_time", "arr_delay"),
        (
            lambda f: f.with_columns(pl.lit(None, dtype=pl.Float64).alias("dep_delay")),
            "dep_delay_matches_dep_time",
            "dep_delay",
        ),
        (lambda f: f.with_columns(pl.lit(float("nan")).alias("dep_delay")), "in_range", "dep_delay"),
        (lambda f: f.with_columns(pl.lit(float("inf")).alias("arr_delay")), "in_range", "arr_delay"),
    ],
    ids=[
        "time-hour-off",
        "time-hour-no-such-date",
        "sched-dep-time-vs-hour-minute",
        "dep-delay-vs-times",
        "arr-delay-vs-times",
        "dep-delay-missing-for-a-departure",
        "nan-delay",
        "infinite-delay",
    ],
)
def test_values_inconsistent_with_the_columns_they_repeat_are_quarantined(
    loaded: duckdb.DuckDBPyConnection, settings: Settings, mutate, rule: str, column: str
) -> None:
    batch = _clean_flights(settings)
    departed = batch.with_row_index("i").filter(
        pl.col("dep_time").is_not_null() & pl.col("arr_delay").is_not_null() & (pl.col("minute") < 59)
    )
    bad = sorted(departed["i"].head(3).to_list())
    changed = mutate(batch).with_row_index("i")
    batch = pl.concat(
        [changed.filter(pl.col("i").is_in(bad)), batch.with_row_index("i").filter(~pl.col("i").is_in(bad))]
    )
    batch = batch.sort("i").drop("i")
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, bad, rule, column)


def test_a_month_of_null_labels_is_rejected_against_the_accepted_months(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    replay_months(settings.landing_dir, ["2013-01", "2013-02"], every=EVERY)
    for month in ("2013-01", "2013-02"):
        load_month(loaded, settings, month, ["flights"])
    history = history_without(shares_by_month(loaded, NYCFLIGHTS13.table("flights")), MONTH)
    assert len(history["arr_delay is null"]) == 2 and max(history["arr_delay is null"]) < 0.06  # the blizzard: 5%
    good = _validated_shas(loaded)
    batch = _clean_flights(settings).with_columns(pl.lit(None, dtype=pl.Float64).alias("arr_delay"))
    _, validated = _run_batch(loaded, settings, _parquet(batch), "null-labels")
    assert validated is not None and not validated.accepted
    assert (validated.rule, validated.column) == (RULE_LABEL_IMPLAUSIBLE, "arr_delay")
    assert "'arr_delay is null' holds for 100.0% of the rows against a median of" in validated.message
    assert validated.rows_quarantined == validated.rows_landed == batch.height
    assert _validated_shas(loaded) == good


def _shift_time_hour(batch: pl.DataFrame, hours: int) -> pl.DataFrame:
    """``time_hour`` moved by ``hours``, still in its ISO UTC form."""
    utc = pl.col("time_hour").str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%SZ") + pl.duration(hours=hours)
    return batch.with_columns(utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("time_hour"))


def _share_context(history: tuple[float, ...]) -> tuple[TableSpec, ContractContext]:
    rule = ShareRule("x is null", pl.col("x").is_null(), two_sided=True)
    spec = TableSpec("t", {"x": pl.Float64}, ("x",), True, lambda context: {}, plausibility=(rule,))
    return spec, ContractContext(month=MONTH, history={rule.name: history})


@pytest.mark.parametrize(
    ("nulls", "history", "implausible"),
    [
        (0.08, (0.02, 0.025, 0.03), False),  # above 3x the median but below the 10% floor: small shares move a lot
        (0.12, (0.02, 0.025, 0.03), True),  # above 3x the median and above 10%
        (0.12, (0.05, 0.05, 0.30), False),  # a bad old month does not move the median
        (0.40, (), False),  # no history: only above 50% is implausible on its own
        (0.60, (), True),
        (0.05, (0.25, 0.30, 0.20), True),  # two-sided: a share that collapses (below the median / 3)
        (0.10, (0.25, 0.30, 0.20), False),
    ],
)
def test_a_share_is_judged_against_the_median_of_the_accepted_months(
    nulls: float, history: tuple[float, ...], implausible: bool
) -> None:
    spec, context = _share_context(history)
    batch = pl.DataFrame(
        {"x": [None] * int(nulls * 1000) + [1.0] * (1000 - int(nulls * 1000))}, schema={"x": pl.Float64}
    )
    found = implausible_share(batch, spec, context, "t 2013-03")
    assert (found is not None) == implausible, found
    if found:
        assert found[:2] == (RULE_LABEL_IMPLAUSIBLE, "x")


def test_a_reference_time_zone_neither_duckdb_nor_python_knows_is_quarantined(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    """The feature SQL converts arrival times with the destination's zone: an unknown one would stop every build."""
    spec = NYCFLIGHTS13.table("airports")
    landed = find_landed(settings.landing_dir, "airports", None)
    assert landed is not None
    airports = pl.read_parquet(landed.path)
    airports = airports.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("Mars/Olympus_Mons")).otherwise(pl.col("tzone")).alias("tzone")
    )
    landed, _ = land_file(settings.landing_dir, "airports", None, _parquet(airports))
    now = datetime(2026, 1, 2)
    assert ingest_raw(loaded, spec, landed, settings.landing_dir, settings.quarantine_dir, "tz", now).accepted
    verdict = validate_partition(loaded, spec, None, "tz", now)
    assert verdict.accepted and verdict.rows_quarantined == 1
    [(row, rule, column)] = loaded.execute(
        "SELECT _row, rule, column_name FROM quarantine.airports WHERE _run_id = 'tz'"
    ).fetchall()
    assert (row, rule, column) == (3, "known_time_zone", "tzone")


def test_a_batch_that_does_not_match_its_checksum_file_is_rejected_with_both_hashes(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    good = _validated_shas(loaded)
    landed = find_landed(settings.landing_dir, "flights", MONTH)
    assert landed is not None
    checksum_path(landed.path).write_text(f"{'0' * 64}  {landed.path.name}\n")
    spec = NYCFLIGHTS13.table("flights")
    raw = ingest_raw(loaded, spec, landed, settings.landing_dir, settings.quarantine_dir, "sum", datetime(2026, 1, 2))
    assert not raw.accepted and raw.rule == RULE_CHECKSUM_MISMATCH
    assert f"sha256 is {landed.sha256}" in raw.message and f"says {'0' * 64}" in raw.message
    assert raw.rows_quarantined == raw.rows_landed == pl.read_parquet(landed.path).height
    assert _validated_shas(loaded) == good


def test_too_many_bad_rows_reject_the_batch_and_keep_the_last_good_state(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    good = _validated_shas(loaded)
    batch = _clean_flights(settings)
    batch = batch.with_columns(
        pl.when(pl.int_range(pl.len()) % 20 == 0).then(pl.lit(24)).otherwise(pl.col("hour")).alias("hour")  # 5% bad
    )
    _, validated = _run_batch(loaded, settings, _parquet(batch), "too-many")
    assert validated is not None and not validated.accepted
    assert validated.column == "hour" and "in_range" in str(validated.rule)
    assert "above the 1% limit" in validated.message and "'hour'" in validated.message
    assert _validated_shas(loaded) == good
    rules = dict(
        loaded.execute(
            "SELECT rule = ?, count(*) FROM quarantine.flights WHERE _run_id = 'too-many' GROUP BY 1",
            [RULE_BATCH_REJECTED],
        ).fetchall()
    )
    assert rules == {False: (batch.height + 19) // 20, True: batch.height - (batch.height + 19) // 20}


def test_batch_of_the_wrong_month_is_rejected(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    good = _validated_shas(loaded)
    april = _clean_flights(settings).with_columns(pl.lit(4, dtype=pl.Int64).alias("month"))
    _, validated = _run_batch(loaded, settings, _parquet(april), "wrong-month")
    assert validated is not None and not validated.accepted
    assert validated.column == "month" and str(validated.rule) == "month_of_partition"
    assert _validated_shas(loaded) == good


def test_reference_codes_come_from_the_validated_reference_table(loaded: duckdb.DuckDBPyConnection) -> None:
    from mlops_assets.core.ingest import read_codes

    codes = read_codes(loaded, NYCFLIGHTS13.table("flights"))
    assert "UA" in codes["carrier"] and len(codes["carrier"]) == 16


def _snapshot(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    """What validation wrote, without the run's id and clock: validated and quarantined rows, the batch log."""
    lineage = "_run_id, _written_at"
    return {
        table: conn.execute(f"SELECT * EXCLUDE ({lineage}) FROM {table} ORDER BY ALL").fetchall()
        for table in ("validated.flights", "quarantine.flights")
    } | {
        "log": conn.execute(
            "SELECT * EXCLUDE (run_id, checked_at) FROM quarantine.batches WHERE stage = 'validated' ORDER BY ALL"
        ).fetchall()
    }


def test_months_checked_in_one_contract_call_are_judged_as_one_by_one(
    warehouse: duckdb.DuckDBPyConnection, settings: Settings, tmp_path: Path
) -> None:
    """Validation sends a run's months through pandera together (each row held to its own partition): the verdicts,
    valid rows, quarantined rows and their reasons are those of validating each month alone."""
    months = ["2013-01", "2013-02", "2013-03"]
    replay_months(settings.landing_dir, months, every=EVERY)
    spec = NYCFLIGHTS13.table("flights")
    row = pl.int_range(pl.len())
    faults = {
        # an exact copy of the first row, and three hours out of range
        "2013-02": lambda f: pl.concat([f, f.head(1)]).with_columns(
            pl.when(row.is_between(1, 3)).then(24).otherwise(pl.col("hour")).alias("hour")
        ),
        # one row that says it is from April
        "2013-03": lambda f: f.with_columns(pl.when(row == 5).then(4).otherwise(pl.col("month")).alias("month")),
    }
    for month, fault in faults.items():
        landed = find_landed(settings.landing_dir, "flights", month)
        assert landed is not None
        land_file(settings.landing_dir, "flights", month, _parquet(fault(pl.read_parquet(landed.path))))
    one_by_one = duckdb.connect(str(tmp_path / "one_by_one.duckdb"))
    load_month(one_by_one, settings, None, REFERENCE)
    now = datetime(2026, 1, 3)
    for conn in (warehouse, one_by_one):
        for month in months:
            landed = find_landed(settings.landing_dir, "flights", month)
            assert landed is not None
            ingest_raw(conn, spec, landed, settings.landing_dir, settings.data_dir / "quarantine", "batch", now)

    together = validate_partitions(warehouse, spec, list(months), "together", now)
    alone = [validate_partition(one_by_one, spec, month, "alone", now) for month in months]

    assert together == alone
    assert [v.rows_quarantined for v in together] == [0, 4, 1] and all(v.accepted for v in together)
    assert _snapshot(warehouse) == _snapshot(one_by_one)
    reasons = warehouse.execute("SELECT _month, rule FROM quarantine.flights ORDER BY ALL").fetchall()
    assert reasons == [
        ("2013-02", "duplicate_row"),
        *[("2013-02", "in_range(0, 23)")] * 3,
        ("2013-03", "month_of_partition"),
    ]
    one_by_one.close()


#: A child process reads corrupt copies of one small batch with ``read_batch`` and prints what became of them. Byte
#: 1240 (0xFF), 1871 and 2080 made polars' own reader abort the process (it asked for 2^61 bytes), 1241 (0x7F), 1243
#: and 1279 made it panic, with polars 2.1's writer; the bytes around them are swept too, should the layout move.
_CORRUPT_COPIES = """
import io, json, sys
import polars as pl
from mlops_assets.core.contracts import BatchUnreadableError, read_batch

frame = pl.DataFrame({"a": list(range(2000)), "b": [f"s{i % 37}" for i in range(2000)],
                      "c": [i * 0.5 for i in range(2000)], "d": [None if i % 7 == 0 else i for i in range(2000)]})
buffer = io.BytesIO()
frame.write_parquet(buffer, row_group_size=300, compression="snappy")
raw = buffer.getvalue()
seen = {"read": 0, "unreadable": 0}
for position in sorted({*range(1200, 1300), 1871, 2080, 4402}):
    for value in (0xFF, 0x00, 0x7F, 0x80):
        corrupt = bytearray(raw)
        corrupt[position] = value
        try:
            read_batch(bytes(corrupt))
            seen["read"] += 1
        except BatchUnreadableError:
            seen["unreadable"] += 1
print(json.dumps(seen))
"""


def test_a_corrupt_batch_is_refused_as_unreadable_never_a_crash() -> None:
    """Single bytes changed in a small batch, where polars' own reader aborted the whole process or panicked: each
    copy is read (the byte fell in a value) or refused as unreadable, with the reader's reason, and the process lives
    on (it runs apart, so that an abort shows as one)."""
    done = subprocess.run(
        [sys.executable, "-c", _CORRUPT_COPIES], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["unreadable"] > 100 and seen["read"] + seen["unreadable"] == 103 * 4, seen


def test_a_code_held_in_a_quarantined_reference_row_is_named_with_its_row_and_rule_not_as_dropped() -> None:
    """A planes file with one bad year for N14228 was rejected as one that "drops tailnum N14228", which it holds;
    the rule that held the row back was only in quarantine.planes (a hunt found it)."""
    context = ContractContext(still_used={"tailnum": frozenset({"N14228", "N10156", "N24211"})})
    valid = pl.DataFrame({"tailnum": ["N10156"], "year": [2004.0]})
    held_back = pl.DataFrame({"tailnum": ["N14228"], "_row": [177], "failures": ["year: in_range(1900, 2014)"]})
    rule, column, message = dropped_codes(valid, context, "planes (reference)", held_back)  # type: ignore[misc]
    assert (rule, column) == ("codes_still_used", "tailnum")
    assert message.startswith(
        "planes (reference): drops tailnum N24211; quarantines the row(s) of tailnum N14228 (row 177: year: "
        "in_range(1900, 2014)), still used by accepted rows of other tables: batch rejected whole"
    ), message
    assert (
        dropped_codes(valid, ContractContext(still_used={"tailnum": frozenset({"N10156"})}), "planes", held_back)
        is None
    )
