"""Ingest: the landing zone as observable sources, and ``raw.<table>`` as exact copies of the landed batches."""

from collections.abc import Collection
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb as duckdb_module
from dagster_duckdb import DuckDBResource

from mlops_assets.core.contracts import BatchVerdict
from mlops_assets.core.ingest import ingest_raw, record_misnamed
from mlops_assets.core.landing import (
    LandedFile,
    MisnamedFile,
    find_landed,
    misnamed_files,
    month_landed_at,
    scan_landing,
    utc_now,
)
from mlops_assets.core.specs import FeedSpec, TableSpec
from mlops_assets.core.store import PartitionWriter, partition_writer, qualified, transaction
from mlops_assets.defs.batches import (
    batch_check_spec,
    judge_batches,
    log_verdicts,
    partitions_for,
    verdict_metadata,
)
from mlops_assets.defs.keys import landing_key, raw_key
from mlops_assets.defs.partitions import DUCKDB_POOL, MONTHS, SINGLE_RUN, run_months
from mlops_assets.defs.resources import PlatformStorage

#: Dagster's tag for the data version of an observation.
DATA_VERSION_TAG = "dagster/data_version"
#: Marks an observation made by the ingest step (these bytes are in raw), as opposed to a plain look at the folder.
INGESTED_TAG = "mlops/ingested"
#: Marks an observation that reports a misnamed file in the table's folder (says nothing about what was ingested).
MISNAMED_TAG = "mlops/misnamed"


def newest_landing_record(
    instance: dg.DagsterInstance, table: TableSpec, month: str | None
) -> dg.EventLogRecord | None:
    """The newest observation record of ``table``'s landing source for ``month`` that is about its landed file:
    reports of misnamed files (tagged ``mlops/misnamed``) are passed over, they are about other files."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=landing_key(table), asset_partitions=[month] if month else None), limit=20
    ).records
    for record in records:
        observation = record.asset_observation
        if observation is not None and observation.tags.get(MISNAMED_TAG) != "true":
            return record
    return None


def newest_landing_observation(
    instance: dg.DagsterInstance, table: TableSpec, month: str | None
) -> dg.AssetObservation | None:
    """The observation of :func:`newest_landing_record`."""
    record = newest_landing_record(instance, table, month)
    return None if record is None else record.asset_observation


def month_changed_at(instance: dg.DagsterInstance, landing_dir: Path, tables: list[TableSpec]) -> dict[str, float]:
    """When each landed month's data last changed (epoch seconds): the newest of its files' modification times, but
    for a file whose bytes are the ones last ingested, the time of that ingest: the same bytes landed again (a
    re-delivery) change nothing, and the landing sensor rightly asks for no run."""
    changed: dict[str, float] = {}
    for month in month_landed_at(landing_dir, [t.name for t in tables]):
        for table in tables:
            landed = find_landed(landing_dir, table.name, month)
            if landed is None:
                continue
            record = newest_landing_record(instance, table, month)
            tags = record.asset_observation.tags if record is not None and record.asset_observation else {}
            same = tags.get(INGESTED_TAG) == "true" and tags.get(DATA_VERSION_TAG) == landed.sha256
            at = record.timestamp if same and record is not None else landed.path.stat().st_mtime
            changed[month] = max(changed.get(month, 0.0), at)
    return changed


def ingested_version(
    instance: dg.DagsterInstance, table: TableSpec, month: str | None, accepted_only: bool = False
) -> str | None:
    """The sha256 of the file last ingested for ``table`` / ``month``, from Dagster's event log (not DuckDB); None
    when the newest look at the file is not an ingest (it landed, or changed, since), or with ``accepted_only``, when
    that ingest rejected it (its checksum file, say, which may have been fixed since)."""
    observation = newest_landing_observation(instance, table, month)
    if observation is None or observation.tags.get(INGESTED_TAG) != "true":
        return None
    accepted = observation.metadata.get("accepted")
    if accepted_only and not (accepted is not None and accepted.value is True):
        return None
    return observation.tags.get(DATA_VERSION_TAG)


def landed_version(instance: dg.DagsterInstance, table: TableSpec, month: str | None) -> str | None:
    """The data version of the newest observation of ``table``'s landing source for ``month`` (ingested or not)."""
    observation = newest_landing_observation(instance, table, month)
    return None if observation is None else observation.tags.get(DATA_VERSION_TAG)


