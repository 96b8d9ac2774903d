"""The two stages a landed batch goes through: ``raw`` (exact copy, structure checked) and ``validated`` (row contract).

Each stage appends its verdict to the batch log ``quarantine.batches`` (with the file, its sha256 and the run id), so
the asset checks judge the newest batch of each month from what is stored. A rejected batch never touches the last
accepted state:

* raw rejects a file that does not match its checksum file, or is unreadable, empty or re-shaped; the exact bytes are
  copied to ``quarantine/<table>/`` under the data directory and, when readable, every row is kept in
  ``quarantine.<table>`` as JSON;
* validated quarantines bad rows with their rule and column (and exact copies of a row, judged once); above the
  table's bad-row limit, or when a plausibility rule of the table is broken against the accepted months' history, it
  quarantines them all.

Rows are accounted for per landed file (sha256): validated + quarantined = landed. Files of the landing zone whose name
does not follow the layout are logged too (stage ``landing``, rule ``misnamed_file``), once per file version.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from mlops_assets.core.contracts import (
    QUARANTINE_SCHEMA,
    RULE_CHECKSUM_MISMATCH,
    RULE_CHECKSUM_MISSING,
    RULE_FUTURE_MONTH,
    RULE_MISNAMED_FILE,
    RULE_READABLE,
    RULE_UNREADABLE_FILE,
    BatchUnreadableError,
    BatchVerdict,
    RuleFailures,
    check_structure,
    read_batch,
    rows_as_json,
    rule_failures,
    share_of,
    split_rows,
    structure_problems,
)
from mlops_assets.core.landing import (
    LandedFile,
    MisnamedFile,
    checksum_path,
    current_month,
    file_version,
    recorded_checksum,
    sha256_bytes,
    write_atomic,
)
from mlops_assets.core.specs import ContractContext, TableSpec
from mlops_assets.core.store import (
    BATCH_LOG,
    LINEAGE_COLUMNS,
    PartitionWriter,
    append_row,
    duckdb_type,
    ensure_batch_log,
    ensure_table,
    fetch_row,
    partition_writer,
    qualified,
    query_frame,
    quote_identifier,
    replace_where,
    table_exists,
)


@dataclass(frozen=True)
class Batch:
    """Where a batch came from: its table, partition month (None for reference data), landed file and checksum."""

    table: str
    month: str | None
    source_file: str
    sha256: str

    @property
    def label(self) -> str:
        return f"{self.table} {self.month}" if self.month else f"{self.table} (reference)"


def data_table_columns(spec: TableSpec) -> dict[str, str]:
    """DDL columns of ``raw.<table>`` and ``validated.<table>``: the contract's columns plus lineage."""
    return {**{c: duckdb_type(t) for c, t in spec.columns.items()}, **LINEAGE_COLUMNS}


def quarantine_columns() -> dict[str, str]:
    return {**LINEAGE_COLUMNS, **{c: duckdb_type(t) for c, t in QUARANTINE_SCHEMA.items()}, "stage": "VARCHAR"}


def _partition_filter(month: str | None) -> tuple[str, list[str | None]]:
    return ("_month IS NOT DISTINCT FROM ?", [month])


def _with_lineage(frame: pl.DataFrame, batch: Batch, run_id: str, now: datetime) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit(batch.month, dtype=pl.String).alias("_month"),
        pl.lit(batch.source_file).alias("_source_file"),
        pl.lit(batch.sha256).alias("_sha256"),
        pl.lit(run_id).alias("_run_id"),
        pl.lit(now).alias("_written_at"),
    )


def _quarantine(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    batch: Batch,
    stage: str,
    rows: pl.DataFrame,
    run_id: str,
    now: datetime,
) -> None:
    """Replace this batch's quarantined rows for this stage (a rerun replaces them; other batches' rows stay)."""
    name = ensure_table(conn, "quarantine", spec.name, quarantine_columns())
    frame = _with_lineage(rows, batch, run_id, now).with_columns(pl.lit(stage).alias("stage"))
    replace_where(
        conn,
        name,
        frame,
        "_sha256 = ? AND stage = ? AND _month IS NOT DISTINCT FROM ?",
        [batch.sha256, stage, batch.month],
    )


