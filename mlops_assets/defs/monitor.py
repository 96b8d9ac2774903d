"""Monitoring, per model: each landed month scored by the serving models (``<model>.batch_predictions``), compared
with the champion's reference profile (``<model>.drift_report``) and, with its labels, judged
(``<model>.live_performance``).

All three run on their own after the month's features are built (eager automation, gated on the features' blocking
checks). Each materialization carries its per-month results as typed records (``core.records``) in the ``by_month``
metadata; the model's own sensors read those, never DuckDB and never another model's.
"""

from dataclasses import replace
from typing import Any, TypeVar

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from mlops_assets.core.drift import DriftVerdict, compare, drift_histograms_plot, histogram_pairs
from mlops_assets.core.evaluation import markdown_image
from mlops_assets.core.features import feature_set_version
from mlops_assets.core.landing import write_atomic
from mlops_assets.core.markdown import frame_to_markdown
from mlops_assets.core.monitoring import (
    SCORING_VARIANTS,
    ScoringModel,
    fallback_live,
    live_performance,
    online_rows_of,
    score_month,
    store_month_scores,
)
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.records import DriftSummary, LiveSummary
from mlops_assets.core.registry import CHAMPION, SHADOW, Registry, evaluated_roc_auc, rollback_candidate
from mlops_assets.core.specs import FeatureTableSpec, ModelSpec
from mlops_assets.core.store import ensure_table_like, query_frame, replace_where, table_exists, transaction
from mlops_assets.core.training import load_version
from mlops_assets.defs.keys import MODEL_TAG, features_key, keys_of, table_of
from mlops_assets.defs.partitions import DUCKDB_POOL, MONTHS, SINGLE_RUN, row_count_metadata, run_months
from mlops_assets.defs.resources import MonitoringPolicy, PlatformStorage

#: The metadata entry holding each month's record.
BY_MONTH = "by_month"
R = TypeVar("R", DriftSummary, LiveSummary)
#: Histograms shown in the drift report.
TOP_DRIFTED = 4


def after_features() -> dg.AutomationCondition:
    """Eager: run when an upstream month updates, never while upstream is missing or running, and only once every
    blocking check of the upstream assets passed."""
    eager = dg.AutomationCondition.eager()
    checks = dg.AutomationCondition.all_deps_blocking_checks_passed()
    return (eager & checks).with_label("eager, upstream checks passed")


def _scoring_model(registry: Registry, variant: str, version: str) -> ScoringModel:
    """``version`` loaded to score months, with the test month that tells which months it trained on."""
    test_month = registry.get(version).metadata["data"]["test_month"]
    return ScoringModel(variant, version, test_month, load_version(registry, version))


def scoring_models(registry: Registry) -> list[ScoringModel]:
    """The champion and, when the ``shadow`` alias is set, the shadow model."""
    named = {
        variant: registry.alias(alias) for variant, alias in zip(SCORING_VARIANTS, (CHAMPION, SHADOW), strict=True)
    }
    return [_scoring_model(registry, variant, version) for variant, version in named.items() if version is not None]


def rollback_fallback(registry: Registry, spec: FeatureTableSpec, champion: str) -> ScoringModel | None:
    """The version a rollback of ``champion`` would go to now (today's features, a sound model), ready to score."""
    version = rollback_candidate(registry, champion, feature_set_version(spec))
    return None if version is None else _scoring_model(registry, "fallback", version)


def _month_rows(conn: Any, spec: FeatureTableSpec, month: str) -> pl.DataFrame:
    return query_frame(conn, f"SELECT * FROM {table_of(features_key(spec))} WHERE _month = ?", [month])


def _scores(conn: Any, model: ModelSpec, month: str) -> pl.DataFrame:
    key = keys_of(model).predictions
    if not table_exists(conn, *key.path):
        return pl.DataFrame()
    return query_frame(conn, f"SELECT * FROM {table_of(key)} WHERE _month = ?", [month])


