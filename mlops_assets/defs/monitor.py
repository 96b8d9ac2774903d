"""Monitoring: each landed month scored by the serving models (``predictions.batch``), compared with the champion's
reference profile (``monitoring.drift_report``) and, with its labels, judged (``monitoring.live_performance``).

All three run on their own after the month's features are built (eager automation, gated on the features' blocking
checks). The drift and performance sensors read their materialization metadata, never DuckDB.
"""

import json
from typing import Any

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from mlops_assets.core.drift import DriftVerdict, compare, drift_histograms_plot, histogram_pairs
from mlops_assets.core.evaluation import markdown_image
from mlops_assets.core.landing import write_atomic
from mlops_assets.core.markdown import frame_to_markdown
from mlops_assets.core.monitoring import SCORING_VARIANTS, ScoringModel, live_performance, score_month
from mlops_assets.core.prediction_log import read_log
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.specs import FeatureTableSpec, ModelSpec
from mlops_assets.core.store import ensure_table_like, qualified, query_frame, replace_where, table_exists
from mlops_assets.core.training import load_version
from mlops_assets.defs.deploy import CHAMPION_KEY
from mlops_assets.defs.evaluate import evaluated_roc_auc
from mlops_assets.defs.features import features_key
from mlops_assets.defs.partitions import DUCKDB_POOL, MONTHS, SINGLE_RUN, run_months
from mlops_assets.defs.resources import MonitoringPolicy, PlatformStorage

PREDICTIONS_KEY = dg.AssetKey(["predictions", "batch"])
DRIFT_KEY = dg.AssetKey(["monitoring", "drift_report"])
LIVE_KEY = dg.AssetKey(["monitoring", "live_performance"])
SHADOW = "shadow"
#: Histograms shown in the drift report.
TOP_DRIFTED = 4


def after_features(*ignored: dg.AssetKey) -> dg.AutomationCondition:
    """Eager: run when an upstream month updates, never while upstream is missing or running, and only once every
    blocking check of the upstream assets passed. ``ignored`` deps (the champion) neither trigger nor gate it."""
    eager = dg.AutomationCondition.eager()
    checks = dg.AutomationCondition.all_deps_blocking_checks_passed()
    if ignored:
        eager = eager.ignore(dg.AssetSelection.assets(*ignored))
        checks = checks.ignore(dg.AssetSelection.assets(*ignored))
    return (eager & checks).with_label("eager, upstream checks passed")


def scoring_models(registry: Registry) -> list[ScoringModel]:
    """The champion and, when the ``shadow`` alias is set, the shadow model."""
    models = []
    for variant, alias in zip(SCORING_VARIANTS, (CHAMPION, SHADOW), strict=True):
        version = registry.alias(alias)
        if version is not None:
            test_month = registry.get(version).metadata["data"]["test_month"]
            models.append(ScoringModel(variant, version, test_month, load_version(registry, version)))
    return models


def _month_rows(conn: Any, spec: FeatureTableSpec, month: str) -> pl.DataFrame:
    return query_frame(conn, f"SELECT * FROM {qualified('features', spec.name)} WHERE _month = ?", [month])


def _scores(conn: Any, month: str) -> pl.DataFrame:
    if not table_exists(conn, *PREDICTIONS_KEY.path):
        return pl.DataFrame()
    return query_frame(conn, f"SELECT * FROM {qualified(*PREDICTIONS_KEY.path)} WHERE _month = ?", [month])


def month_summary(record: dg.EventLogRecord) -> tuple[str, dict[str, Any]] | None:
    """The month and its results from a monitoring materialization's ``by_month`` metadata (None when it has none)."""
    month, event = record.partition_key, record.asset_materialization
    by_month = event.metadata.get("by_month") if event is not None else None
    summary = by_month.value.get(month) if by_month is not None and month else None
    return (month, dict(summary)) if month and summary else None


