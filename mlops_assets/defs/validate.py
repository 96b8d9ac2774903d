"""Validation: ``validated.<table>`` holds the rows that pass the table's pandera contract; the rest go to
``quarantine.<table>`` with the rule, the column and the source file."""

from statistics import median

import dagster as dg
import duckdb as duckdb_module  # the steps' resource parameter is named duckdb
from dagster_duckdb import DuckDBResource

from mlops_assets.core.ingest import validate_partitions
from mlops_assets.core.landing import utc_now
from mlops_assets.core.specs import FeedSpec, TableSpec
from mlops_assets.core.store import qualified, transaction
from mlops_assets.defs.batches import (
    batch_check_spec,
    judge_batches,
    log_verdicts,
    partitions_for,
    verdict_metadata,
)
from mlops_assets.defs.keys import raw_key, validated_key
from mlops_assets.defs.partitions import DUCKDB_POOL, SINGLE_RUN, run_months

#: A month's row count outside [1/ratio, ratio] x the median of other months is flagged.
ROW_COUNT_RATIO = 2.0


def build_validated_asset(table: TableSpec, feed: FeedSpec) -> dg.AssetsDefinition:
    code_tables = sorted({source for source, _ in table.code_sources.values()})
    # a reference table whose codes other tables' accepted rows use may not drop them (read, not a dependency)
    code_users = feed.code_users(table.name) if not table.monthly else {}

    @dg.asset(
        key=validated_key(table),
        deps=[raw_key(table), *(validated_key(t) for t in code_tables)],
        partitions_def=partitions_for(table),
        backfill_policy=SINGLE_RUN if table.monthly else None,
        group_name="validate",
        kinds={"duckdb", "pandera"},
        pool=DUCKDB_POOL,
        description=f"`validated.{table.name}`: rows of the landed batch that pass the pandera contract (types, "
        "nullability, ranges, known codes, the partition's month, dates that exist, time columns consistent with the "
        f"parts they repeat) and the key. Bad rows go to `quarantine.{table.name}` with the rule, the column, the "
        "source file and the whole row as JSON; an exact copy of a row is quarantined (`duplicate_row`) and the row "
        f"flows once; rows that share a key but differ are all quarantined (`conflicting_key`). Above {table.max_bad_share:.0%} bad rows, or when a plausibility rule "
        "(a label's null share against the accepted months: `label_implausible`; a feature input's: "
        "`values_implausible`) is broken, the batch is "
        "rejected whole and the last accepted state stays.",
        check_specs=[
            batch_check_spec(validated_key(table), ROW_CHECK, row_check_description(table)),
            *([row_count_check_spec(table)] if table.monthly else []),
        ],
    )
    def _validated(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
        months: list[str | None] = list(run_months(context)) if table.monthly else [None]
        now = utc_now()  # UTC: the verdicts' order must not jump back with the clocks
        with duckdb.get_connection() as conn:
            with transaction(conn):  # one commit for all the run's months
                verdicts = validate_partitions(conn, table, months, context.run.run_id, now, code_users)
            checks = [judge_batches(conn, table, validated_key(table), "validated", ROW_CHECK, months)]
            if table.monthly:
                checks.append(judge_row_counts(conn, table, months))
        log_verdicts(context, table, "validated", months, verdicts)
        return dg.MaterializeResult(metadata=verdict_metadata(months, verdicts), check_results=checks)

    return _validated


#: The validated stage's checks, evaluated by the validation step itself (it holds the verdicts and the counts).
ROW_CHECK, ROW_COUNT_CHECK = "row_contract", "row_count_vs_history"


def row_check_description(table: TableSpec) -> str:
    return (
        f"The newest batch of each month has at most {table.max_bad_share:.0%} bad rows, no frame-level failure and "
        "no implausible label share against the accepted months, and its rows add up: validated + quarantined = "
        "landed. Blocking: a rejected month reaches no feature, score, retraining, promotion or rollback, and this "
        "check says why."
    )


def row_count_check_spec(table: TableSpec) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        ROW_COUNT_CHECK,
        asset=validated_key(table),
        description=f"Each month's validated row count is within {ROW_COUNT_RATIO:g}x of the median of the other "
        "months (a warning: a half-delivered month looks valid row by row).",
    )


def judge_row_counts(
    conn: duckdb_module.DuckDBPyConnection, table: TableSpec, months: list[str | None]
) -> dg.AssetCheckResult:
    """Warn when a month's validated row count is far from the median of the other months (a month with no
    validated row, its whole batch quarantined, counts as 0)."""
    counts = dict(
        conn.execute(f"SELECT _month, count(*) FROM {qualified('validated', table.name)} GROUP BY _month").fetchall()
    )
    outliers = []
    for month in months:
        others = [n for m, n in counts.items() if m != month]
        if not others:
            continue
        typical, count = median(others), counts.get(month, 0)
        if not (typical / ROW_COUNT_RATIO <= count <= typical * ROW_COUNT_RATIO):
            outliers.append(f"{month}: {count} rows vs a median of {typical:g}")
    return dg.AssetCheckResult(
        asset_key=validated_key(table),
        check_name=ROW_COUNT_CHECK,
        passed=not outliers,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(outliers) if outliers else f"{len(months)} month(s) within range",
        metadata={"months_compared": len(counts)},
    )


def build_validate(feed: FeedSpec) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The feed's validated tables, each with its contract checks (built once for all models)."""
    return [build_validated_asset(t, feed) for t in feed.tables], []
