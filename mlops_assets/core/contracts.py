"""Data contracts: the structural check of a landed batch and the pandera row check that splits it.

Two levels, both reported with the rule and the column that failed:

* **structure** (raw stage): the file must match its checksum sidecar and be readable parquet, non-empty, with exactly
  the contract's columns and types. A batch that fails is rejected whole.
* **rows** (validated stage): the pandera contract of the table (types, nullability, ranges, known codes, the
  partition's month, dates that exist, time columns consistent with the parts they repeat) and its key: an exact copy
  of a row is quarantined and the row flows once; rows that share a key but differ are all quarantined. Bad rows are
  quarantined with their reasons and the rest flows; when the bad share is above the table's limit, or a batch-level
  plausibility rule (a label's null share or rate against the accepted months) is broken, the whole batch is rejected
  and nothing of it flows.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from mlops_assets.core.specs import PARTITION_COLUMN, ContractContext, ShareRule, TableSpec

if TYPE_CHECKING:  # imported by the row check itself: a process that never validates skips its import
    import pandera.polars as pa

RULE_READABLE = "readable_parquet"
RULE_NON_EMPTY = "non_empty_batch"
RULE_COLUMN_PRESENT = "column_present"
RULE_COLUMN_EXPECTED = "column_expected"
RULE_COLUMN_TYPE = "column_type"
RULE_BATCH_REJECTED = "batch_rejected"
#: The landed bytes differ from their ``.sha256`` sidecar, or there is no sidecar to verify them with (raw stage).
RULE_CHECKSUM_MISMATCH = "checksum_mismatch"
RULE_CHECKSUM_MISSING = "checksum_missing"
#: An exact copy of an earlier row of the batch: quarantined, the earlier row flows (validated stage).
RULE_DUPLICATE_ROW = "duplicate_row"
#: Rows that share the table's key but differ: all quarantined, since which one is true is unknown.
RULE_CONFLICTING_KEY = "conflicting_key"
#: A batch-level share (a label's null share or rate) implausible against the accepted months: rejected whole.
RULE_LABEL_IMPLAUSIBLE = "label_implausible"
#: The same for a share of feature inputs (e.g. a month of all-null weather readings).
RULE_VALUES_IMPLAUSIBLE = "values_implausible"
#: A reference batch that drops codes accepted rows of other tables still use: rejected whole (validated stage).
RULE_CODES_STILL_USED = "codes_still_used"
#: A batch of a month after the current one (by the clock, UTC): data from the future, e.g. a wrong year (raw stage).
RULE_FUTURE_MONTH = "month_in_future"
#: A file in the landing zone whose name does not follow the layout (logged at stage ``landing``, never ingested).
RULE_MISNAMED_FILE = "misnamed_file"
#: A file named as a batch that cannot be read (a broken link, no read permission): logged at stage ``landing`` too.
RULE_UNREADABLE_FILE = "unreadable_file"
#: ``column_name`` of a rule about a whole row rather than one column.
WHOLE_ROW = "<row>"

#: Columns every quarantine table has, besides the lineage columns of the batch.
QUARANTINE_SCHEMA: dict[str, type[pl.DataType]] = {
    "_row": pl.Int64,
    "rule": pl.String,
    "column_name": pl.String,
    "failures": pl.String,
    "row_json": pl.String,
    "batch_rejected": pl.Boolean,
}


@dataclass(frozen=True)
class BatchVerdict:
    """The decision on one batch. ``rule`` and ``column`` name the first reason when it is rejected; ``source_file``
    and ``sha256`` identify the landed file once the ingest stage has read it."""

    accepted: bool
    message: str
    rows_landed: int
    rows_valid: int
    rows_quarantined: int
    rule: str | None = None
    column: str | None = None
    source_file: str | None = None
    sha256: str | None = None
    #: Of ``rows_quarantined``: exact copies of a row that flowed once, and rows whose key another, different row has.
    rows_duplicate: int = 0
    rows_conflicting: int = 0


@dataclass(frozen=True)
class RowSplit:
    """The rows of a batch that flow on (``valid``) and those kept back (``quarantined``, one row per input row).

    Both carry ``_row``, the row's position in the landed file, so every row can be traced back to it.
    """

    valid: pl.DataFrame
    quarantined: pl.DataFrame
    verdict: BatchVerdict


@dataclass(frozen=True)
class RuleFailures:
    """What the pandera contract found in some rows: one row per (row, rule) broken (``_row``, ``column``,
    ``order``, ``check``, ``failure``; ``_month`` too when the rows have a partition), and the first failure about
    the frame as a whole (None when none)."""

    per_row: pl.DataFrame
    frame_level: dict[str, Any] | None


class BatchUnreadableError(ValueError):
    """The landed file cannot be read as parquet."""


def read_batch(source: Path | bytes) -> pl.DataFrame:
    """Read a landed parquet batch; a corrupt file raises :class:`BatchUnreadableError` with the reader's reason.

    DuckDB's parquet reader reads it (the same frame as polars' reader gives, on every file of the 2013 feed). A
    corrupt file must come back as an error, never as a crash: single bytes changed in a 36 kB batch made polars'
    own reader abort the whole process on 8 of the first 9,000 positions (it asked for 2^61 bytes: nothing to catch,
    the run gone) and panic on more; after Arrow's reader had read them, the process aborted as it exited. DuckDB's
    reader raised an error or read the file over ~145,000 such corruptions (every position, four values each, read
    from a file; from bytes, as here, the first 12,000 positions with five values each)."""
    from polars.exceptions import PanicException  # a panic is no Exception: caught too, should one happen

    data = source if isinstance(source, bytes) else source.read_bytes()
    if not data:  # the reader would say the file is too small to be parquet
        raise BatchUnreadableError(
            "not readable as parquet: the file is empty (0 bytes): an upload that never finished?"
        )
    try:
        with _batch_reader().cursor() as cursor:  # bytes, never a path: DuckDB reads a path as a glob
            return cursor.read_parquet(io.BytesIO(data)).pl()
    except (Exception, PanicException) as error:  # every reader error means the same here: unreadable
        # DuckDB names the bytes by an internal object-store path nobody can look up: they are the file
        said = re.sub(r"File '?DUCKDB_INTERNAL_OBJECTSTORE://\w+'? too", "the file is too", str(error))
        said = re.sub(r"'?DUCKDB_INTERNAL_OBJECTSTORE://\w+'?", "the file", said)
        raise BatchUnreadableError(f"not readable as parquet: {type(error).__name__}: {said}") from error


_BATCH_READER: tuple[int, duckdb.DuckDBPyConnection] | None = None
_BATCH_READER_LOCK = threading.Lock()


def _batch_reader() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database of this process (a new one in a forked child), whose cursors read batches: a
    cursor costs microseconds where a new database costs ~20 ms, and steps on several threads read at once."""
    global _BATCH_READER
    with _BATCH_READER_LOCK:
        if _BATCH_READER is None or _BATCH_READER[0] != os.getpid():
            _BATCH_READER = (os.getpid(), duckdb.connect())
        return _BATCH_READER[1]