def _log(
    conn: duckdb.DuckDBPyConnection,
    batch: Batch,
    stage: str,
    verdict: BatchVerdict,
    run_id: str,
    now: datetime,
    quarantined_file: str | None = None,
) -> None:
    append_row(
        conn,
        ensure_batch_log(conn),
        {
            "table_name": batch.table,
            "month": batch.month,
            "stage": stage,
            "source_file": batch.source_file,
            "sha256": batch.sha256,
            "accepted": verdict.accepted,
            "rule": verdict.rule,
            "column_name": verdict.column,
            "message": verdict.message,
            "rows_landed": verdict.rows_landed,
            "rows_valid": verdict.rows_valid,
            "rows_quarantined": verdict.rows_quarantined,
            "quarantined_file": quarantined_file,
            "run_id": run_id,
            "checked_at": now,
        },
    )


#: A batch and its checksum file are two renames: a reader between them sees a new file with the old checksum (or
#: none yet). A mismatch is read again this many times, this far apart, before the batch is rejected.
CHECKSUM_ATTEMPTS, CHECKSUM_RETRY_S = 3, 0.25


def read_verified(path: Path) -> tuple[bytes, str, str | None]:
    """The bytes of a landed batch, their sha256 and the sha256 its checksum file records (None: no checksum file).

    Reads again, briefly, while the two differ: a file being replaced by ``land_file`` has its checksum file written
    right after it.
    """
    for attempt in range(CHECKSUM_ATTEMPTS):
        data = path.read_bytes()
        actual, recorded = sha256_bytes(data), recorded_checksum(path)
        if recorded == actual or attempt == CHECKSUM_ATTEMPTS - 1:
            break
        time.sleep(CHECKSUM_RETRY_S)
    return data, actual, recorded


def checksum_verdict(label: str, path: Path, actual: str, recorded: str | None) -> BatchVerdict | None:
    """The rejection of a batch whose bytes its checksum file does not vouch for; None when they match."""
    if recorded == actual:
        return None
    sidecar = checksum_path(path).name
    if recorded is None:
        message = (
            f"{label}: no checksum file {sidecar} beside the batch, so its bytes cannot be verified (sha256 {actual}); "
            "batch rejected whole. Land files with their checksum: `mlops land FILE --table T [--month YYYY-MM]` "
            f"writes both (or write it yourself: `sha256sum {path.name} > {sidecar}` in its folder)"
        )
        return BatchVerdict(False, message, 0, 0, 0, rule=RULE_CHECKSUM_MISSING)
    message = (
        f"{label}: checksum mismatch: the file's sha256 is {actual}, its checksum file {sidecar} says {recorded}; the "
        "file changed or was damaged after it was landed: batch rejected whole"
    )
    return BatchVerdict(False, message, 0, 0, 0, rule=RULE_CHECKSUM_MISMATCH)


def with_next_step(verdict: BatchVerdict, batch: Batch) -> BatchVerdict:
    """A rejection that says what to do about it (the checksum and future-month rejections say it already)."""
    if verdict.accepted or verdict.rule in (RULE_CHECKSUM_MISSING, RULE_FUTURE_MONTH):
        return verdict
    month = f" --month {batch.month}" if batch.month else ""
    if verdict.rows_quarantined:
        kept = f", and the rejected rows stay in quarantine.{batch.table}"
    elif verdict.rule == RULE_READABLE:
        kept = f", and the file's bytes are kept under quarantine/{batch.table}/"
    else:
        kept = ""
    step = (
        f". Next: land a corrected landing/{batch.source_file} with its checksum file (`mlops land FILE --table "
        f"{batch.table}{month}` writes both); until then the last accepted data keeps serving{kept}"
    )
    return replace(verdict, message=verdict.message.rstrip(". ") + step)


def future_month_verdict(label: str, month: str | None, now: datetime) -> BatchVerdict | None:
    """The rejection of a batch of a month after ``now``'s (UTC): no feed delivers the future, and such a month would
    become the newest: the one every model serves and retrains from (a 2031 month landed beside 2013 ones took over
    the online store and left the training window no validation month). None for any other batch."""
    current = current_month(now)
    if month is None or month <= current:
        return None
    message = (
        f"{label}: month {month} is after the current month {current}: a batch cannot hold the future (a wrong year "
        f"in the file name or the data?); batch rejected whole. Remove it and its checksum file from the landing zone, "
        "then land its rows under the month they are from (`mlops land FILE --table T --month YYYY-MM`)"
    )
    return BatchVerdict(False, message, 0, 0, 0, rule=RULE_FUTURE_MONTH)