def _scored_by(conn: Any, model: ModelSpec, month: str) -> dict[str, str]:
    """The version whose scores of ``month`` each variant stores (a month is scored by one version per variant)."""
    key = keys_of(model).predictions
    if not table_exists(conn, *key.path):
        return {}
    found = conn.execute(
        f"SELECT variant, max(model_version) FROM {table_of(key)} WHERE _month = ? GROUP BY variant", [month]
    ).fetchall()
    return {variant: version for variant, version in found}


def month_record(record: dg.EventLogRecord, kind: type[R]) -> R | None:
    """The month's record from a monitoring materialization's ``by_month`` metadata (None when it has none).

    Raises RecordError (naming the field) when the stored record does not match ``kind``: a renamed or missing field
    stops the sensor loudly instead of switching a rule off."""
    month, event = record.partition_key, record.asset_materialization
    by_month = event.metadata.get(BY_MONTH) if event is not None else None
    stored = by_month.value.get(month) if by_month is not None and month else None
    return kind.from_json(stored) if stored else None


def new_month_records(
    instance: dg.DagsterInstance, key: dg.AssetKey, kind: type[R], cursor: str | None
) -> tuple[list[R], str | None]:
    """Per-month records of ``key``'s materializations after ``cursor`` (a storage id), oldest first, and the new
    cursor: what a model's sensors read instead of DuckDB."""
    after = int(cursor) if cursor else None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=100, ascending=True
    ).records
    found = [month_record(r, kind) for r in records]
    return [r for r in found if r is not None], str(records[-1].storage_id) if records else cursor


