"""Shared wiring for the two batch stages (raw and validated): materialization metadata and the blocking checks."""

from collections.abc import Sequence

import dagster as dg
import duckdb

from mlops_assets.core.contracts import BatchVerdict
from mlops_assets.core.ingest import latest_verdicts, row_accounting
from mlops_assets.core.specs import TableSpec
from mlops_assets.defs.partitions import MONTHS


def partitions_for(table: TableSpec) -> dg.DynamicPartitionsDefinition | None:
    """Monthly tables are partitioned by month; reference tables are replaced whole."""
    return MONTHS if table.monthly else None


def verdict_metadata(months: Sequence[str | None], verdicts: Sequence[BatchVerdict]) -> dict[str, dg.MetadataValue]:
    """A per-batch table of what happened and, when the run covers one month, its row counts (plotted across runs).

    A run over several months writes the same metadata on each month's materialization (Dagster attaches one result
    to the whole range), so counts are only given as numbers when they belong to exactly one month.
    """
    lines = ["| month | accepted | landed | valid | quarantined | sha256 | reason |", "|---|---|---|---|---|---|---|"]
    for month, verdict in zip(months, verdicts, strict=True):
        reason = verdict.message.replace("|", "/")
        lines.append(
            f"| {month or 'reference'} | {'yes' if verdict.accepted else '**no**'} | {verdict.rows_landed} | "
            f"{verdict.rows_valid} | {verdict.rows_quarantined} | {(verdict.sha256 or '')[:12]} | {reason} |"
        )
    metadata: dict[str, dg.MetadataValue] = {
        "months_in_run": dg.MetadataValue.int(len(months)),
        "batches": dg.MetadataValue.md("\n".join(lines)),
    }
    if len(verdicts) == 1:
        [verdict] = verdicts
        metadata |= {
            "rows_landed": dg.MetadataValue.int(verdict.rows_landed),
            "rows_valid": dg.MetadataValue.int(verdict.rows_valid),
            "rows_quarantined": dg.MetadataValue.int(verdict.rows_quarantined),
            # of the quarantined rows: exact copies (their row flowed once) and rows of a key that differing rows share
            "rows_duplicate": dg.MetadataValue.int(verdict.rows_duplicate),
            "rows_conflicting": dg.MetadataValue.int(verdict.rows_conflicting),
            "accepted": dg.MetadataValue.bool(verdict.accepted),
            "sha256": dg.MetadataValue.text(verdict.sha256 or ""),
        }
    return metadata


def log_verdicts(
    context: dg.AssetExecutionContext,
    table: TableSpec,
    stage: str,
    months: Sequence[str | None],
    verdicts: Sequence[BatchVerdict],
) -> None:
    """One line for the accepted batches of a run (a full year is twelve), and a line each for the rejected ones, whose
    reasons a person must read."""
    accepted = [(m, v) for m, v in zip(months, verdicts, strict=True) if v.accepted]
    for month, verdict in zip(months, verdicts, strict=True):
        if not verdict.accepted:
            context.log.error(verdict.message)
    if len(accepted) == 1 and len(verdicts) == 1:
        context.log.info(accepted[0][1].message)
    elif accepted:
        span = f"{accepted[0][0]}..{accepted[-1][0]}" if len(accepted) > 1 else str(accepted[0][0])
        valid = sum(v.rows_valid for _, v in accepted)
        quarantined = sum(v.rows_quarantined for _, v in accepted)
        rows = (
            f"{sum(v.rows_landed for _, v in accepted):,} rows"
            if stage == "raw"
            else (f"{valid:,} rows valid, {quarantined:,} quarantined")
        )
        rejected = [str(m) for m, v in zip(months, verdicts, strict=True) if not v.accepted]
        # "2 month(s) 2013-01..2013-03" would read as if February were in: name the rejected ones
        of = f" of {len(verdicts)}" if rejected else ""
        left_out = f" (rejected: {', '.join(rejected)})" if rejected else ""
        context.log.info(f"{table.name}: {len(accepted)}{of} month(s) {span} accepted at {stage}{left_out}: {rows}")


def judge_batches(
    conn: duckdb.DuckDBPyConnection,
    table: TableSpec,
    asset_key: dg.AssetKey,
    stage: str,
    check_name: str,
    months: list[str | None],
) -> dg.AssetCheckResult:
    """The stage's blocking check for the run's months, for the step's ``check_results``: it passes when the newest
    batch of every month was accepted at ``stage`` and, for the validated stage, when its rows add up: validated +
    quarantined = landed. Read on the step's own connection, after its writes committed (a connection of its own cost
    ~20 ms to open and close, per check)."""
    verdicts = latest_verdicts(conn, table.name, stage, months)
    accepted = [(v["month"], str(v["sha256"])) for v in verdicts if stage == "validated" and v.get("accepted")]
    counted = row_accounting(conn, table.name, accepted)  # type: ignore[arg-type]
    accounting = {str(month): counted[(month, sha256)] for month, sha256 in accepted}
    problems: list[str] = []
    for verdict in verdicts:
        label = verdict["month"] or "reference"
        if verdict.get("accepted") is None:
            problems.append(f"{table.name} {label}: no {stage} verdict recorded; materialize the asset first")
        elif not verdict["accepted"]:
            problems.append(str(verdict["message"]))
    for month, counts in accounting.items():
        if counts["validated"] + counts["quarantined"] != counts["landed"]:
            problems.append(
                f"{table.name} {month}: rows do not add up: {counts['validated']} validated + "
                f"{counts['quarantined']} quarantined != {counts['landed']} landed"
            )
    if not verdicts:
        problems.append(f"{table.name}: no batch has been {stage} yet")
    rejected = [v for v in verdicts if v.get("accepted") is False]
    metadata: dict[str, dg.RawMetadataValue] = {
        "batches_checked": len(verdicts),
        "batches_rejected": len(rejected),
        "rows_quarantined": sum(int(v.get("rows_quarantined") or 0) for v in verdicts),  # type: ignore[call-overload]
    }
    if rejected:
        metadata["rule"] = str(rejected[0]["rule"])
        metadata["column"] = str(rejected[0]["column_name"])
        metadata["quarantined_file"] = str(rejected[0].get("quarantined_file"))
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=not problems,
        description="; ".join(problems) if problems else f"{len(verdicts)} batch(es) accepted",
        metadata=metadata,
    )


def batch_check_spec(asset_key: dg.AssetKey, name: str, description: str) -> dg.AssetCheckSpec:
    """A blocking check of one batch stage, evaluated by the stage's own step (which holds the verdicts) rather than
    by a step of its own; the UI shows it on the asset like any check."""
    return dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=description)
