"""Features: point-in-time feature tables in ``features.<name>`` (one monthly partition at a time, built once however
many models train on them), and each model's online store export."""

import json
import time

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from polars.exceptions import PolarsError

from mlops_assets.core.features import (
    FeatureBuildError,
    covered_rows,
    feature_set_version,
    lookback_gaps,
    one_row_problems,
    sql_problems,
    write_months,
)
from mlops_assets.core.landing import stale_months
from mlops_assets.core.markdown import frame_to_markdown
from mlops_assets.core.online import build_export, write_export
from mlops_assets.core.specs import FeatureTableSpec, FeedSpec, ModelSpec
from mlops_assets.core.store import fetch_row, qualified, query_frame, table_exists
from mlops_assets.defs.ingest import month_changed_at
from mlops_assets.defs.keys import MODEL_TAG, features_key, keys_of, validated_key
from mlops_assets.defs.partitions import DUCKDB_POOL, MONTHS, SINGLE_RUN, row_count_metadata, run_months
from mlops_assets.defs.resources import PlatformStorage

DuckDBError = duckdb.Error  # inside a step, the name duckdb is its resource


def build_feature_asset(spec: FeatureTableSpec, feed: FeedSpec) -> dg.AssetsDefinition:
    version = feature_set_version(spec)

    @dg.asset(
        key=features_key(spec),
        deps=[validated_key(t) for t in spec.inputs],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,
        group_name="features",
        kinds={"duckdb", "polars"},
        pool=DUCKDB_POOL,
        code_version=version,
        description=f"`features.{spec.name}`: {spec.description} Every feature is computed as of `{spec.time_column}` "
        f"from facts known strictly before it; a month reads only itself and {spec.lookback_days} days before it. "
        f"Feature-set version (hash of the SQL and windows) is stored in every row and is this asset's code version.",
        check_specs=[one_row_check_spec(spec)],
    )
    def _features(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
        months = run_months(context)
        with duckdb.get_connection() as conn:
            monthly = [name for name in spec.inputs if feed.table(name).monthly]
            gaps = lookback_gaps(conn, spec, months, monthly)
            if gaps:
                said = "; ".join(
                    f"{month} reads "
                    + ", ".join(f"{table} of {'/'.join(missing)}" for table, missing in tables.items())
                    for month, tables in gaps.items()
                )
                raise dg.Failure(
                    description=f"features.{spec.name}: a month's {spec.lookback_days}-day look-back reads a month "
                    f"without validated rows ({said}): its batch was rejected (`mlops status` says why) or has not "
                    "landed. Built now, its windows and lookups would count nothing there. Land that month: its run "
                    "builds these too; meanwhile nothing is built over the gap and the last good state keeps serving",
                    metadata={"gaps": json.dumps(gaps)},
                )
            try:  # the build checks its rows before it commits: a broken one is rolled back, never published
                rows = write_months(conn, spec, months)
            except FeatureBuildError as error:
                raise dg.Failure(description=str(error), metadata={"problems": "; ".join(error.problems)}) from None
            except (DuckDBError, PolarsError) as error:
                # a spec that does not fit its SQL (a column it lacks, a time column that is text) fails deep in the
                # engine: said in the spec's terms, when the SQL run on the feed's declared tables shows why
                problems = sql_problems(spec, feed)
                if not problems:
                    raise
                raise dg.Failure(
                    description=f"feature table {spec.name} does not fit its SQL: {'; '.join(problems)}. Fix its "
                    f"FeatureTableSpec or SQL, then run this again (the months keep their last good build)"
                ) from error
            preview = query_frame(
                conn, f"SELECT * FROM {qualified('features', spec.name)} WHERE _month = ? LIMIT 5", [months[-1]]
            )
            one_row = one_row_result(conn, spec, list(months))
        span = f"{months[0]}..{months[-1]}" if len(months) > 1 else months[0]
        context.log.info(f"{spec.name}: {len(rows)} month(s) {span} built: {sum(rows.values()):,} rows")
        table = "\n".join(f"| {m} | {n} |" for m, n in rows.items())
        return dg.MaterializeResult(
            metadata={
                **row_count_metadata(rows),
                "feature_set_version": version,
                "features": len(spec.features),
                "rows_by_month": dg.MetadataValue.md("| month | rows |\n|---|---|\n" + table),
                "preview": dg.MetadataValue.md(frame_to_markdown(preview)),
            },
            check_results=[one_row],
        )

    return _features


#: The feature table's blocking check, evaluated by the step that builds the months.
ONE_ROW_CHECK = "one_row_per_entity"


def one_row_check_spec(spec: FeatureTableSpec) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        ONE_ROW_CHECK,
        asset=features_key(spec),
        blocking=True,
        description=f"Each built month has exactly one feature row per validated row of {covered_rows(spec)}, unique keys "
        f"({', '.join(spec.key)}), a label on every row and the current feature-set version. Held twice: before "
        "the build commits (a build that breaks it is rolled back and the step fails naming the months, so no reader "
        "ever sees it and the last good build stays), then this check evaluates it on the committed months (blocking).",
    )