def _dtype_name(dtype: type[pl.DataType] | pl.DataType) -> str:
    return str(dtype)


def structure_problems(
    actual: Mapping[str, type[pl.DataType] | pl.DataType], expected: Mapping[str, type[pl.DataType] | pl.DataType]
) -> list[tuple[str, str, str]]:
    """Differences between a batch's schema and the contract, as ``(rule, column, message)``; empty when equal."""
    problems: list[tuple[str, str, str]] = []
    missing = [c for c in expected if c not in actual]
    unexpected = [c for c in actual if c not in expected]
    for column in missing:
        hint = f" (renamed to {unexpected[0]!r}?)" if len(missing) == 1 and len(unexpected) == 1 else ""
        problems.append((RULE_COLUMN_PRESENT, column, f"column {column!r} is missing{hint}"))
    for column in unexpected:
        problems.append((RULE_COLUMN_EXPECTED, column, f"column {column!r} is not in the contract"))
    for column, dtype in expected.items():
        if column in actual and _dtype_name(actual[column]) != _dtype_name(dtype):
            problems.append(
                (RULE_COLUMN_TYPE, column, f"column {column!r} has type {actual[column]}, the contract says {dtype}")
            )
    return problems


def check_structure(batch: pl.DataFrame, spec: TableSpec, label: str) -> BatchVerdict:
    """Accept a batch only when it is non-empty and has exactly the contract's columns and types."""
    problems = structure_problems(dict(batch.schema), spec.columns)
    if problems:
        rule, column, _ = problems[0]
        detail = "; ".join(message for _, _, message in problems)
        return BatchVerdict(
            accepted=False,
            message=f"{label}: schema changed, batch rejected whole: {detail}",
            rows_landed=batch.height,
            rows_valid=0,
            rows_quarantined=batch.height,
            rule=rule,
            column=column,
        )
    if batch.height == 0:
        return BatchVerdict(
            accepted=False,
            message=f"{label}: the batch is empty; an empty month is a broken feed, not a quiet month",
            rows_landed=0,
            rows_valid=0,
            rows_quarantined=0,
            rule=RULE_NON_EMPTY,
        )
    return BatchVerdict(True, f"{label}: schema matches the contract", batch.height, batch.height, 0)