def ingest_raw(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    landed: LandedFile,
    landing_dir: Path,
    quarantine_dir: Path,
    run_id: str,
    now: datetime,
    raw_rows: PartitionWriter | None = None,
) -> BatchVerdict:
    """Copy a landed batch into ``raw.<table>`` (its partition replaced) when it matches its checksum file, is not of a
    month after the current one and its structure matches the contract; through ``raw_rows`` (a writer of
    ``raw.<table>``) when given, which inserts the rows of several batches at once.

    The checksum is taken of the bytes actually read, so a file replaced between scan and ingest is still traced right.
    A rejected batch leaves ``raw`` untouched; its bytes are kept under ``quarantine_dir`` and its readable rows in
    ``quarantine.<table>``.
    """
    data, digest, recorded = read_verified(landed.path)
    batch = Batch(spec.name, landed.month, str(landed.path.relative_to(landing_dir)), digest)
    ensure_table(conn, "raw", spec.name, data_table_columns(spec))
    refused = checksum_verdict(batch.label, landed.path, digest, recorded) or future_month_verdict(
        batch.label, landed.month, now
    )
    try:
        frame = read_batch(data)
    except BatchUnreadableError as error:
        frame = None
        verdict = refused or BatchVerdict(False, f"{batch.label}: {error}", 0, 0, 0, rule=RULE_READABLE)
    else:
        verdict = refused or check_structure(frame, spec, batch.label)
        if refused is not None:  # the rows are kept in quarantine, so count them
            verdict = replace(refused, rows_landed=frame.height, rows_quarantined=frame.height)

    if not verdict.accepted:
        kept = quarantine_dir / spec.name / f"{landed.month or spec.name}-{batch.sha256[:16]}.parquet"
        write_atomic(kept, data)
        if frame is not None and frame.height:
            problems = [] if refused else structure_problems(dict(frame.schema), spec.columns)
            rule, column, reason = problems[0] if problems else (verdict.rule, verdict.column, verdict.message)
            rows = pl.DataFrame(
                {
                    "_row": pl.int_range(frame.height, eager=True, dtype=pl.Int64),
                    "rule": [rule] * frame.height,
                    "column_name": [column] * frame.height,
                    "failures": [reason] * frame.height,
                    "row_json": rows_as_json(frame),
                    "batch_rejected": [True] * frame.height,
                },
                schema=QUARANTINE_SCHEMA,
            )
            _quarantine(conn, spec, batch, "raw", rows, run_id, now)
        verdict = with_next_step(verdict, batch)
        _log(conn, batch, "raw", verdict, run_id, now, quarantined_file=str(kept))
        return replace(verdict, source_file=batch.source_file, sha256=batch.sha256)

    rows = _with_lineage(frame.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64)), batch, run_id, now)
    where, params = _partition_filter(batch.month)
    raw_name = qualified("raw", spec.name)
    if raw_rows is None:
        replace_where(conn, raw_name, rows, where, params)
    elif raw_rows.name != raw_name:
        raise ValueError(f"a writer of {raw_rows.name} cannot take the rows of {raw_name}")
    else:
        raw_rows.replace(rows, where, params)
    _log(conn, batch, "raw", verdict, run_id, now)
    return replace(verdict, source_file=batch.source_file, sha256=batch.sha256)


#: ``table_name`` in the batch log of a misnamed file that no table's name explains (e.g. one outside any folder).
LANDING_ZONE = "(landing)"


def record_misnamed(
    conn: duckdb.DuckDBPyConnection, misnamed: list[MisnamedFile], run_id: str, now: datetime
) -> list[MisnamedFile]:
    """Log misnamed landing files in ``quarantine.batches`` (stage ``landing``, rule ``misnamed_file``, the reason as
    message), once per file version; return the ones logged now (the others were logged by an earlier run).

    Stage ``landing`` keeps them apart from the raw and validated verdicts the blocking checks judge: a misnamed file
    is reported, and no month's ingest waits for it or fails because of it.
    """
    log = ensure_batch_log(conn)
    logged: list[MisnamedFile] = []
    for item in misnamed:
        digest = file_version(item.path)
        rule = RULE_UNREADABLE_FILE if item.unreadable else RULE_MISNAMED_FILE
        (seen,) = fetch_row(
            conn,
            f"SELECT count(*) FROM {log} WHERE stage = 'landing' AND rule = ? AND source_file = ? "
            "AND sha256 IS NOT DISTINCT FROM ?",
            [rule, item.relative_name, digest],
        )
        if seen:
            continue
        append_row(
            conn,
            log,
            {
                "table_name": item.table or LANDING_ZONE,
                "month": None,
                "stage": "landing",
                "source_file": item.relative_name,
                "sha256": digest,
                "accepted": False,
                "rule": rule,
                "message": f"{item.relative_name}: not ingested: {item.reason}",
                "rows_landed": 0,
                "rows_valid": 0,
                "rows_quarantined": 0,
                "run_id": run_id,
                "checked_at": now,
            },
        )
        logged.append(item)
    return logged