def one_row_result(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, months: list[str]) -> dg.AssetCheckResult:
    """The one-row rule evaluated on the committed months, as every reader now sees them. ``write_months`` held the
    build to the same rule before it committed (a build that breaks it fails the step and is rolled back), so this
    fails only when something else changed the table in between; it reports what it found, not what it expects."""
    problems = one_row_problems(conn, spec, months)
    return dg.AssetCheckResult(
        asset_key=features_key(spec),
        check_name=ONE_ROW_CHECK,
        passed=not problems,
        description=f"{len(months)} month(s): "
        + ("; ".join(problems) if problems else f"one feature row per validated row of {covered_rows(spec)}"),
        metadata={
            "months_checked": len(months),
            "problems": len(problems),
            "feature_set_version": feature_set_version(spec),
        },
    )


def build_online_store_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features

    @dg.asset(
        key=keys_of(model).online_store,
        deps=[features_key(spec)],
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"parquet", "polars"},
        pool=DUCKDB_POOL,
        code_version=feature_set_version(spec),
        # eager, less its "no dep missing": every month is a partition of the features, and a month whose batch was
        # rejected stays missing for good, which stopped every later refresh; the export needs the newest month only
        automation_condition=(
            dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
            & dg.AutomationCondition.all_deps_blocking_checks_passed()
        ).with_label("eager (a month never built does not hold it back), upstream checks passed"),
        description=f"`$MLOPS_DATA_DIR/online_store/{model.name}/`: what the prediction service needs to compute "
        f"`{spec.name}` at request time, exported after each new month: the feature SQL's rows for the newest month "
        "and its look-back (with when each fact became known), the rows of the as-of lookups and the reference "
        "tables. The service runs the same point-in-time engine on them, so online and offline vectors are equal. "
        "Written as a new version folder, then `CURRENT` is replaced atomically; the service reloads it.",
    )
    def online_store(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage
    ) -> dg.MaterializeResult:
        with duckdb.get_connection() as conn:
            if not table_exists(conn, "features", spec.name):
                raise dg.Failure(description=f"features.{spec.name} is empty: build a month first")
            (newest,) = fetch_row(conn, f"SELECT max(_month) FROM {qualified('features', spec.name)}")
            export = build_export(conn, spec, newest)
        folder = storage.model(model.name).online_store_dir
        version = write_export(export, folder)
        context.log.info(f"online store {version}: facts through {export.manifest['facts_known_through']} UTC")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "version": version,
                "newest_month": newest,
                "facts_known_through": dg.MetadataValue.text(str(export.manifest["facts_known_through"])),
                "rows": dg.MetadataValue.json(export.manifest["rows"]),
                "path": dg.MetadataValue.path(str(folder / "versions" / version)),
            },
        )

    return online_store


#: The freshness check's name. The automation sensor runs it hourly; jobs leave it out (a run that just built the
#: months has nothing to tell it, and it would cost each run a step per feature table).
FRESHNESS_CHECK = "fresh_after_landing"


def freshness_check_keys(specs: list[FeatureTableSpec]) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(features_key(spec), FRESHNESS_CHECK) for spec in specs]


#: Features must be rebuilt within a day of their month's data landing (or changing).
FEATURES_MAX_DELAY_S = 24 * 3600


def build_freshness_check(spec: FeatureTableSpec, feed: FeedSpec) -> dg.AssetChecksDefinition:
    monthly = [t.name for t in feed.monthly_tables if t.name in spec.inputs]

    @dg.asset_check(
        asset=features_key(spec),
        name=FRESHNESS_CHECK,
        automation_condition=dg.AutomationCondition.cron_tick_passed("0 * * * *")
        & ~dg.AutomationCondition.in_progress(),
        description="Freshness: every month's features were built after its data last changed (new bytes landed; the "
        "same bytes landed again are no change), at most a day later. "
        "Dagster's own freshness policies judge an asset's last update, which cannot say 'per month, relative to when "
        "that month landed'; this check can, and the automation sensor runs it every hour. It fails (severity warn) "
        "with the stale months, e.g. when the landing sensor is stopped.",
    )
    def fresh_after_landing(context: dg.AssetCheckExecutionContext, storage: PlatformStorage) -> dg.AssetCheckResult:
        landed = month_changed_at(context.instance, storage.landing_dir, [feed.table(name) for name in monthly])
        built: dict[str, float | None] = {}
        for month in landed:
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=features_key(spec), asset_partitions=[month]), limit=1
            ).records
            built[month] = records[0].timestamp if records else None
        stale = stale_months(landed, built, time.time(), FEATURES_MAX_DELAY_S)
        return dg.AssetCheckResult(
            passed=not stale,
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(stale) if stale else f"all {len(landed)} landed month(s) built after they landed",
            metadata={"months_checked": len(landed), "stale_months": len(stale)},
        )

    return fresh_after_landing


def build_feature_table(
    spec: FeatureTableSpec, feed: FeedSpec
) -> tuple[dg.AssetsDefinition, list[dg.AssetChecksDefinition]]:
    """A feature table over ``feed`` (its blocking one-row check evaluated by the build step) and its freshness check
    (run hourly by the automation sensor)."""
    return build_feature_asset(spec, feed), [build_freshness_check(spec, feed)]