def rows_as_json(batch: pl.DataFrame) -> pl.Series:
    """Each row as one JSON object, so a quarantined row keeps every original value whatever its schema. JSON has no
    NaN or infinity (polars writes them as null, a value the row may well hold legally): such a value is written as
    the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, the rest of its row as polars writes it. Bytes (a
    binary column, as some writers store strings) are written as hex: polars cannot write them to JSON."""
    if batch.width == 0:
        return pl.Series("row_json", [None] * batch.height, dtype=pl.String)
    binary = [name for name, dtype in batch.schema.items() if dtype == pl.Binary]
    as_text = batch.with_columns(pl.col(binary).bin.encode("hex")) if binary else batch
    encoded = as_text.select(pl.struct(pl.all()).struct.json_encode().alias("row_json")).to_series()
    floats = [name for name, dtype in batch.schema.items() if dtype.is_float()]
    if not floats:
        return encoded
    non_finite = batch.select(pl.any_horizontal(~pl.col(floats).is_finite()).fill_null(False)).to_series()
    if not non_finite.any():
        return encoded
    rows = encoded.to_list()
    for i in non_finite.arg_true().to_list():
        row = json.loads(rows[i])
        for name in floats:
            value = batch[name][i]
            if value is not None and not math.isfinite(value):
                row[name] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        rows[i] = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    return pl.Series("row_json", rows, dtype=pl.String)


_FAILURE_SCHEMA = {
    "failure_case": pl.String,
    "schema_context": pl.String,
    "column": pl.String,
    "check": pl.String,
    "check_number": pl.Int32,
    "index": pl.Int32,
}


def _row_failures(data: pl.DataFrame, schema: pa.DataFrameSchema) -> pl.DataFrame:
    """Pandera's failure cases, one row per (row, rule); empty when the batch passes."""
    from pandera.errors import SchemaError, SchemaErrors

    try:
        schema.validate(data, lazy=True)
    except SchemaErrors as errors:
        return errors.failure_cases
    except SchemaError as error:  # a single, non-lazy error: report it the same way
        return pl.DataFrame(
            {
                "failure_case": [str(error.failure_cases)],
                "schema_context": ["DataFrameSchema"],
                "column": [None],
                "check": [str(error.check)],
                "check_number": [None],
                "index": [None],
            },
            schema=_FAILURE_SCHEMA,
        )
    return pl.DataFrame(schema=_FAILURE_SCHEMA)


def share_of(batch: pl.DataFrame, rule: ShareRule) -> float:
    """The share of ``batch``'s rows that meet the rule's condition (a null condition counts as not met)."""
    if batch.height == 0:
        return 0.0
    return float(batch.select(rule.rows.fill_null(False).cast(pl.Float64).mean()).item())


