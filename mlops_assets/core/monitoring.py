"""Monitoring: a month scored by the serving models before anyone retrains on it, and their live quality once its
labels are in.

Out-of-sample by construction: a model scores a month only when the month is not before its test month (a model
never trained on its test month or anything after it). A month the model trained on is refused, so live quality can
never be inflated by a later re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import polars as pl

from mlops_assets.core.evaluation import metrics, roc_auc
from mlops_assets.core.policy import TOLERANCE
from mlops_assets.core.records import DriftSummary, FallbackLive, LiveSummary
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.core.store import ensure_table_like, replace_where
from mlops_assets.core.training import TrainedModel

#: The roles that score every month: the champion answers, a shadow (when set) is only recorded.
SCORING_VARIANTS = ("champion", "shadow")


@dataclass(frozen=True)
class ScoringModel:
    variant: str
    version: str
    test_month: str
    model: TrainedModel


def trained_on(model: ScoringModel, month: str) -> bool:
    """Whether ``month`` is among the months the model's training or validation rows came from."""
    return month < model.test_month


def score_month(
    frame: pl.DataFrame,
    spec: FeatureTableSpec,
    models: list[ScoringModel],
    scored_by: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Scores of one month's feature rows by each model that never saw the month. Returns the long table (key, time,
    month, variant, model version, score) and the reasons for models left out.

    ``scored_by``: the version each variant's stored scores of the month come from. A model evaluated on the month
    (its test month: it was chosen on it) leaves another version's scores of it alone: they are the live record of
    the champion when the month landed (a rerun of the pipeline replaced them by the selection's own score)."""
    skipped: list[str] = []
    parts = []
    month = str(frame["_month"].max()) if frame.height else ""
    ids = frame.select(*spec.key, spec.time_column, "_month")
    for scoring in models:
        if trained_on(scoring, month):
            skipped.append(
                f"{scoring.variant} {scoring.version} trained on {month} "
                f"(its test month is {scoring.test_month}): not scored"
            )
            continue
        earlier = (scored_by or {}).get(scoring.variant)
        if month == scoring.test_month and earlier not in (None, scoring.version):
            skipped.append(
                f"{scoring.variant} {scoring.version} was evaluated on {month} (chosen on it): the month keeps the "
                f"scores of {earlier}, its live record"
            )
            continue
        parts.append(
            ids.with_columns(
                pl.lit(scoring.variant).alias("variant"),
                pl.lit(scoring.version).alias("model_version"),
                pl.Series("score", scoring.model.predict(frame), dtype=pl.Float64),
            )
        )
    if not parts:
        empty = ids.head(0).with_columns(
            pl.lit(None, pl.String).alias("variant"),
            pl.lit(None, pl.String).alias("model_version"),
            pl.lit(None, pl.Float64).alias("score"),
        )
        return empty, skipped
    return pl.concat(parts), skipped


def store_month_scores(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, scored: pl.DataFrame, month: str
) -> None:
    """Replace ``month``'s scores of the variants in ``scored``, keeping the others' rows: a variant that cannot score
    the month now (a champion retrained on a re-landed month) keeps the out-of-sample scores it made before, as when
    no model scores it at all."""
    if scored.height == 0:
        return
    variants = sorted(scored["variant"].unique().to_list())
    name = ensure_table_like(conn, schema, table, scored)
    placeholders = ", ".join("?" for _ in variants)
    replace_where(conn, name, scored, f"_month = ? AND variant IN ({placeholders})", [month, *variants])


def online_rows_of(online_log: pl.DataFrame, labels: pl.DataFrame, spec: FeatureTableSpec, month: str) -> pl.DataFrame:
    """The serving log's rows of ``month``: the entity's local month (``_month``), which the UTC prediction time
    leaves for flights near a month's edge (an evening departure on the 31st is the next month in UTC; a
    cancellation scored 2 h early, the previous one). By the entity's local time when the log holds it (a key
    column: failed predictions count too, also for entities without a feature row), else by the month's keys. What-ifs
    (requests that overrode features, ``what_if``) are left out: their answers are about flights that did not happen."""
    if online_log.height == 0:
        return online_log
    if "what_if" in online_log.columns:  # a what-if's answer is about a flight that did not happen: not live quality
        online_log = online_log.filter(~pl.col("what_if").fill_null(False))
    local = spec.local_time_column
    if local in online_log.columns:
        return online_log.filter(pl.col(local).dt.strftime("%Y-%m") == month)
    return online_log.join(labels.select(*spec.key).unique(), on=list(spec.key), how="semi")


def live_performance(
    scored: pl.DataFrame,
    labels: pl.DataFrame,
    spec: FeatureTableSpec,
    evaluation_auc: Mapping[str, float | None],
    source: str = "batch",
) -> pl.DataFrame:
    """Per variant and model version: AUC, log loss, calibration, score distribution and extremes on the labelled
    rows, the share of failed predictions (online), the AUC the version had in its own evaluation and the drop from
    it. ``requests`` counts every prediction asked of the variant's version, answered or failed, labelled or not
    (what the error rate divides by). ``scored`` has the key columns, ``variant``, ``model_version``, ``score`` and,
    for the online log, ``status``."""
    if "status" not in scored.columns:
        scored = scored.with_columns(pl.lit("ok").alias("status"))
    labelled = labels.select(*spec.key, spec.label)
    rows: list[dict[str, Any]] = []
    # the groups in the order each last served (by ``logged_at`` online, else the rows' order): a variant that served
    # v2, v3, then v2 again (v3 rolled back mid-month) has v2 last, the version serving now
    at = "logged_at" if "logged_at" in scored.columns else "_row"
    order = (
        scored.with_row_index("_row")
        .group_by(["variant", "model_version"])
        .agg(pl.col(at).max().alias("_at"))
        .sort("_at", maintain_order=True)
    )
    groups = scored.partition_by(["variant", "model_version"], as_dict=True)
    for variant, version in order.select("variant", "model_version").iter_rows():
        group = groups[(variant, version)]
        # a score that is not a number (NaN, infinite, missing) is a failed prediction: ranked, it would move the AUC
        # at random; kept, it would leave the month without a live record (no rule could judge it)
        answered = (
            (pl.col("status") == "ok") & pl.col("score").is_not_null() & pl.col("score").cast(pl.Float64).is_finite()
        )
        errors = group.filter(~answered).height
        ok = group.filter(answered)
        joined = ok.join(labelled, on=list(spec.key), how="inner").filter(pl.col(spec.label).is_not_null())
        if joined.height == 0:
            if errors:  # every prediction failed: no quality to measure, but the strongest reason to roll back
                rows.append(_failures_only(source, variant, version, group.height, errors, evaluation_auc))
            continue
        y = joined[spec.label].cast(pl.Float64).to_numpy()
        p = joined["score"].to_numpy()
        m = metrics(y, p)
        evaluated = evaluation_auc.get(str(version))
        rows.append(
            {
                "source": source,
                "variant": variant,
                "model_version": version,
                "rows": len(y),
                "error_rate": errors / group.height,
                "roc_auc": m["roc_auc"],
                "log_loss": m["log_loss"],
                "brier": m["brier"],
                "calibration_error": m["calibration_error"],
                "base_rate": m["base_rate"],
                "mean_score": float(np.mean(p)),
                "score_std": float(np.std(p)),
                "score_p10": float(np.quantile(p, 0.1)),
                "score_p90": float(np.quantile(p, 0.9)),
                "share_above_0_99": m["share_above_0_99"],
                "share_below_0_01": m["share_below_0_01"],
                "evaluation_roc_auc": evaluated,
                "auc_drop": (evaluated - m["roc_auc"]) if evaluated is not None else None,
                # online requests with a code the store had never seen (a new route or carrier): answered, counted
                "unknown_code_share": (
                    float(group["unknown_codes"].is_not_null().mean()) if "unknown_codes" in group.columns else None
                ),
                "requests": group.height,  # last (see LIVE_COLUMNS)
            }
        )
    overrides = {
        "evaluation_roc_auc": pl.Float64,
        "auc_drop": pl.Float64,
        "unknown_code_share": pl.Float64,
        **{name: pl.Float64 for name in _QUALITY},
    }
    return pl.DataFrame(rows, schema_overrides=overrides)


def fallback_live(
    scored: pl.DataFrame, labels: pl.DataFrame, spec: FeatureTableSpec, fallback: ScoringModel
) -> FallbackLive | None:
    """The rollback target ``fallback`` scored on the rows the month's batch champion is judged on (its answered,
    labelled rows of ``scored``, the month's batch scores; ``labels`` the month's feature rows): the same rows, so the
    rollback rule can tell whether going back would help. None when the champion answered no labelled row, or the
    target trained on the month (its AUC there would flatter it)."""
    month = str(labels["_month"].max()) if labels.height else ""
    if trained_on(fallback, month) or "variant" not in scored.columns:
        return None
    answered = (pl.col("variant") == "champion") & pl.col("score").is_not_null()
    keys = scored.filter(answered & pl.col("score").cast(pl.Float64).is_finite()).select(*spec.key).unique()
    rows = labels.join(keys, on=list(spec.key), how="semi").filter(pl.col(spec.label).is_not_null())
    if rows.height == 0:
        return None
    y = rows[spec.label].cast(pl.Float64).to_numpy()
    p = fallback.model.predict(rows)
    finite = bool(np.isfinite(p).all())
    auc = roc_auc(y, p) if 0 < y.sum() < len(y) and finite else None
    return FallbackLive(
        version=fallback.version,
        rows=rows.height,
        live_roc_auc=None if auc is None else round(auc, 4),
        # the same measures as the champion's (``live_performance``): not comparable when a score is not a number
        score_std=float(np.std(p)) if finite else None,
        share_above_0_99=float(np.mean(p > 0.99)) if finite else None,
        share_below_0_01=float(np.mean(p < 0.01)) if finite else None,
    )


#: The numbers measured on a group's labelled, answered rows (None when it has none: only failed predictions).
_QUALITY = ("roc_auc", "log_loss", "brier", "calibration_error", "base_rate", "mean_score", "score_p10", "score_p90")
#: The live table's columns in their order (every row is written in it, a failures-only one too). ``requests``
#: came last (live_summary version 2): a table stored before gains it and keeps its rows (``ensure_table_like``).
LIVE_COLUMNS = (
    "source",
    "variant",
    "model_version",
    "rows",
    "error_rate",
    "roc_auc",
    "log_loss",
    "brier",
    "calibration_error",
    "base_rate",
    "mean_score",
    "score_std",
    "score_p10",
    "score_p90",
    "share_above_0_99",
    "share_below_0_01",
    "evaluation_roc_auc",
    "auc_drop",
    "unknown_code_share",
    "requests",
)


def _failures_only(
    source: str,
    variant: object,
    version: object,
    requests: int,
    errors: int,
    evaluation_auc: Mapping[str, float | None],
) -> dict[str, Any]:
    """The row of a variant none of whose labelled predictions of the month was answered: its error rate, no quality
    (None), no scores; in the order of :data:`LIVE_COLUMNS`, as every row."""
    row: dict[str, Any] = dict.fromkeys(LIVE_COLUMNS)
    row.update(
        source=source,
        variant=variant,
        model_version=version,
        rows=0,
        error_rate=errors / requests,
        score_std=0.0,
        share_above_0_99=0.0,
        share_below_0_01=0.0,
        evaluation_roc_auc=evaluation_auc.get(str(version)),
        requests=requests,
    )
    return row


def drift_retrain_reason(summary: DriftSummary) -> str | None:
    """Why a month's drift report asks for a retrain (None: it does not)."""
    return f"drift in {summary.month}: {summary.reason}" if summary.drifted else None


def performance_retrain_reason(summary: LiveSummary, margin: float, min_rows: int = 200) -> str | None:
    """Why a month's live performance asks for a retrain: the batch champion's live AUC, on at least ``min_rows``
    labelled rows (the rollback rule's floor: an AUC of a handful of rows is noise), fell more than ``margin`` below
    the AUC it had in its evaluation (None: it did not, or there is nothing to compare: no champion, too few rows, a
    live AUC undefined on one class, or a version never evaluated)."""
    champion = summary.champion
    if (
        champion is None
        or champion.rows < min_rows
        or champion.auc_drop is None
        or champion.auc_drop <= margin + TOLERANCE
    ):
        return None
    # a VariantLive has an auc_drop only with both AUCs (checked when it is built or read)
    assert champion.live_roc_auc is not None and champion.evaluation_roc_auc is not None
    return (
        f"live AUC {champion.live_roc_auc:.4f} of {champion.version} in {summary.month} is {champion.auc_drop:.4f} "
        f"below its evaluation AUC {champion.evaluation_roc_auc:.4f} (margin {margin})"
    )