def landed_observations(
    instance: dg.DagsterInstance, tables: Collection[TableSpec], files: Collection[LandedFile]
) -> list[dg.AssetObservation]:
    """An observation of its landing source (data version = sha256) for each landed file whose bytes Dagster has not
    seen yet.

    Whoever notices a landed file records them (``mlops replay``, the landing sensor) before any run ingests it: a raw
    step records the landing version it read when it starts, so without them a file's first ingest records none, and
    the UI shows the raw table "Unsynced" as soon as the ingest step's own observation appears.
    """
    by_name = {t.name: t for t in tables}
    observations = []
    for landed in files:
        table = by_name.get(landed.table)
        if table is None or landed_version(instance, table, landed.month) == landed.sha256:
            continue
        observations.append(
            dg.AssetObservation(
                asset_key=landing_key(table),
                partition=landed.month,
                tags={DATA_VERSION_TAG: landed.sha256},
                metadata={"source_file": landed.relative_name},
            )
        )
    return observations


def misnamed_of(table: TableSpec, misnamed: list[MisnamedFile]) -> list[MisnamedFile]:
    """The misnamed files the ingest step of ``table`` reports: those of its folder (or meant for it), and those no
    table's name explains (each step reports them; the batch log keeps one entry per file version)."""
    return [m for m in misnamed if m.table in (table.name, None)]


def misnamed_metadata(misnamed: list[MisnamedFile]) -> dict[str, dg.MetadataValue]:
    """The misnamed files as a table in the materialization's metadata, with their count."""
    lines = ["| file | reason |", "|---|---|"]
    lines += [f"| `{m.relative_name}` | {m.reason.replace('|', '/')} |" for m in misnamed]
    return {
        "misnamed_files": dg.MetadataValue.int(len(misnamed)),
        "misnamed": dg.MetadataValue.md("\n".join(lines) if misnamed else "none"),
    }


def build_landing_source(table: TableSpec) -> dg.SourceAsset:
    """The landed files of one table; the data version of each month (or of the reference file) is its sha256."""

    @dg.observable_source_asset(
        key=landing_key(table),
        partitions_def=partitions_for(table),
        group_name="landing",
        description=f"Landed files of `{table.name}` under $MLOPS_DATA_DIR/landing; data version = sha256. "
        f"{table.description}",
    )
    def _landing(
        context: dg.AssetExecutionContext, storage: PlatformStorage
    ) -> dg.DataVersion | dg.DataVersionsByPartition:
        files = [f for f in scan_landing(storage.landing_dir) if f.table == table.name]
        if not table.monthly:
            return dg.DataVersion(files[0].sha256 if files else "not-landed")
        known = set(context.instance.get_dynamic_partitions(MONTHS.name))
        return dg.DataVersionsByPartition({f.month: f.sha256 for f in files if f.month in known})

    return _landing