def dropped_codes(
    valid: pl.DataFrame, context: ContractContext, label: str, held_back: pl.DataFrame | None = None
) -> tuple[str, str, str] | None:
    """``(rule, column, message)`` when the valid rows of a reference batch lack codes that accepted rows of other
    tables use (``context.still_used``); None when they keep them all. ``held_back``: the batch's rows quarantined by
    a rule (``_row``, ``failures`` and the columns), so that a code the file holds in a broken row is said as such,
    with the row and the rule, rather than as dropped."""
    for column, used in sorted(context.still_used.items()):
        kept = set(valid[column].drop_nulls().cast(pl.String)) if column in valid.columns else set()
        missing = sorted(used - kept)
        if not missing:
            continue
        broken: dict[str, str] = {}
        if held_back is not None and column in held_back.columns:
            for code, row, failures in held_back.select(pl.col(column).cast(pl.String), "_row", "failures").rows():
                if code in missing and code not in broken:
                    broken[code] = f"{code} (row {row}: {failures})"
        absent = [code for code in missing if code not in broken]

        def listed(codes: list[str]) -> str:
            return ", ".join(codes[:10]) + (f" and {len(codes) - 10} more" if len(codes) > 10 else "")

        what = [f"drops {column} {listed(absent)}"] if absent else []
        if broken:
            what.append(f"quarantines the row(s) of {column} {listed(list(broken.values()))}")
        return (
            RULE_CODES_STILL_USED,
            column,
            (
                f"{label}: {'; '.join(what)}, still used by accepted rows of other tables: batch rejected whole "
                "(those rows would be dropped or change their features); the last accepted version keeps serving. "
                "A reference file keeps every value the accepted data uses, in rows that pass the contract"
            ),
        )
    return None


def implausible_share(
    batch: pl.DataFrame, spec: TableSpec, context: ContractContext, label: str
) -> tuple[str, str, str] | None:
    """The first plausibility rule of the table the batch breaks, as ``(rule, column, message)``; None when none.

    The history (each accepted month's share but this one's) comes with the context, read from the warehouse by the
    caller, so that this stays a pure function of the batch.
    """
    downstream = "batch rejected whole, and nothing downstream (features, scores, drift, retraining, promotion, "
    downstream += "rollback) uses it"
    for rule in spec.plausibility:
        verdict = RULE_LABEL_IMPLAUSIBLE if rule.label else RULE_VALUES_IMPLAUSIBLE
        consequence = f"the {'labels' if rule.label else 'feature inputs'} of this month are suspect; {downstream}"
        share = share_of(batch, rule)
        history = context.history.get(rule.name, ())
        column = "+".join(rule.columns)
        found = f"{label}: '{rule.name}' holds for {share:.1%} of the rows"
        if len(history) < rule.min_history:
            if share > max(rule.min_share, rule.max_share_without_history):
                why = f"no accepted month to compare with, and above {rule.max_share_without_history:.0%} on its own"
                return verdict, column, f"{found} ({why}): {consequence}"
            continue
        typical = median(history)
        too_high = share > rule.min_share and share > rule.max_ratio * typical
        too_low = rule.two_sided and typical > rule.min_share and share < typical / rule.max_ratio
        if too_high or too_low:
            bound = (
                f"above {rule.max_ratio:g}x the median and above {rule.min_share:.0%}"
                if too_high
                else f"below the median / {rule.max_ratio:g}"
            )
            against = f"against a median of {typical:.1%} over {len(history)} accepted month(s)"
            return verdict, column, f"{found} {against} (implausible {bound}): {consequence}"
    return None


