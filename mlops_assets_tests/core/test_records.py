"""The typed records: built from real verdicts, live tables and evaluations, written and read back through JSON, and
refused loudly, naming the record and the field, when what is read does not match."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlops_assets.core.drift import compare, reference_profile
from mlops_assets.core.evaluation import metrics, roc_auc, slice_metrics
from mlops_assets.core.monitoring import LIVE_COLUMNS, live_performance, online_rows_of
from mlops_assets.core.records import (
    DriftSummary,
    EvaluationResult,
    LiveSummary,
    Record,
    RecordError,
    SliceResult,
    VariantLive,
)
from mlops_assets.core.specs import FeatureTableSpec

SPEC = FeatureTableSpec(
    name="toy",
    sql_path=Path("toy.sql"),
    inputs=("toy",),
    id_columns=("id",),
    key=("id",),
    label="y",
    label_known_at="t",
    time_column="t",
    local_time_column="t",
    time_zone="UTC",
    lookback_days=0,
    categorical=("colour",),
    numeric=("x",),
)


def through_json(record: Record) -> dict[str, Any]:
    """What a reader gets: the record as strict JSON text (no NaN) and parsed again."""
    return json.loads(json.dumps(record.to_json(), allow_nan=False))


def toy_frame(rng: np.random.Generator, rows: int, shift: float = 0.0) -> pl.DataFrame:
    x = rng.normal(shift, 1.0, rows)
    return pl.DataFrame(
        {
            "id": np.arange(rows),
            "x": x,
            "colour": rng.choice(["red", "blue"], rows),
            "y": (rng.random(rows) < 1 / (1 + np.exp(-x))).astype(np.int64),
        }
    )


# --- drift ---------------------------------------------------------------------------------------------------------


def drift_summary(shift: float) -> DriftSummary:
    rng = np.random.default_rng(1)
    train, month = toy_frame(rng, 3000), toy_frame(rng, 2000, shift)
    profile = reference_profile(train, SPEC.numeric, SPEC.categorical, rng.random(3000), SPEC.label)
    verdict = compare(profile, month, rng.random(2000), SPEC.label)
    return DriftSummary.from_verdict("2013-04", "v0003", verdict)


def test_a_drift_summary_from_a_real_verdict_round_trips() -> None:
    drifted, stable = drift_summary(shift=1.0), drift_summary(shift=0.0)
    assert drifted.drifted and drifted.drifted_features == ("x",) and drifted.drift_share == 0.5
    assert not stable.drifted and stable.drifted_features == ()
    assert drifted.score_drift is not None and drifted.label_rate is not None and "x (" in drifted.top_drifted
    for summary in (drifted, stable, DriftSummary.no_champion("2013-04")):
        data = through_json(summary)
        assert (data["schema"], data["schema_version"]) == ("drift_summary", 1)
        assert DriftSummary.from_json(data) == summary


def test_no_champion_is_absent_values_not_placeholders() -> None:
    data = through_json(DriftSummary.no_champion("2013-04"))
    assert data["champion_version"] is None and data["drift_share"] is None and data["score_drift"] is None
    assert data["label_rate"] is None and data["drifted"] is False and data["drifted_features"] == []


# --- live performance ----------------------------------------------------------------------------------------------


def live_table(one_class_online: bool = False) -> pl.DataFrame:
    """``live_performance`` of a batch (champion and shadow) and of an online log with a failed prediction."""
    rng = np.random.default_rng(2)
    labels = toy_frame(rng, 600)
    p = 1 / (1 + np.exp(-labels["x"].to_numpy()))
    batch = pl.concat(
        [
            labels.select("id").with_columns(
                pl.lit("champion").alias("variant"), pl.lit("v0002").alias("model_version"), pl.Series("score", p)
            ),
            labels.select("id").with_columns(
                pl.lit("shadow").alias("variant"),
                pl.lit("v0003").alias("model_version"),
                pl.Series("score", rng.random(600)),
            ),
        ]
    )
    online_ids = labels.filter(pl.col("y") == 1)["id"].head(50) if one_class_online else labels["id"].head(50)
    online = pl.DataFrame(
        {
            "id": online_ids,
            "variant": "champion",
            "model_version": "v0002",
            "score": np.full(50, 0.5),
            "status": ["error"] + ["ok"] * 49,
        }
    )
    evaluated = {"v0002": 0.8, "v0003": None}
    return pl.concat(
        [
            live_performance(batch, labels, SPEC, evaluated, "batch"),
            live_performance(online, labels, SPEC, evaluated, "online"),
        ],
        how="diagonal_relaxed",
    )


def test_a_live_summary_from_the_live_table_round_trips() -> None:
    summary = LiveSummary.from_table("2013-04", live_table())
    assert summary.rows == 600 and set(summary.batch) == {"champion", "shadow"} and set(summary.online) == {"champion"}
    champion = summary.champion
    assert champion is not None and summary.champion_version == "v0002" and champion.rows == 600
    assert champion.live_roc_auc is not None
    assert champion.auc_drop == pytest.approx(0.8 - champion.live_roc_auc, abs=1e-4)
    assert summary.batch["shadow"].evaluation_roc_auc is None and summary.batch["shadow"].auc_drop is None
    assert summary.online_champion is not None and summary.online_champion.error_rate == pytest.approx(0.02)
    assert summary.online_champion.requests == 50 and champion.requests == 600
    assert LiveSummary.from_json(through_json(summary)) == summary


def test_the_version_serving_last_is_judged_not_one_rolled_back_mid_month() -> None:
    """Online, the champion served v0002, then v0003 (failing every request, rolled back by hand), then v0002 again:
    the summary's online champion is v0002, the version serving last, and nothing calls for rolling it back. Had the
    failing version served last, its failures would still not be held against the batch champion v0002."""
    from mlops_assets.core.policy import RollbackPolicy, rollback_reasons

    rng = np.random.default_rng(4)
    labels = toy_frame(rng, 900)
    p = 1 / (1 + np.exp(-labels["x"].to_numpy()))
    batch = labels.select("id").with_columns(
        pl.lit("champion").alias("variant"), pl.lit("v0002").alias("model_version"), pl.Series("score", p)
    )
    served = ["v0002"] * 300 + ["v0003"] * 300 + ["v0002"] * 300
    failed = [False] * 300 + [True] * 300 + [False] * 300
    online = labels.select("id").with_columns(
        pl.lit("champion").alias("variant"),
        pl.Series("model_version", served),
        pl.Series("score", [None if bad else float(x) for bad, x in zip(failed, p, strict=True)], pl.Float64),
        pl.Series("status", ["error" if bad else "ok" for bad in failed]),
    )
    evaluated = {"v0002": 0.8, "v0003": 0.82}
    reference = {"std": float(np.std(p))}
    logged = online.with_columns(  # the serving log's own times, its files read in any order
        pl.datetime_range(datetime(2013, 4, 1), datetime(2013, 4, 1, 14, 59), "1m", eager=True).alias("logged_at")
    ).sample(fraction=1.0, shuffle=True, seed=0)
    for log, serving_last in ((online, "v0002"), (online.head(600), "v0003"), (logged, "v0002")):
        table = pl.concat(
            [
                live_performance(batch, labels, SPEC, evaluated, "batch"),
                live_performance(log, labels, SPEC, evaluated, "online"),
            ],
            how="diagonal_relaxed",
        )
        summary = LiveSummary.from_table("2013-04", table)
        assert summary.online_champion is not None and summary.online_champion.version == serving_last
        assert summary.champion_version == "v0002"
        assert rollback_reasons(summary, 0.7, reference, RollbackPolicy()) == []


def test_a_champion_whose_every_online_prediction_failed_is_rolled_back() -> None:
    """A total outage has no answered, labelled row to measure quality on, but it is the strongest reason to roll
    back: the online champion is still recorded, with its error rate and no AUC, and the rule fires."""
    from mlops_assets.core.policy import RollbackPolicy, rollback_reasons

    rng = np.random.default_rng(3)
    labels = toy_frame(rng, 600)
    p = 1 / (1 + np.exp(-labels["x"].to_numpy()))
    batch = labels.select("id").with_columns(
        pl.lit("champion").alias("variant"), pl.lit("v0002").alias("model_version"), pl.Series("score", p)
    )
    failed = (
        labels.select("id")
        .head(300)
        .with_columns(
            pl.lit("champion").alias("variant"),
            pl.lit("v0002").alias("model_version"),
            pl.lit(None, pl.Float64).alias("score"),
            pl.lit("error").alias("status"),
        )
    )
    evaluated = {"v0002": 0.8}
    table = pl.concat(
        [
            live_performance(batch, labels, SPEC, evaluated, "batch"),
            live_performance(failed, labels, SPEC, evaluated, "online"),
        ],
        how="diagonal_relaxed",
    )
    summary = LiveSummary.from_table("2013-04", table)
    # a failures-only row in the order of every row: the stored table's shape does not depend on which comes first
    assert live_performance(failed, labels, SPEC, evaluated, "online").columns == list(LIVE_COLUMNS) == table.columns
    online = summary.online_champion
    assert online is not None and online.error_rate == 1.0 and online.rows == 0 and online.live_roc_auc is None
    assert online.requests == 300
    assert LiveSummary.from_json(through_json(summary)) == summary
    reasons = rollback_reasons(summary, 0.7, {"std": float(np.std(p))}, RollbackPolicy())  # batch quality: fine
    assert reasons == ["100.0% of 300 online predictions failed (max 1%)"], reasons


def test_a_champion_whose_scores_are_not_numbers_is_judged_and_rolled_back() -> None:
    """A damaged champion scores 5% of the month's rows NaN (or infinite). Ranked, a NaN moved the AUC at random;
    kept, its spread was NaN and the month got no live record, so no rule judged it. The scores that are not numbers
    count as failed, quality is measured on the rest, and the rollback rule fires on them; all of them NaN is judged
    too."""
    from mlops_assets.core.policy import RollbackPolicy, rollback_reasons

    rng = np.random.default_rng(5)
    labels = toy_frame(rng, 1000)
    p = 1 / (1 + np.exp(-labels["x"].to_numpy()))
    damaged = p.copy()
    damaged[:40], damaged[40:50] = np.nan, np.inf

    def summary_of(scores: np.ndarray) -> LiveSummary:
        batch = labels.select("id").with_columns(
            pl.lit("champion").alias("variant"), pl.lit("v0002").alias("model_version"), pl.Series("score", scores)
        )
        return LiveSummary.from_table("2013-04", live_performance(batch, labels, SPEC, {"v0002": 0.8}, "batch"))

    summary = summary_of(damaged)
    champion = summary.champion
    assert champion is not None and champion.error_rate == 0.05 and champion.requests == 1000
    finite = labels.slice(50)
    assert champion.live_roc_auc == round(roc_auc(finite["y"].to_numpy(), p[50:]), 4)  # records keep 4 digits
    reference = {"std": float(np.std(p))}
    reasons = rollback_reasons(summary, 0.7, reference, RollbackPolicy())
    assert reasons == ["5.0% of its 1,000 scores on the month's rows were not finite (max 1%)"], reasons
    all_nan = rollback_reasons(summary_of(np.full(1000, np.nan)), 0.7, reference, RollbackPolicy())
    assert all_nan == ["100.0% of its 1,000 scores on the month's rows were not finite (max 1%)"], all_nan
    assert rollback_reasons(summary_of(p), 0.7, reference, RollbackPolicy()) == []


def test_online_predictions_count_in_their_flights_local_month_not_the_utc_one() -> None:
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES

    def flight(number: int, local: datetime) -> dict[str, object]:
        return {"carrier": "UA", "flight": number, "origin": "EWR", "sched_dep_local": local}

    # March 31st, 22:00 in New York is April 1st, 02:00 in UTC: still a March flight, labelled with March
    edge, april = flight(1, datetime(2013, 3, 31, 22, 0)), flight(2, datetime(2013, 4, 1, 9, 0))
    march_labels = pl.DataFrame([{**edge, "is_delayed": 1}, {**flight(3, datetime(2013, 3, 2, 9)), "is_delayed": 0}])
    # a failed prediction of a March flight without a feature row (no tailnum) still counts in March's error rate
    failed = {**flight(4, datetime(2013, 3, 31, 23, 0)), "prediction_time": None, "score": None, "status": "error"}
    log = pl.DataFrame(
        [
            {**edge, "prediction_time": datetime(2013, 4, 1, 2, 0), "score": 0.9, "status": "ok"},
            {**april, "prediction_time": datetime(2013, 4, 1, 13, 0), "score": 0.1, "status": "ok"},
            failed,
        ]
    )
    chosen = online_rows_of(log, march_labels, FLIGHT_FEATURES, "2013-03")
    assert chosen["flight"].to_list() == [1, 4]
    assert online_rows_of(log, march_labels, FLIGHT_FEATURES, "2013-04")["flight"].to_list() == [2]
    assert online_rows_of(log.head(0), march_labels, FLIGHT_FEATURES, "2013-03").height == 0
    # a what-if (a request that overrode features, as any client may) is about a flight that did not happen: left
    # out of the month's live quality, failed or answered; a log written before `what_if` existed counts every row
    what_ifs = pl.DataFrame(
        [
            {
                **flight(5, datetime(2013, 3, 3, 9)),
                "prediction_time": datetime(2013, 3, 3, 14),
                "score": 0.99,
                "status": "ok",
                "what_if": True,
            },
            {**failed, "flight": 6, "what_if": True},
            {
                **flight(7, datetime(2013, 3, 3, 9)),
                "prediction_time": datetime(2013, 3, 3, 14),
                "score": 0.2,
                "status": "ok",
                "what_if": False,
            },
        ]
    )
    marked = pl.concat([log, what_ifs], how="diagonal_relaxed")
    assert online_rows_of(marked, march_labels, FLIGHT_FEATURES, "2013-03")["flight"].to_list() == [1, 4, 7]


def test_an_undefined_live_auc_is_none_and_so_is_its_drop() -> None:
    online = LiveSummary.from_table("2013-04", live_table(one_class_online=True)).online_champion
    assert online is not None and online.live_roc_auc is None and online.auc_drop is None
    assert online.evaluation_roc_auc == 0.8  # known, but nothing to compare it with


def test_an_empty_month() -> None:
    empty = LiveSummary.from_table("2013-04", pl.DataFrame())
    assert empty == LiveSummary.empty("2013-04") and empty.champion is None and empty.champion_version is None
    assert empty.online_champion is None and LiveSummary.from_json(through_json(empty)) == empty


# --- evaluation ----------------------------------------------------------------------------------------------------


def evaluation(with_champion: bool = True) -> EvaluationResult:
    rng = np.random.default_rng(3)
    test = toy_frame(rng, 800).with_columns(
        pl.when(pl.col("id") < 20).then(pl.lit("tiny")).otherwise(pl.col("colour")).alias("colour")
    )
    test = test.with_columns(pl.when(pl.col("colour") == "tiny").then(0).otherwise(pl.col("y")).alias("y"))  # one class
    y = test["y"].to_numpy().astype(float)
    scores = {"challenger": 1 / (1 + np.exp(-test["x"].to_numpy()))}
    if with_champion:
        scores["champion"] = rng.random(800)
    slices = slice_metrics(test, "y", scores, {"colour": pl.col("colour")})
    return EvaluationResult.from_evaluation(
        "toy",
        "v0004",
        "v0002" if with_champion else None,
        "2013-03",
        {role: metrics(y, p) for role, p in scores.items()},
        slices,
        None,
    )


def test_an_evaluation_round_trips_with_undefined_slice_aucs_as_none() -> None:
    for result in (evaluation(), evaluation(with_champion=False)):
        assert EvaluationResult.from_json(through_json(result)) == result
        tiny = next(s for s in result.slices if s.value == "tiny")
        assert tiny.challenger_auc is None and tiny.positives == 0
    first = evaluation(with_champion=False)
    assert first.champion_version is None and set(first.metrics) == {"challenger"}
    assert all(s.champion_auc is None and s.champion_log_loss is None for s in first.slices)
    assert 0.5 < evaluation().roc_auc("challenger") < 1 and evaluation().pr_auc("champion") > 0


def test_absent_metrics_are_refused_not_defaulted() -> None:
    first = evaluation(with_champion=False)
    with pytest.raises(RecordError, match="no 'champion' in the evaluation of v0004"):
        first.roc_auc("champion")
    undefined = EvaluationResult.from_evaluation(
        "toy",
        "v0004",
        None,
        "2013-03",
        {"challenger": {"roc_auc": float("nan"), "pr_auc": 0.2, "log_loss": 0.5, "base_rate": 0.0}},
        [],
        None,
    )
    with pytest.raises(RecordError, match=r"\['roc_auc'\]: undefined on the test month"):
        undefined.roc_auc("challenger")
    with pytest.raises(RecordError, match=r"\['brier'\]: absent"):
        undefined.metric("challenger", "brier")


def test_the_evaluation_roles_must_match_its_champion() -> None:
    data = through_json(evaluation())
    data["champion_version"] = None
    with pytest.raises(RecordError, match="EvaluationResult.metrics: roles"):
        EvaluationResult.from_json(data)
    data = through_json(evaluation())
    del data["metrics"]["challenger"]["roc_auc"]
    with pytest.raises(RecordError, match=r"metrics\['challenger'\]: missing metric\(s\) roc_auc"):
        EvaluationResult.from_json(data)


# --- strictness ----------------------------------------------------------------------------------------------------


def records() -> list[Record]:
    return [drift_summary(1.0), LiveSummary.from_table("2013-04", live_table()), evaluation()]


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_a_renamed_field_fails_loudly_naming_both_names(record: Record) -> None:
    data = through_json(record)
    field = next(k for k in data if k not in ("schema", "schema_version"))
    data[f"{field}_renamed"] = data.pop(field)
    with pytest.raises(RecordError) as raised:
        type(record).from_json(data)
    assert str(raised.value) == (
        f"{type(record).__name__}: missing field(s) {field}; "
        f"unknown field(s) {field}_renamed (renamed, or another version?)"
    )


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_missing_extra_and_versioned_fields_fail(record: Record) -> None:
    name = type(record).__name__
    field = next(k for k in through_json(record) if k not in ("schema", "schema_version"))
    missing = through_json(record)
    del missing[field]
    with pytest.raises(RecordError, match=f"^{name}: missing field\\(s\\) {field}$"):
        type(record).from_json(missing)
    with pytest.raises(RecordError, match=f"^{name}: unknown field\\(s\\) surprise"):
        type(record).from_json({**through_json(record), "surprise": 1})
    newer = record.VERSION + 1
    with pytest.raises(RecordError, match=f"schema_version is {newer}, this code reads {record.VERSION}"):
        type(record).from_json({**through_json(record), "schema_version": newer})
    with pytest.raises(RecordError, match="schema_version is True"):
        type(record).from_json({**through_json(record), "schema_version": True})
    with pytest.raises(RecordError, match="schema is 'other', expected"):
        type(record).from_json({**through_json(record), "schema": "other"})
    without_header = {k: v for k, v in through_json(record).items() if k != "schema"}
    with pytest.raises(RecordError, match="schema is None"):
        type(record).from_json(without_header)


def test_wrong_types_are_named_with_what_was_found() -> None:
    data = through_json(drift_summary(1.0))
    cases: list[tuple[str, Any, str]] = [
        ("month", None, r"DriftSummary.month: expected str, found NoneType None"),
        ("drift_share", "0.5", r"DriftSummary.drift_share: expected float, found str '0.5'"),
        ("drifted", 1, r"DriftSummary.drifted: expected bool, found int 1"),
        ("drifted_features", "x", r"DriftSummary.drifted_features: expected a list, found str 'x'"),
        ("drifted_features", ["x", 3], r"DriftSummary.drifted_features\[1\]: expected str, found int 3"),
    ]
    for field, value, message in cases:
        with pytest.raises(RecordError, match=message):
            DriftSummary.from_json({**data, field: value})
    assert DriftSummary.from_json({**data, "drift_share": 1}).drift_share == 1.0  # a JSON number without a point


def test_nested_fields_are_named_by_their_path() -> None:
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["batch"]["champion"]["rows"] = True  # JSON true is not an int
    with pytest.raises(RecordError, match=r"LiveSummary.batch\['champion'\].rows: expected int, found bool True"):
        LiveSummary.from_json(data)
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["online"]["champion"]["rows"] = 50.0  # nor is 50.0
    with pytest.raises(RecordError, match=r"LiveSummary.online\['champion'\].rows: expected int, found float 50.0"):
        LiveSummary.from_json(data)
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["batch"]["champion"]["score_std"] = None
    with pytest.raises(RecordError, match=r"LiveSummary.batch\['champion'\].score_std: expected float, found NoneType"):
        LiveSummary.from_json(data)
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["batch"]["champion"]["live_auc"] = data["batch"]["champion"].pop("live_roc_auc")
    with pytest.raises(RecordError, match=r"LiveSummary.batch\['champion'\]: missing field\(s\) live_roc_auc; unknown"):
        LiveSummary.from_json(data)
    data = through_json(evaluation())
    data["slices"][0]["rows"] = "800"
    with pytest.raises(RecordError, match=r"EvaluationResult.slices\[0\].rows: expected int, found str '800'"):
        EvaluationResult.from_json(data)
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["batch"]["champions"] = data["batch"].pop("champion")
    with pytest.raises(RecordError, match=r"LiveSummary.batch: unknown variant\(s\) \['champions'\]"):
        LiveSummary.from_json(data)


def test_records_cannot_be_built_wrong_either() -> None:
    good = {
        "version": "v1",
        "rows": 10,
        "requests": 12,
        "live_roc_auc": 0.7,
        "live_log_loss": 0.5,
        "score_std": 0.1,
        "share_above_0_99": 0.0,
        "share_below_0_01": 0.0,
        "error_rate": 0.0,
        "evaluation_roc_auc": 0.75,
        "auc_drop": 0.05,
    }
    assert VariantLive(**good).rows == 10
    with pytest.raises(RecordError, match="VariantLive.score_std: expected a finite float"):
        VariantLive(**{**good, "score_std": float("nan")})  # NaN is never stored: an undefined value is None
    with pytest.raises(RecordError, match="VariantLive.auc_drop: 0.05 without both"):
        VariantLive(**{**good, "live_roc_auc": None})
    with pytest.raises(RecordError, match="VariantLive.rows: expected int, found int64"):
        VariantLive(**{**good, "rows": np.int64(10)})
    with pytest.raises(RecordError, match="SliceResult.value: expected str"):
        SliceResult("carrier", None, 10, 1, 0.1, 0.7, None, 0.4, None)  # type: ignore[arg-type]
    assert VariantLive(**{**good, "score_std": np.float64(0.1)}).score_std.__class__ is float  # normalized


def test_a_record_is_read_only_from_a_json_object() -> None:
    with pytest.raises(RecordError, match="LiveSummary: expected a JSON object, found list"):
        LiveSummary.from_json([])  # type: ignore[arg-type]
    data = through_json(LiveSummary.from_table("2013-04", live_table()))
    data["batch"]["champion"] = "v0002"
    with pytest.raises(RecordError, match=r"LiveSummary.batch\['champion'\]: expected a VariantLive object, found str"):
        LiveSummary.from_json(data)