def build_raw_asset(table: TableSpec, known_tables: Collection[str]) -> dg.AssetsDefinition:
    """``raw.<table>``; ``known_tables`` are every table that has a landing folder (a folder of another name is
    reported as misnamed)."""

    @dg.asset(
        key=raw_key(table),
        deps=[landing_key(table)],
        partitions_def=partitions_for(table),
        backfill_policy=SINGLE_RUN if table.monthly else None,
        group_name="ingest",
        kinds={"duckdb"},
        pool=DUCKDB_POOL,
        description=f"`raw.{table.name}`: exact copy of each landed `{table.name}` batch plus ingest metadata (source "
        "file, sha256, row position, run, time). A batch that does not match its `.sha256` checksum file, or is "
        "unreadable, empty or re-shaped, is rejected whole: raw keeps its last accepted state, the file's bytes are "
        "kept under $MLOPS_DATA_DIR/quarantine and the blocking check `schema_contract` fails with the rule and "
        "column. "
        "Files of the table's folder whose names do not follow the layout are reported in the log, the metadata "
        "(`misnamed`) and `quarantine.batches` (rule `misnamed_file`), never ingested.",
        check_specs=[batch_check_spec(raw_key(table), SCHEMA_CHECK, SCHEMA_CHECK_DESCRIPTION)],
    )
    def _raw(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage
    ) -> dg.MaterializeResult:
        months: list[str | None] = list(run_months(context)) if table.monthly else [None]
        now = utc_now()  # UTC: the verdicts' order must not jump back with the clocks
        misnamed = misnamed_of(table, misnamed_files(storage.landing_dir, known_tables))
        with duckdb.get_connection() as conn:
            # A misnamed file is never ingested: say so on every run, and log it once per file version (in its own
            # commit, so that the report stays when a month below fails).
            with transaction(conn):
                newly = record_misnamed(conn, misnamed, context.run.run_id, now)
            for item in misnamed:
                seen = "" if item in newly else " (logged before)"
                context.log.warning(f"misnamed file not ingested: {item.relative_name}: {item.reason}{seen}")
            # one commit for all the run's months, their rows inserted together (a row group at a time)
            with partition_writer(conn, qualified("raw", table.name)) as raw_rows:
                verdicts = [ingest_month(context, conn, storage, month, misnamed, now, raw_rows) for month in months]
            schema_check = judge_batches(conn, table, raw_key(table), "raw", SCHEMA_CHECK, months)
        log_verdicts(context, table, "raw", months, verdicts)
        return dg.MaterializeResult(
            metadata={**verdict_metadata(months, verdicts), **misnamed_metadata(misnamed)},
            check_results=[schema_check],
        )

    def ingest_month(
        context: dg.AssetExecutionContext,
        conn: duckdb_module.DuckDBPyConnection,
        storage: PlatformStorage,
        month: str | None,
        misnamed: list[MisnamedFile],
        now: datetime,
        raw_rows: PartitionWriter,
    ) -> BatchVerdict:
        """Ingest one month's batch (or the reference file) through ``raw_rows`` and record the bytes read as a
        landing observation."""
        landed = find_landed(storage.landing_dir, table.name, month)
        if landed is None:
            what = f"month {month}" if month else "the reference file"
            how = f"mlops replay --month {month}" if month else "mlops replay --through 2013-03"
            near = "".join(f" Misnamed, not ingested: {m.relative_name} ({m.reason})." for m in misnamed if m.table)
            raise dg.Failure(
                description=f"Nothing has landed for {table.name}, {what}.{near} Run `{how}`, then run again."
            )
        verdict = ingest_raw(
            conn, table, landed, storage.landing_dir, storage.quarantine_dir, context.run.run_id, now, raw_rows
        )
        # Record which bytes were ingested as the landing source's data version, per month: the UI shows it and the
        # landing sensor reads it to skip files that are already in.
        context.log_event(
            dg.AssetObservation(
                asset_key=landing_key(table),
                partition=month,
                tags={DATA_VERSION_TAG: str(verdict.sha256), INGESTED_TAG: "true"},
                metadata={
                    "source_file": str(verdict.source_file),
                    "rows_landed": verdict.rows_landed,
                    "accepted": verdict.accepted,
                },
            )
        )
        return verdict

    return _raw


#: The raw stage's blocking check, evaluated by the ingest step itself (it holds the verdicts).
SCHEMA_CHECK = "schema_contract"
SCHEMA_CHECK_DESCRIPTION = (
    "The newest landed batch of each month is readable, non-empty and has exactly the contract's columns and types. "
    "Blocking: nothing downstream runs for a rejected batch."
)


def build_ingest(
    feed: FeedSpec, known_tables: Collection[str] | None = None
) -> tuple[list[dg.SourceAsset | dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    """The feed's landing sources and raw tables (built once, whatever the number of models reading them).

    Args:
        known_tables: every registered feed's tables (default: this feed's): a landing folder or reference file named
            after none of them is reported as misnamed. With several feeds, pass all their tables.
    """
    known = set(known_tables) if known_tables is not None else {t.name for t in feed.tables}
    sources = [build_landing_source(t) for t in feed.tables]
    raws = [build_raw_asset(t, known) for t in feed.tables]
    return [*sources, *raws], []