def latest_month_record(instance: dg.DagsterInstance, key: dg.AssetKey, kind: type[R], month: str) -> R | None:
    """The newest record of ``key`` for ``month`` (None when it was never materialized)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[month]), limit=1
    ).records
    return month_record(records[0], kind) if records else None


def _by_month_metadata(by_month: dict[str, DriftSummary] | dict[str, LiveSummary]) -> dict[str, Any]:
    """Per-month records as one JSON entry (a range run attaches the same metadata to every month)."""
    return {BY_MONTH: dg.MetadataValue.json({month: record.to_json() for month, record in by_month.items()})}


def build_predictions_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)

    @dg.asset(
        key=keys.predictions,
        # the champion it scores with is read from the registry, not an input: with the champion as a dep, every
        # promotion marked the months scored before it "Unsynced", though they are never rescored by design
        deps=[features_key(spec)],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"duckdb", "lightgbm"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(),
        description=f"`{model.name}.batch_predictions`: the month's `{spec.name}` rows scored by the champion (and by "
        "the `shadow` model when that alias is set) as soon as the month's features are built, before any retraining "
        "on it, so that live quality is out of sample. A model never scores a month it trained on: a re-landed month "
        "keeps the earlier scores of a model that trained on it since. A new champion does not rescore old months.",
    )
    def batch_predictions(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage
    ) -> dg.MaterializeResult:
        models = scoring_models(storage.registry(model.name))
        rows: dict[str, int] = {}
        with duckdb.get_connection() as conn, transaction(conn):  # one commit for the run's months
            for month in run_months(context):
                frame = _month_rows(conn, spec, month)
                scored, skipped = score_month(frame, spec, models, _scored_by(conn, model, month))
                for reason in skipped:
                    context.log.warning(reason)
                store_month_scores(conn, *keys.predictions.path, scored, month)
                if not models:
                    context.log.warning(
                        f"{month}: no {model.name} champion yet, nothing scored (training_pipeline, or the model's retraining job, trains one)"
                    )
                rows[month] = scored.height
        context.log.info(", ".join(f"{m}: {n} scores" for m, n in rows.items()))
        table = "\n".join(f"| {m} | {n} |" for m, n in rows.items())
        return dg.MaterializeResult(
            metadata={
                **row_count_metadata(rows),
                "rows_by_month": dg.MetadataValue.md("| month | scores |\n|---|---|\n" + table),
            }
        )

    return batch_predictions


def drift_report_markdown(month: str, version: str, verdict: DriftVerdict, plot: bytes) -> str:
    rows = (
        pl.DataFrame(verdict.rows())
        .select(
            "column",
            "kind",
            "method",
            "statistic",
            "threshold",
            "drifted",
            "psi",
            "mean_shift_in_std",
            "variance_ratio",
            "current_null_share",
        )
        .sort("statistic", descending=True)
    )
    return "\n".join(
        [
            f"## Drift of {month} against champion {version}'s training profile",
            "",
            f"**Verdict: {'DRIFT' if verdict.drifted else 'no drift'}**: {verdict.reason}.",
            "",
            markdown_image(plot, "most drifted features"),
            "",
            frame_to_markdown(rows, max_rows=len(rows)),
        ]
    )


def build_drift_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)

    @dg.asset(
        key=keys.drift,
        deps=[features_key(spec), keys.predictions],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run (per-month records in `by_month`)
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"duckdb", "matplotlib"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(),
        description=f"`{model.name}.drift_report`: the month's features and the champion's scores on them against the "
        "champion's reference profile (stored with its registry version; training data is never rescanned). Numeric: "
        "normalized Wasserstein, categorical: Jensen-Shannon distance, PSI, mean and variance shift beside; the month "
        "drifts when the drift share of the features (`MLOPS_DRIFT_SHARE`) drift or the scores drift. Its `by_month` "
        f"record drives `{model.name}`'s drift sensor. Report with histograms under "
        f"`$MLOPS_DATA_DIR/reports/{model.name}/drift/<month>/`.",
    )
    def drift_report(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage, policy: MonitoringPolicy
    ) -> dg.MaterializeResult:
        registry = storage.registry(model.name)
        reports_dir = storage.model(model.name).reports_dir / "drift"
        by_month: dict[str, DriftSummary] = {}
        reports: list[str] = []
        with duckdb.get_connection() as conn, transaction(conn):  # one commit for the run's months
            for month in run_months(context):
                scored = _scores(conn, model, month)
                champion_scores = scored.filter(pl.col("variant") == "champion") if scored.height else scored
                version = (
                    champion_scores["model_version"].first() if champion_scores.height else registry.alias(CHAMPION)
                )
                if version is None:
                    context.log.warning(f"{month}: no {model.name} champion, no reference profile: drift not computed")
                    by_month[month] = DriftSummary.no_champion(month)
                    continue
                if not champion_scores.height and month < registry.get(version).metadata["data"]["test_month"]:
                    # nobody scored the month because the champion learnt from it: its own training rows are its
                    # reference, and one month of them against the whole year said "drifted" (a season)
                    context.log.info(f"{model.name} {month}: {version} trained on it: no drift compared")
                    by_month[month] = DriftSummary.trained_on(month, version)
                    if table_exists(conn, *keys.drift.path):  # an earlier champion's comparison no longer holds
                        replace_where(conn, table_of(keys.drift), None, "_month = ?", [month])
                    continue
                frame = _month_rows(conn, spec, month)
                scores = champion_scores["score"].to_numpy() if champion_scores.height else None
                profile = registry.profile(version)
                verdict = compare(profile, frame, scores, spec.label, policy.thresholds())
                table = pl.DataFrame(verdict.rows()).with_columns(
                    pl.lit(month).alias("_month"), pl.lit(version).alias("model_version")
                )
                name = ensure_table_like(conn, *keys.drift.path, table)
                replace_where(conn, name, table, "_month = ?", [month])
                title = f"{model.name} {month}: most drifted features vs {version}'s training data"
                plot = drift_histograms_plot(
                    histogram_pairs(profile, frame, [c.column for c in verdict.top(TOP_DRIFTED)]), title
                )
                report = drift_report_markdown(month, version, verdict, plot)
                write_atomic(reports_dir / month / "histograms.png", plot)
                write_atomic(reports_dir / month / "report.md", report.encode())
                by_month[month] = DriftSummary.from_verdict(month, version, verdict)
                reports.append(report)
                (context.log.warning if verdict.drifted else context.log.info)(
                    f"{model.name} {month} vs {version}: {verdict.reason}"
                )
        metadata = _by_month_metadata(by_month)
        if len(by_month) == 1:
            [summary] = by_month.values()
            metadata |= {"drifted": summary.drifted, "reason": summary.reason}
        if len(reports) == 1:
            metadata["report"] = dg.MetadataValue.md(reports[0])
            metadata["report_path"] = dg.MetadataValue.path(str(reports_dir / next(iter(by_month)) / "report.md"))
        return dg.MaterializeResult(metadata=metadata)

    return drift_report


def build_live_performance_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)

    @dg.asset(
        key=keys.live,
        deps=[keys.predictions, features_key(spec)],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run (per-month records in `by_month`)
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"duckdb"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(),
        description=f"`{model.name}.live_performance`: the month's batch scores and the serving log's online "
        f"predictions (`$MLOPS_DATA_DIR/predictions/{model.name}/`) joined with the month's labels: ROC AUC, log "
        "loss, Brier score, calibration error, score distribution, extreme-score shares and error rate per source, "
        "variant and model version (shadow beside champion, in the wild), with the AUC each version had in its "
        f"evaluation. Its `by_month` record drives `{model.name}`'s performance and rollback sensors.",
    )
    def live(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage
    ) -> dg.MaterializeResult:
        registry = storage.registry(model.name)
        online_log = read_log(storage.model(model.name).predictions_dir)
        by_month: dict[str, LiveSummary] = {}
        fallbacks: dict[str, ScoringModel | None] = {}  # by champion: the version its rollback would go to
        tables = []
        with duckdb.get_connection() as conn, transaction(conn):  # one commit for the run's months
            for month in run_months(context):
                labels = _month_rows(conn, spec, month)
                sources = {"batch": _scores(conn, model, month)}
                if online_log.height:
                    sources["online"] = online_rows_of(online_log, labels, spec, month)
                parts = []
                for source, scored in sources.items():
                    if scored.height:
                        versions = scored["model_version"].drop_nulls().unique().to_list()
                        evaluated = {v: evaluated_roc_auc(registry, v) for v in versions}
                        parts.append(live_performance(scored, labels, spec, evaluated, source))
                parts = [p for p in parts if p.height]
                if not parts:
                    by_month[month] = LiveSummary.empty(month)
                    continue
                table = pl.concat(parts, how="diagonal_relaxed").with_columns(pl.lit(month).alias("_month"))
                # a table stored before the rows gained `requests` gains the column and keeps its months
                name = ensure_table_like(conn, *keys.live.path, table, add_columns=True)
                replace_where(conn, name, table, "_month = ?", [month])
                tables.append(table)
                summary = LiveSummary.from_table(month, table)
                # the version a rollback would go to, on the champion's rows: the rollback rule goes back for a
                # fallen AUC only when that version does better on the same month
                champion = summary.champion_version
                if champion is not None and champion not in fallbacks:
                    fallbacks[champion] = rollback_fallback(registry, spec, champion)
                fallback = fallbacks.get(champion) if champion is not None else None
                if fallback is not None:
                    summary = replace(summary, fallback=fallback_live(sources["batch"], labels, spec, fallback))
                by_month[month] = summary
                judged = (
                    f"{r['source']} {r['variant']} {r['model_version']} "
                    + (f"AUC {r['roc_auc']:.4f}" if r["roc_auc"] is not None else "no AUC")
                    + (f", {r['error_rate']:.1%} failed" if r["error_rate"] else "")
                    for r in table.iter_rows(named=True)
                )
                context.log.info(f"{model.name} {month}: " + ", ".join(judged))
        metadata = _by_month_metadata(by_month)
        if tables:
            metadata["live"] = dg.MetadataValue.md(frame_to_markdown(pl.concat(tables, how="diagonal_relaxed")))
        return dg.MaterializeResult(metadata=metadata)

    return live


def build_monitoring(model: ModelSpec) -> list[dg.AssetsDefinition]:
    return [build_predictions_asset(model), build_drift_asset(model), build_live_performance_asset(model)]