def new_month_summaries(instance: dg.DagsterInstance, key: dg.AssetKey, cursor: str | None) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """Per-month results of ``key``'s materializations after ``cursor`` (a storage id), oldest first, and the new
    cursor: what the sensors read instead of DuckDB."""
    after = int(cursor) if cursor else None
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=100, ascending=True).records
    summaries = [found for found in map(month_summary, records) if found is not None]
    return summaries, str(records[-1].storage_id) if records else cursor


def latest_month_summary(instance: dg.DagsterInstance, key: dg.AssetKey, month: str) -> dict[str, Any]:
    """The newest results of ``key`` for ``month`` ({} when it was never materialized)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[month]), limit=1).records
    found = month_summary(records[0]) if records else None
    return found[1] if found else {}


def _by_month_metadata(by_month: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-month results as one JSON entry (a range run attaches the same metadata to every month), plus the plain
    values when the run covered one month."""
    metadata: dict[str, Any] = {"by_month": dg.MetadataValue.json(by_month)}
    if len(by_month) == 1:
        [values] = by_month.values()
        metadata.update({k: v for k, v in values.items() if isinstance(v, bool | int | float | str)})
    return metadata


def build_predictions_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.training_features

    @dg.asset(
        key=PREDICTIONS_KEY,
        deps=[features_key(spec), CHAMPION_KEY],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run (per-month results in `by_month`)
        group_name="monitor",
        kinds={"duckdb", "lightgbm"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(CHAMPION_KEY),
        description="`predictions.batch`: the month's flights scored by the champion (and by the `shadow` model when "
        "that alias is set) as soon as the month's features are built, before any retraining on it, so that live "
        "quality is out of sample. A model never scores a month it trained on. A new champion does not rescore old "
        "months.",
    )
    def batch_predictions(context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage) -> dg.MaterializeResult:
        registry = Registry(storage.registry_dir)
        models = scoring_models(registry)
        by_month: dict[str, dict[str, Any]] = {}
        with duckdb.get_connection() as conn:
            for month in run_months(context):
                frame = _month_rows(conn, spec, month)
                scored, skipped = score_month(frame, spec, models)
                for reason in skipped:
                    context.log.warning(reason)
                if scored.height:
                    name = ensure_table_like(conn, *PREDICTIONS_KEY.path, scored)
                    replace_where(conn, name, scored, "_month = ?", [month])
                elif not models:
                    context.log.warning(f"{month}: no champion yet, nothing scored (train one with training_pipeline)")
                versions = {v: scored.filter(pl.col("variant") == v)["model_version"].first() for v in scored["variant"].unique().sort()}
                by_month[month] = {
                    "rows": scored.height,
                    "champion_version": str(versions.get("champion")),
                    "shadow_version": str(versions.get("shadow")),
                    "champion_mean_score": float(scored.filter(pl.col("variant") == "champion")["score"].mean() or 0.0),
                    "skipped": "; ".join(skipped),
                }
        context.log.info(", ".join(f"{m}: {v['rows']} scores" for m, v in by_month.items()))
        return dg.MaterializeResult(metadata={"dagster/row_count": sum(v["rows"] for v in by_month.values()), **_by_month_metadata(by_month)})

    return batch_predictions


def drift_summary(month: str, version: str, verdict: DriftVerdict) -> dict[str, Any]:
    return {
        "month": month,
        "champion_version": version,
        "drifted": verdict.drifted,
        "drift_share": round(verdict.drift_share, 4),
        "drifted_features": ", ".join(verdict.drifted_features),
        "top_drifted": ", ".join(f"{c.column} ({c.statistic:.2f})" for c in verdict.top(3)),
        "score_drift": round(verdict.scores.statistic, 4) if verdict.scores else -1.0,
        "label_rate": round(verdict.label.current_mean, 4) if verdict.label and verdict.label.current_mean is not None else -1.0,
        "reason": verdict.reason,
    }


def drift_report_markdown(month: str, version: str, verdict: DriftVerdict, plot: bytes) -> str:
    rows = pl.DataFrame(verdict.rows()).select(
        "column", "kind", "method", "statistic", "threshold", "drifted", "psi", "mean_shift_in_std", "variance_ratio", "current_null_share"
    ).sort("statistic", descending=True)
    return "\n".join([
        f"## Drift of {month} against champion {version}'s training profile",
        "",
        f"**Verdict: {'DRIFT' if verdict.drifted else 'no drift'}**: {verdict.reason}.",
        "",
        markdown_image(plot, "most drifted features"),
        "",
        frame_to_markdown(rows, max_rows=len(rows)),
    ])  # fmt: skip


def build_drift_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.training_features

    @dg.asset(
        key=DRIFT_KEY,
        deps=[features_key(spec), PREDICTIONS_KEY],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run (per-month results in `by_month`)
        group_name="monitor",
        kinds={"duckdb", "matplotlib"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(),
        description="`monitoring.drift_report`: the month's features and the champion's scores on them against the "
        "champion's reference profile (stored with its registry version; training data is never rescanned). Numeric: "
        "normalized Wasserstein, categorical: Jensen-Shannon distance (threshold 0.1 each), PSI, mean and variance "
        "shift beside; the month drifts when >= 30% of the features drift or the scores drift. Metadata `drifted` "
        "drives the drift sensor. Report with histograms under $MLOPS_DATA_DIR/reports/drift/<month>/.",
    )
    def drift_report(context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage, policy: MonitoringPolicy) -> dg.MaterializeResult:
        registry = Registry(storage.registry_dir)
        by_month: dict[str, dict[str, Any]] = {}
        reports: list[str] = []
        with duckdb.get_connection() as conn:
            for month in run_months(context):
                scored = _scores(conn, month)
                champion_scores = scored.filter(pl.col("variant") == "champion") if scored.height else scored
                version = champion_scores["model_version"].first() if champion_scores.height else registry.alias(CHAMPION)
                if version is None:
                    context.log.warning(f"{month}: no champion, no reference profile: drift not computed")
                    by_month[month] = {"month": month, "champion_version": "None", "drifted": False, "reason": "no champion yet"}
                    continue
                frame = _month_rows(conn, spec, month)
                scores = champion_scores["score"].to_numpy() if champion_scores.height else None
                profile = registry.profile(version)
                verdict = compare(profile, frame, scores, spec.label, policy.thresholds())
                table = pl.DataFrame(verdict.rows()).with_columns(pl.lit(month).alias("_month"), pl.lit(version).alias("model_version"))
                name = ensure_table_like(conn, *DRIFT_KEY.path, table)
                replace_where(conn, name, table, "_month = ?", [month])
                plot = drift_histograms_plot(histogram_pairs(profile, frame, [c.column for c in verdict.top(TOP_DRIFTED)]),
                                             f"{month}: most drifted features vs {version}'s training data")  # fmt: skip
                report = drift_report_markdown(month, version, verdict, plot)
                out = storage.reports_dir / "drift" / month
                write_atomic(out / "histograms.png", plot)
                write_atomic(out / "report.md", report.encode())
                write_atomic(out / "drift.json", json.dumps(verdict.rows(), indent=1).encode())
                by_month[month] = drift_summary(month, version, verdict)
                reports.append(report)
                (context.log.warning if verdict.drifted else context.log.info)(f"{month} vs {version}: {verdict.reason}")
        metadata = _by_month_metadata(by_month)
        if len(reports) == 1:
            metadata["report"] = dg.MetadataValue.md(reports[0])
            metadata["report_path"] = dg.MetadataValue.path(str(storage.reports_dir / "drift" / next(iter(by_month)) / "report.md"))
        return dg.MaterializeResult(metadata=metadata)

    return drift_report


def live_summary(month: str, table: pl.DataFrame) -> dict[str, Any]:
    """The month's live numbers as flat metadata: ``<variant>_...`` from the batch scores (every flight of the month,
    scored by the model serving when it landed), ``online_<variant>_...`` from the serving log."""
    summary: dict[str, Any] = {"month": month, "rows": int(table.filter(pl.col("source") == "batch")["rows"].max() or 0)}
    for row in table.iter_rows(named=True):
        prefix = row["variant"] if row["source"] == "batch" else f"online_{row['variant']}"
        summary[f"{prefix}_version"] = row["model_version"]
        for metric in ("roc_auc", "log_loss"):
            summary[f"{prefix}_live_{metric}"] = round(row[metric], 4)
        for metric in ("rows", "score_std", "share_above_0_99", "share_below_0_01", "error_rate"):
            summary[f"{prefix}_{metric}"] = round(float(row[metric]), 6)
        if row["evaluation_roc_auc"] is not None:
            summary[f"{prefix}_evaluation_roc_auc"] = round(row["evaluation_roc_auc"], 4)
            summary[f"{prefix}_auc_drop"] = round(row["auc_drop"], 4)
    return summary


def build_live_performance_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.training_features

    @dg.asset(
        key=LIVE_KEY,
        deps=[PREDICTIONS_KEY, features_key(spec)],
        partitions_def=MONTHS,
        backfill_policy=SINGLE_RUN,  # several months in one run (per-month results in `by_month`)
        group_name="monitor",
        kinds={"duckdb"},
        pool=DUCKDB_POOL,
        automation_condition=after_features(),
        description="`monitoring.live_performance`: the month's batch scores and the serving log's online predictions "
        "(`$MLOPS_DATA_DIR/predictions/`) joined with the month's labels: ROC AUC, log loss, Brier score, calibration "
        "error, score distribution, extreme-score shares and error rate per source, variant and model version (shadow "
        "beside champion, in the wild), with the AUC each version had in its evaluation. Metadata "
        "`champion_auc_drop` drives the performance sensor, and the rollback sensor judges the champion from it.",
    )
    def live(context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage) -> dg.MaterializeResult:
        registry_reports = storage.reports_dir
        online_log = read_log(storage.predictions_dir)
        by_month: dict[str, dict[str, Any]] = {}
        tables = []
        with duckdb.get_connection() as conn:
            for month in run_months(context):
                labels = _month_rows(conn, spec, month)
                sources = {"batch": _scores(conn, month)}
                if online_log.height:
                    sources["online"] = online_log.filter(pl.col("prediction_time").dt.strftime("%Y-%m") == month)
                parts = []
                for source, scored in sources.items():
                    if scored.height:
                        evaluated = {v: evaluated_roc_auc(registry_reports, v) for v in scored["model_version"].drop_nulls().unique().to_list()}
                        parts.append(live_performance(scored, labels, spec, evaluated, source))
                table = pl.concat([p for p in parts if p.height], how="diagonal_relaxed") if any(p.height for p in parts) else pl.DataFrame()
                if not table.height:
                    by_month[month] = {"month": month, "rows": 0, "champion_version": "None"}
                    continue
                table = table.with_columns(pl.lit(month).alias("_month"))
                name = ensure_table_like(conn, *LIVE_KEY.path, table)
                replace_where(conn, name, table, "_month = ?", [month])
                tables.append(table)
                by_month[month] = live_summary(month, table)
                context.log.info(f"{month}: " + ", ".join(
                    f"{r['source']} {r['variant']} {r['model_version']} AUC {r['roc_auc']:.4f}" for r in table.iter_rows(named=True)))  # fmt: skip
        metadata = _by_month_metadata(by_month)
        if tables:
            metadata["live"] = dg.MetadataValue.md(frame_to_markdown(pl.concat(tables, how="diagonal_relaxed")))
        return dg.MaterializeResult(metadata=metadata)

    return live


def build_monitoring(model: ModelSpec) -> list[dg.AssetsDefinition]:
    return [build_predictions_asset(model), build_drift_asset(model), build_live_performance_asset(model)]
