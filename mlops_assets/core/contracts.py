"""Data contracts: the structural check of a landed batch and the pandera row check that splits it.

Two levels, both reported with the rule and the column that failed:

* **structure** (raw stage): the file must be readable parquet, non-empty, with exactly the contract's columns and types.
  A batch that fails is rejected whole.
* **rows** (validated stage): the pandera contract of the table (types, nullability, ranges, known codes, the partition's
  month, a unique key). Bad rows are quarantined with their reasons and the rest flows; when the bad share is above the
  table's limit the whole batch is rejected and nothing of it flows.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from mlops_assets.core.specs import ContractContext, TableSpec

RULE_READABLE = "readable_parquet"
RULE_NON_EMPTY = "non_empty_batch"
RULE_COLUMN_PRESENT = "column_present"
RULE_COLUMN_EXPECTED = "column_expected"
RULE_COLUMN_TYPE = "column_type"
RULE_BATCH_REJECTED = "batch_rejected"

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


@dataclass(frozen=True)
class RowSplit:
    """The rows of a batch that flow on (``valid``) and those kept back (``quarantined``, one row per input row).

    Both carry ``_row``, the row's position in the landed file, so every row can be traced back to it.
    """

    valid: pl.DataFrame
    quarantined: pl.DataFrame
    verdict: BatchVerdict


class BatchUnreadableError(ValueError):
    """The landed file cannot be read as parquet."""


def read_batch(source: Path | bytes) -> pl.DataFrame:
    """Read a landed parquet batch; a corrupt file raises :class:`BatchUnreadableError` with the reader's reason."""
    try:
        return pl.read_parquet(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as error:  # polars raises several error types for corrupt input; all mean the same here
        raise BatchUnreadableError(f"not readable as parquet: {type(error).__name__}: {error}") from error


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
    """Each row as one JSON object, so a quarantined row keeps every original value whatever its schema."""
    if batch.width == 0:
        return pl.Series("row_json", [None] * batch.height, dtype=pl.String)
    return batch.select(pl.struct(pl.all()).struct.json_encode().alias("row_json")).to_series()


_FAILURE_SCHEMA = {
    "failure_case": pl.String,
    "schema_context": pl.String,
    "column": pl.String,
    "check": pl.String,
    "index": pl.Int32,
}


def _row_failures(data: pl.DataFrame, schema: pa.DataFrameSchema) -> pl.DataFrame:
    """Pandera's failure cases, one row per (row, rule); empty when the batch passes."""
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
                "index": [None],
            },
            schema=_FAILURE_SCHEMA,
        )
    return pl.DataFrame(schema=_FAILURE_SCHEMA)


def split_rows(batch: pl.DataFrame, spec: TableSpec, context: ContractContext, label: str) -> RowSplit:
    """Validate the rows of a structurally sound batch against the table's pandera contract and split them.

    Args:
        batch: the batch's data columns, in landed order (row ``i`` is the ``i``-th landed row).
        spec: the table.
        context: partition month and reference codes.
        label: how the batch is named in messages, e.g. ``"flights 2013-03"``.

    Returns:
        Valid rows, quarantined rows (``_row``, ``rule``, ``column_name``, ``failures``, ``row_json``,
        ``batch_rejected``) and the verdict. A rejected batch sends every row to quarantine: the bad ones with their
        rule, the others with rule ``batch_rejected``.
    """
    data = batch.select(list(spec.columns))
    failures = _row_failures(data, spec.contract(context))
    frame_level = failures.filter(pl.col("index").is_null())
    if frame_level.height:
        first = frame_level.row(0, named=True)
        failures = failures.filter(pl.col("index").is_not_null())
    # Frame-level rules name the frame, not a column: a key violation is reported on the key's columns.
    frame_rule_column = (
        pl.when(pl.col("check").str.contains("uniqueness")).then(pl.lit("+".join(spec.key))).otherwise(pl.lit("<row>"))
    )
    per_row = (
        failures.with_columns(
            pl.when(pl.col("schema_context") == "Column")
            .then(pl.col("column"))
            .otherwise(frame_rule_column)
            .alias("column")
        )
        .with_columns(pl.concat_str(pl.col("column"), pl.lit(": "), pl.col("check")).alias("failure"))
        .sort("index", "column", "check")
        .group_by("index", maintain_order=True)
        .agg(
            pl.col("check").first().alias("rule"),
            pl.col("column").first().alias("column_name"),
            pl.col("failure").unique(maintain_order=True).str.join("; ").alias("failures"),
        )
        .rename({"index": "_row"})
        .with_columns(pl.col("_row").cast(pl.Int64))
    )
    n_rows, n_bad = data.height, per_row.height
    bad_share = n_bad / n_rows if n_rows else 0.0
    rejected_reason: tuple[str, str | None, str] | None = None
    if frame_level.height:
        rejected_reason = (
            str(first["check"]),
            first["column"],
            f"{label}: the batch breaks the rule {first['check']!r}"
            + (f" on column {first['column']!r}" if first["column"] else "")
            + f" ({first['failure_case']}); batch rejected whole",
        )
    elif bad_share > spec.max_bad_share:
        top = (
            per_row.group_by("column_name", "rule")
            .len()
            .sort("len", "column_name", "rule", descending=[True, False, False])
        )
        worst = top.row(0, named=True)
        rejected_reason = (
            str(worst["rule"]),
            worst["column_name"],
            f"{label}: {n_bad} of {n_rows} rows ({bad_share:.2%}) break the contract, above the "
            f"{spec.max_bad_share:.0%} limit; batch rejected whole. Most common: column {worst['column_name']!r} "
            f"rule {worst['rule']!r} ({worst['len']} rows)",
        )

    indexed = data.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    json_rows = indexed.select("_row", rows_as_json(data))
    if rejected_reason is not None:
        rule, column, message = rejected_reason
        quarantined = json_rows.join(per_row, on="_row", how="left").with_columns(
            pl.col("rule").fill_null(RULE_BATCH_REJECTED),
            pl.col("failures").fill_null(pl.lit(f"batch rejected: {rule}")),
            pl.lit(True).alias("batch_rejected"),
        )
        verdict = BatchVerdict(False, message, n_rows, 0, n_rows, rule=rule, column=column)
        return RowSplit(indexed.clear(), quarantined.select(list(QUARANTINE_SCHEMA)), verdict)

    quarantined = per_row.join(json_rows, on="_row", how="left").with_columns(pl.lit(False).alias("batch_rejected"))
    valid = indexed.join(per_row.select("_row"), on="_row", how="anti")
    message = (
        f"{label}: {n_rows - n_bad} rows valid, {n_bad} quarantined ({bad_share:.2%}, limit {spec.max_bad_share:.0%})"
    )
    verdict = BatchVerdict(True, message, n_rows, valid.height, n_bad)
    return RowSplit(valid, quarantined.select(list(QUARANTINE_SCHEMA)), verdict)