def shares_by_month(conn: duckdb.DuckDBPyConnection, spec: TableSpec) -> dict[str, dict[str, float]]:
    """Each plausibility rule's share in each accepted month of ``validated.<table>``: ``{rule: {month: share}}``,
    read in one query (a run over many months reads the history once, not once per month)."""
    if not spec.plausibility or not spec.monthly or not table_exists(conn, "validated", spec.name):
        return {}
    columns = sorted({c for rule in spec.plausibility for c in rule.columns})
    selected = ", ".join(quote_identifier(c) for c in ["_month", *columns])
    frame = query_frame(conn, f"SELECT {selected} FROM {qualified('validated', spec.name)} WHERE _month IS NOT NULL")
    shares = frame.group_by("_month").agg(
        rule.rows.fill_null(False).cast(pl.Float64).mean().alias(rule.name) for rule in spec.plausibility
    )
    return {
        rule.name: dict(zip(shares["_month"].to_list(), shares[rule.name].to_list(), strict=True))
        for rule in spec.plausibility
    }


def history_without(shares: dict[str, dict[str, float]], month: str | None) -> dict[str, tuple[float, ...]]:
    """The history a month is held to: every other accepted month's share, in month order, by rule name."""
    return {
        rule: tuple(float(v) for m, v in sorted(by_month.items()) if m != month) for rule, by_month in shares.items()
    }


def read_codes(conn: duckdb.DuckDBPyConnection, spec: TableSpec) -> dict[str, frozenset[str]]:
    """The known codes a contract checks against, read from the validated reference tables."""
    codes: dict[str, frozenset[str]] = {}
    for code, (table, column) in spec.code_sources.items():
        name, col = qualified("validated", table), quote_identifier(column)
        values = conn.execute(f"SELECT DISTINCT {col} FROM {name} WHERE {col} IS NOT NULL").fetchall()
        codes[code] = frozenset(str(v[0]) for v in values)
    return codes


def validate_partition(
    conn: duckdb.DuckDBPyConnection, spec: TableSpec, month: str | None, run_id: str, now: datetime
) -> BatchVerdict:
    """Check the rows of the batch in ``raw`` against the table's contract and publish the good ones.

    Accepted: ``validated.<table>`` for the partition is replaced by the valid rows and bad rows (and exact copies of
    valid ones) are quarantined. Rejected (bad share above the limit, a frame-level rule broken, or a plausibility rule
    broken against the other accepted months): every row is quarantined and the partition of ``validated`` keeps its
    last accepted state.
    """
    [verdict] = validate_partitions(conn, spec, [month], run_id, now)
    return verdict


#: Rows checked by one pandera call at most: a run's months go to the contract together up to this many rows (a year
#: of flights is about 340k rows), so the per-call cost is paid about once a year of data while memory stays bounded
#: (ten years at 1M rows a call took the 10x training run past its 2.5 GiB budget).
CONTRACT_CALL_ROWS = 400_000


def _contract_groups(
    conn: duckdb.DuckDBPyConnection, raw_name: str, months: list[str | None]
) -> list[list[str | None]]:
    """``months`` in order, cut into runs of consecutive months of at most :data:`CONTRACT_CALL_ROWS` raw rows."""
    counts = dict(conn.execute(f"SELECT _month, count(*) FROM {raw_name} GROUP BY _month").fetchall())
    groups: list[list[str | None]] = [[]]
    rows = 0
    for month in months:
        if groups[-1] and rows + counts.get(month, 0) > CONTRACT_CALL_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(month)
        rows += counts.get(month, 0)
    return groups