def _key_problems(distinct: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    """Rows (of a batch without exact copies) whose key another row has, as ``_row``, ``column``, ``order``,
    ``check``, ``failure``."""
    key = list(spec.key)
    if not key:
        schema = {"_row": pl.Int64, "column": pl.String, "order": pl.Int64, "check": pl.String, "failure": pl.String}
        return pl.DataFrame(schema=schema)
    rows_of_key = pl.col("_row").sort().cast(pl.String).str.join(", ").over(key)
    return distinct.filter(pl.len().over(key) > 1).select(
        "_row",
        pl.lit("+".join(key)).alias("column"),
        pl.lit(0, dtype=pl.Int64).alias("order"),
        pl.lit(RULE_CONFLICTING_KEY).alias("check"),
        pl.concat_str(
            pl.lit("+".join(key)),
            pl.lit(f": {RULE_CONFLICTING_KEY} (rows "),
            rows_of_key,
            pl.lit(" share this key with different values; which one is true is unknown)"),
        ).alias("failure"),
    )


def rule_failures(rows: pl.DataFrame, spec: TableSpec, context: ContractContext) -> RuleFailures:
    """Check ``rows`` against the table's pandera contract in one call.

    ``rows`` has the contract's columns, ``_row`` (the row's place in its landed file) and, for a monthly table,
    :data:`PARTITION_COLUMN` (each row's partition month), so one call can check the rows of many months; the failures
    carry ``_row`` and the partition column to find each row again.
    """
    by_row = [PARTITION_COLUMN, "_row"] if PARTITION_COLUMN in rows.columns else ["_row"]
    failures = _row_failures(rows.drop("_row"), spec.contract(context))
    frame_level = failures.filter(pl.col("index").is_null())
    first = frame_level.row(0, named=True) if frame_level.height else None
    # pandera's index is the row's position in ``rows``: map it back to the row
    positions = rows.select(*by_row, pl.int_range(pl.len(), dtype=pl.Int64).alias("index"))
    per_row = (
        failures.filter(pl.col("index").is_not_null())
        .with_columns(
            pl.col("index").cast(pl.Int64),
            pl.when(pl.col("schema_context") == "Column")
            .then(pl.col("column"))
            .otherwise(pl.lit(WHOLE_ROW))
            .alias("column"),
        )
        .join(positions, on="index", how="inner")
        .select(
            *by_row,
            "column",
            # a column's rules in the order the contract declares them: its range before what builds on the range
            pl.col("check_number").cast(pl.Int64).fill_null(-1).alias("order"),
            "check",
            pl.concat_str(pl.col("column"), pl.lit(": "), pl.col("check")).alias("failure"),
        )
    )
    return RuleFailures(per_row, first)


def split_rows(
    batch: pl.DataFrame,
    spec: TableSpec,
    context: ContractContext,
    label: str,
    checked: RuleFailures | None = None,
) -> RowSplit:
    """Validate the rows of a structurally sound batch against the table's contract and split them.

    Exact copies of an earlier row are set aside first (rule ``duplicate_row``; the row itself is judged once), then
    the remaining rows are checked by the pandera rules and the key (rule ``conflicting_key`` for every row of a key
    that differing rows share), then the batch-level plausibility rules. Exact copies lose nothing, so they do not
    count toward the bad-row limit, which is a share of the distinct rows.

    Args:
        batch: the batch's data columns, in landed order (row ``i`` is the ``i``-th landed row).
        spec: the table.
        context: partition month, reference codes and the history of the plausibility rules.
        label: how the batch is named in messages, e.g. ``"flights 2013-03"``.
        checked: the pandera failures of this batch's rows when the caller checked many batches in one call
            (:func:`rule_failures`, with ``_row`` the place in this batch); None checks the batch here.

    Returns:
        Valid rows, quarantined rows (``_row``, ``rule``, ``column_name``, ``failures``, ``row_json``,
        ``batch_rejected``) and the verdict. A rejected batch sends every row to quarantine: the bad ones with their
        rule, the others with rule ``batch_rejected``.
    """
    columns = list(spec.columns)
    data = batch.select(columns)
    indexed = data.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    # The first of identical rows is the one judged (and kept when valid); nulls compare equal here, as they would to a
    # person. Its copies add nothing, so they are set aside before any rule and the key are checked.
    first_of_same = pl.col("_row").min().over(columns) if indexed.height else pl.col("_row")
    marked = indexed.with_columns(first_of_same.alias("_original"))
    copies = marked.filter(pl.col("_row") != pl.col("_original")).select(
        "_row",
        pl.lit(WHOLE_ROW).alias("column"),
        pl.lit(0, dtype=pl.Int64).alias("order"),
        pl.lit(RULE_DUPLICATE_ROW).alias("check"),
        pl.format(
            "{}: {} (exact copy of row {})",
            pl.lit(WHOLE_ROW),
            pl.lit(RULE_DUPLICATE_ROW),
            pl.col("_original"),
        ).alias("failure"),
    )
    distinct = marked.filter(pl.col("_row") == pl.col("_original")).drop("_original")

    if checked is None:
        partition = [pl.lit(context.month).alias(PARTITION_COLUMN)] if context.month is not None else []
        checked = rule_failures(distinct.with_columns(*partition), spec, context)
    first = checked.frame_level
    # an exact copy fails as its original does: only the distinct rows' failures count
    rule_failures_of_rows = checked.per_row.select(pl.exclude(PARTITION_COLUMN)).join(
        distinct.select("_row"), on="_row", how="semi"
    )
    conflicts = _key_problems(distinct, spec)

    def per_row_of(problems: pl.DataFrame) -> pl.DataFrame:
        return (
            problems.sort("_row", "column", "order", "check")
            .group_by("_row", maintain_order=True)
            .agg(
                pl.col("check").first().alias("rule"),
                pl.col("column").first().alias("column_name"),
                pl.col("failure").unique(maintain_order=True).str.join("; ").alias("failures"),
            )
        )

    bad = per_row_of(pl.concat([rule_failures_of_rows, conflicts]))
    per_row = pl.concat([bad, per_row_of(copies)]).sort("_row")
    n_rows, n_distinct, n_bad = data.height, distinct.height, bad.height
    n_copies, n_conflicting = copies.height, conflicts.height
    bad_share = n_bad / n_distinct if n_distinct else 0.0
    rejected_reason: tuple[str, str | None, str] | None = None
    implausible = implausible_share(distinct.select(columns), spec, context, label)
    dropped = dropped_codes(
        distinct.join(bad.select("_row"), on="_row", how="anti"),
        context,
        label,
        distinct.join(bad.select("_row", "failures"), on="_row", how="inner"),
    )
    if first is not None:
        rejected_reason = (
            str(first["check"]),
            first["column"],
            f"{label}: the batch breaks the rule {first['check']!r}"
            + (f" on column {first['column']!r}" if first["column"] else "")
            + f" ({first['failure_case']}); batch rejected whole",
        )
    elif implausible is not None:
        rejected_reason = implausible
    elif dropped is not None:
        rejected_reason = dropped
    elif bad_share > spec.max_bad_share:
        top = (
            bad.group_by("column_name", "rule")
            .len()
            .sort("len", "column_name", "rule", descending=[True, False, False])
        )
        worst = top.row(0, named=True)
        rejected_reason = (
            str(worst["rule"]),
            worst["column_name"],
            (
                f"{label}: {n_bad:,} of {n_distinct:,} distinct rows ({bad_share:.2%}) break the contract, above the "
                f"{spec.max_bad_share:.0%} limit; batch rejected whole. Most common: column {worst['column_name']!r} "
                f"rule {worst['rule']!r} ({worst['len']} rows)"
            ),
        )

    def as_json(rows: pl.DataFrame) -> pl.DataFrame:
        """``_row`` and the whole landed row as JSON, for the given rows only (encoding is the costly part)."""
        return rows.select("_row", rows_as_json(rows.select(columns)))

    counts = {"rows_duplicate": n_copies, "rows_conflicting": n_conflicting}
    if rejected_reason is not None:
        rule, column, message = rejected_reason
        quarantined = (
            as_json(indexed)
            .join(per_row, on="_row", how="left")
            .with_columns(
                pl.col("rule").fill_null(RULE_BATCH_REJECTED),
                pl.col("failures").fill_null(pl.lit(f"batch rejected: {rule}")),
                pl.lit(True).alias("batch_rejected"),
            )
        )
        verdict = BatchVerdict(False, message, n_rows, 0, n_rows, rule=rule, column=column, **counts)
        return RowSplit(indexed.clear(), quarantined.select(list(QUARANTINE_SCHEMA)), verdict)

    kept_back = indexed.join(per_row.select("_row"), on="_row", how="semi")
    quarantined = per_row.join(as_json(kept_back), on="_row", how="left").with_columns(
        pl.lit(False).alias("batch_rejected")
    )
    valid = distinct.join(bad.select("_row"), on="_row", how="anti")
    message = (
        f"{label}: {valid.height:,} rows valid, {per_row.height:,} quarantined: {n_bad:,} break the contract "
        f"({bad_share:.2%} of {n_distinct:,} distinct rows, limit {spec.max_bad_share:.0%})"
    )
    if n_conflicting:
        message += f", of which {n_conflicting} share a key with other, different rows (none of them kept)"
    if n_copies:
        message += f"; {n_copies} exact copies of other rows (each row is judged once, its copies kept back)"
    verdict = BatchVerdict(True, message, n_rows, valid.height, per_row.height, **counts)
    return RowSplit(valid, quarantined.select(list(QUARANTINE_SCHEMA)), verdict)
