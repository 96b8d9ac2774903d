"""Contract tests: a clean real month passes; each kind of bad batch is rejected or quarantined with the right rule and
column, rows are accounted for, and a rejected batch never replaces the last accepted state."""

import io
from datetime import datetime

import duckdb
import polars as pl
import pytest

from mlops_assets.core.contracts import (
    RULE_BATCH_REJECTED,
    RULE_COLUMN_PRESENT,
    RULE_COLUMN_TYPE,
    RULE_NON_EMPTY,
    RULE_READABLE,
    BatchVerdict,
)
from mlops_assets.core.ingest import ingest_raw, latest_verdicts, row_accounting, validate_partition
from mlops_assets.core.landing import find_landed, land_file
from mlops_assets.core.settings import Settings
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets_tests.conftest import EVERY, MONTHLY, load_month

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
def loaded(warehouse: duckdb.DuckDBPyConnection, settings: Settings) -> duckdb.DuckDBPyConnection:
    """Reference tables plus a clean, accepted March."""
    replay_months(settings.landing_dir, [MONTH], every=EVERY)
    load_month(warehouse, settings, MONTH, MONTHLY)
    return warehouse


def test_clean_real_month_passes_with_no_quarantined_flights(
    loaded: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    [flights] = latest_verdicts(loaded, "flights", "validated", [MONTH])
    [weather] = latest_verdicts(loaded, "weather", "validated", [MONTH])
    assert flights["accepted"] and flights["rows_quarantined"] == 0
    assert flights["rows_valid"] == _clean_flights(settings).height
    # real weather: at most a handful of physically impossible readings
    assert weather["accepted"] and weather["rows_quarantined"] <= 2
    counts = row_accounting(loaded, "flights", MONTH, str(flights["sha256"]))
    assert counts["validated"] + counts["quarantined"] == counts["landed"] == flights["rows_landed"]


def test_corrupt_file_is_rejected_and_kept(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    good = _validated_shas(loaded)
    data = _parquet(_clean_flights(settings))
    corrupt = data[: len(data) // 2] + b"\x00garbage"
    raw, validated = _run_batch(loaded, settings, corrupt, "corrupt")
    assert not raw.accepted and raw.rule == RULE_READABLE and validated is None
    assert "not readable as parquet" in raw.message
    [entry] = latest_verdicts(loaded, "flights", "raw", [MONTH])
    kept = entry["quarantined_file"]
    assert kept and open(str(kept), "rb").read() == corrupt  # the exact bytes can be found again
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
    ],
    ids=["missing-column", "renamed-column", "retyped-column"],
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
        "SELECT count(*), min(rule), min(column_name) FROM quarantine.flights WHERE stage = 'raw' AND _sha256 <> ALL(?)",
        [list(good)],
    ).fetchone()
    assert quarantined == (batch.height, rule, column)
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


def test_unknown_carrier_is_quarantined(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    batch = _clean_flights(settings)
    batch = batch.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier")
    )
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(loaded, validated, [7], "isin", "carrier")


def test_duplicate_keys_are_quarantined(loaded: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    batch = _clean_flights(settings)
    batch = pl.concat([batch, batch.slice(5, 1)])  # the same flight twice
    _, validated = _run_batch(loaded, settings, _parquet(batch), "bad-rows")
    assert validated is not None
    _assert_quarantined(
        loaded, validated, [5, batch.height - 1], "uniqueness", "carrier+flight+year+month+day+sched_dep_time"
    )


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
    assert validated.column == "month" and str(validated.rule) == "month of partition 2013-03"
    assert _validated_shas(loaded) == good


def test_reference_codes_come_from_the_validated_reference_table(loaded: duckdb.DuckDBPyConnection) -> None:
    from mlops_assets.core.ingest import read_codes

    codes = read_codes(loaded, NYCFLIGHTS13.table("flights"))
    assert "UA" in codes["carrier"] and len(codes["carrier"]) == 16