def read_used_codes(
    conn: duckdb.DuckDBPyConnection, spec: TableSpec, users: Mapping[str, Sequence[tuple[str, str]]]
) -> dict[str, frozenset[str]]:
    """Per column of the reference table ``spec``, the values its accepted version holds that the accepted
    (validated) rows of its users use: what a new version must keep (values it never held, e.g. airports the source
    lacks, are not asked of it)."""
    used: dict[str, frozenset[str]] = {}
    for column, pairs in users.items():
        values: set[str] = set()
        for table, code in pairs:
            if table_exists(conn, "validated", table):
                col = quote_identifier(code)
                found = conn.execute(
                    f"SELECT DISTINCT {col} FROM {qualified('validated', table)} WHERE {col} IS NOT NULL"
                )
                values |= {str(v[0]) for v in found.fetchall()}
        held: set[str] = set()
        if values and table_exists(conn, "validated", spec.name):
            col = quote_identifier(column)
            held = {
                str(v[0])
                for v in conn.execute(f"SELECT DISTINCT {col} FROM {qualified('validated', spec.name)}").fetchall()
            }
        used[column] = frozenset(values & held)
    return used


def validate_partitions(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    months: list[str | None],
    run_id: str,
    now: datetime,
    code_users: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> list[BatchVerdict]:
    """:func:`validate_partition` for each of ``months`` in order, reading the reference codes and the plausibility
    history once: each month is held to the accepted months, those accepted earlier in this call included.

    The rows of all the months go through the pandera contract in one call (up to :data:`CONTRACT_CALL_ROWS` rows
    per call; a row's partition is its ``_month`` column); duplicates, keys, limits and plausibility are judged
    month by month from those failures. A failure about a whole frame cannot be told to one month: then each month is
    checked on its own, as a single month would be.

    ``code_users`` (a reference table's, ``FeedSpec.code_users``): a batch that drops a code their accepted rows use
    is rejected whole (``codes_still_used``).
    """
    codes = read_codes(conn, spec)
    still_used = read_used_codes(conn, spec, code_users) if code_users and not spec.monthly else {}
    shares = shares_by_month(conn, spec)
    raw_name = qualified("raw", spec.name)
    columns = [quote_identifier(c) for c in spec.columns]
    verdicts = []
    # validated rows of all the months inserted together (a row group at a time), in this one transaction
    with partition_writer(conn, qualified("validated", spec.name)) as validated_rows:
        for group in _contract_groups(conn, raw_name, months):
            # raw's _row is the row's place in its landed file (0, 1, ...), as split_rows numbers a batch's rows
            if group == [None]:
                where, params = _partition_filter(None)
            else:
                where, params = f"_month IN ({', '.join('?' for _ in group)})", list(group)
            frame = query_frame(
                conn,
                f"SELECT {', '.join(columns)}, _row, _month, _source_file, _sha256 FROM {raw_name} "
                f"WHERE {where} ORDER BY _month, _row",
                params,
            )
            checked = rule_failures(frame.select(*spec.columns, "_row", "_month"), spec, ContractContext(codes=codes))
            for month in group:
                rows = frame.filter(pl.col("_month").eq_missing(month))
                if rows.height == 0:
                    raise ValueError(
                        f"raw.{spec.name} has no rows for {month or 'the reference table'}: materialize raw first"
                    )
                own = None
                if checked.frame_level is None:
                    own = RuleFailures(checked.per_row.filter(pl.col("_month").eq_missing(month)), None)
                verdict = _validate_month(conn, spec, rows, own, codes, shares, run_id, now, validated_rows, still_used)
                verdicts.append(verdict)
    return verdicts


def _validate_month(
    conn: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    rows: pl.DataFrame,
    checked: RuleFailures | None,
    codes: dict[str, frozenset[str]],
    shares: dict[str, dict[str, float]],
    run_id: str,
    now: datetime,
    validated_rows: PartitionWriter,
    still_used: Mapping[str, frozenset[str]] | None = None,
) -> BatchVerdict:
    """Judge one month's raw rows (in landed order; ``checked``: their pandera failures, None to check them here),
    quarantine the bad ones, publish the good ones when the batch is accepted (through ``validated_rows``, a writer
    of ``validated.<table>``) and log the verdict."""
    first = rows.row(0, named=True)
    month = first["_month"]
    batch = Batch(spec.name, month, first["_source_file"], first["_sha256"])
    where, params = _partition_filter(month)
    context = ContractContext(
        month=month, codes=codes, history=history_without(shares, month), still_used=still_used or {}
    )
    split = split_rows(rows.select(list(spec.columns)), spec, context, batch.label, checked)

    ensure_table(conn, "validated", spec.name, data_table_columns(spec))
    _quarantine(conn, spec, batch, "validated", split.quarantined, run_id, now)
    if split.verdict.accepted:
        validated_rows.replace(_with_lineage(split.valid, batch, run_id, now), where, params)
        if month is not None:  # what validated now holds for the month, as the next month's history
            for rule in spec.plausibility:
                shares.setdefault(rule.name, {})[month] = share_of(split.valid, rule)
    verdict = with_next_step(split.verdict, batch)
    _log(conn, batch, "validated", verdict, run_id, now)
    return replace(verdict, source_file=batch.source_file, sha256=batch.sha256)


def row_accounting(
    conn: duckdb.DuckDBPyConnection, table: str, batches: Sequence[tuple[str | None, str]]
) -> dict[tuple[str | None, str], dict[str, int]]:
    """Rows of each landed file ``(month, sha256)`` in each table: landed (raw), validated, quarantined at the
    validated stage. One grouped query per table for all the batches (a query per month scanned the table each time:
    ten years of flights, 1.3 s)."""
    if not batches:
        return {}
    counts: dict[tuple[str | None, str], dict[str, int]] = {batch: {} for batch in batches}
    digests = sorted({sha256 for _, sha256 in batches})
    for key, schema, extra in (
        ("landed", "raw", ""),
        ("validated", "validated", ""),
        ("quarantined", "quarantine", " AND stage = 'validated'"),
    ):
        found: dict[tuple[str | None, str], int] = {}
        if table_exists(conn, schema, table):
            rows = conn.execute(
                f"SELECT _month, _sha256, count(*) FROM {qualified(schema, table)} "
                f"WHERE list_contains(?, _sha256){extra} GROUP BY ALL",
                [digests],
            ).fetchall()
            found = {(month, sha256): int(n) for month, sha256, n in rows}
        for batch in batches:
            counts[batch][key] = found.get(batch, 0)
    return counts


def latest_verdicts(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    stage: str | tuple[str, ...],
    months: list[str | None] | None = None,
) -> list[dict[str, object]]:
    """The newest batch-log entry per month for a table and stage (all months when ``months`` is None).

    Several stages, raw among them: the verdict on the newest version landed, the file raw judged last. Its raw
    rejection when raw rejected it (raw keeps the last accepted file, so a later validation is of that earlier file,
    and must not hide the rejection); else that file's newest later-stage verdict (validated); else raw's acceptance.

    A month with no entry is returned as ``{"month": month, "accepted": None}``.
    """
    if not table_exists(conn, *BATCH_LOG):
        return [{"month": month, "accepted": None} for month in months or []]
    name = qualified(*BATCH_LOG)
    stages = [stage] if isinstance(stage, str) else list(stage)
    cursor = conn.execute(
        f"""
        WITH entries AS (SELECT * FROM {name} WHERE table_name = ? AND list_contains(?, stage)),
        newest_raw AS (
            SELECT month, sha256, accepted FROM entries WHERE stage = 'raw' AND len(?) > 1
            QUALIFY row_number() OVER (PARTITION BY month ORDER BY checked_at DESC) = 1
        )
        SELECT entries.* FROM entries ANTI JOIN newest_raw ON entries.month IS NOT DISTINCT FROM newest_raw.month
        QUALIFY row_number() OVER (PARTITION BY month ORDER BY checked_at DESC) = 1
        UNION ALL BY NAME
        SELECT entries.* FROM entries JOIN newest_raw ON entries.month IS NOT DISTINCT FROM newest_raw.month
        WHERE CASE WHEN newest_raw.accepted THEN entries.sha256 = newest_raw.sha256 ELSE entries.stage = 'raw' END
        QUALIFY row_number() OVER (PARTITION BY entries.month ORDER BY stage = 'raw', checked_at DESC) = 1
        ORDER BY month
        """,
        [table, stages, stages],
    )
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    if months is None:
        return rows
    by_month = {row["month"]: row for row in rows}
    return [by_month.get(month, {"month": month, "accepted": None}) for month in months]
