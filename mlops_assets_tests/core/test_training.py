"""The model on a real three-month slice: the time split, determinism, a floor on AUC, invariance and direction."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from mlops_assets.core.evaluation import roc_auc
from mlops_assets.core.features import compute_features
from mlops_assets.core.ingest import ingest_raw, validate_partition
from mlops_assets.core.landing import find_landed
from mlops_assets.core.registry import Registry
from mlops_assets.core.training import (
    SMALL_FRAME,
    TrainedModel,
    TrainingSet,
    load_version,
    local_to_utc,
    split_by_time,
    train_model,
)
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets.models.flight_cancellation import CANCELLATION_FEATURES
from mlops_assets.models.flight_delay import FLIGHT_FEATURES

MONTHS = ["2013-01", "2013-02", "2013-03"]
PARAMS = {"learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 50, "num_threads": 2}


@pytest.fixture(scope="module")
def training_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingSet]:
    """Jan-Mar 2013, every 5th flight, through the real landing, validation and feature path."""
    root = tmp_path_factory.mktemp("training")
    replay_months(root / "landing", MONTHS, every=5)
    with duckdb.connect(str(root / "warehouse.duckdb")) as conn:
        for table in ("airlines", "airports", "planes", "flights", "weather"):
            spec = NYCFLIGHTS13.table(table)
            for month in MONTHS if spec.monthly else [None]:
                landed = find_landed(root / "landing", table, month)
                assert landed is not None
                ingest_raw(conn, spec, landed, root / "landing", root / "quarantine", "t", datetime(2026, 1, 1))
                validate_partition(conn, spec, month, "t", datetime(2026, 1, 1))
        features = compute_features(conn, FLIGHT_FEATURES, MONTHS[0], MONTHS[-1])
    yield split_by_time(features, FLIGHT_FEATURES, MONTHS[-1])


@pytest.fixture(scope="module")
def model(training_set: TrainingSet) -> TrainedModel:
    return train_model(training_set, FLIGHT_FEATURES, PARAMS, num_boost_round=300, early_stopping_rounds=30)


def test_the_split_is_by_time_and_purged(training_set: TrainingSet) -> None:
    train, valid, test = (training_set.part(s) for s in ("train", "valid", "test"))
    assert train.height and valid.height and test.height
    assert train["sched_dep_local"].max() < valid["sched_dep_local"].min()  # type: ignore[operator]
    assert valid["sched_dep_local"].max() < test["sched_dep_local"].min()  # type: ignore[operator]
    assert set(test["_month"].unique()) == {"2013-03"}
    # no training label became known after the validation weeks began: local midnight in New York, 05:00 UTC in
    # February (the spec's time zone gives the exact instant), and none of the validation labels after March began
    assert train["label_known_at"].max() < datetime(2013, 2, 15, 5)  # type: ignore[operator]
    assert valid["label_known_at"].max() < datetime(2013, 3, 1, 5)  # type: ignore[operator]
    assert train["label_known_at"].max() >= datetime(2013, 2, 15, 4)  # type: ignore[operator]  # the boundary is exact, not +4 h


def test_a_model_that_predicts_ahead_purges_labels_known_after_the_first_prediction_of_the_next_split() -> None:
    """flight_cancellation predicts 2 h before departure: a flight at 00:30 on the first validation day (New York,
    05:30 UTC) is predicted at 03:30 UTC, before the split's midnight boundary (05:00 UTC). A training label known
    at 04:00 UTC is from that prediction's future and is purged; one known at 03:00 UTC stays. The same at the test
    month's start for a validation label."""
    spec = CANCELLATION_FEATURES

    def row(local: datetime, known: datetime, month: str) -> dict[str, object]:
        utc = local_to_utc(local, spec.time_zone)
        return {
            "carrier": "UA",
            "flight": local.day * 100 + local.hour,
            "origin": "EWR",
            "sched_dep_local": local,
            "prediction_time": utc - timedelta(hours=2),
            "is_cancelled": 0,
            "label_known_at": known,
            "_month": month,
        }

    rows = pl.DataFrame(
        [
            row(
                datetime(2013, 2, 10, 9), datetime(2013, 2, 15, 3), "2013-02"
            ),  # train, known before any valid prediction
            row(datetime(2013, 2, 10, 10), datetime(2013, 2, 15, 4), "2013-02"),  # train, known after the first one
            row(datetime(2013, 2, 15, 0, 30), datetime(2013, 2, 15, 5, 30), "2013-02"),  # valid: predicted 03:30 UTC
            row(datetime(2013, 2, 27, 9), datetime(2013, 3, 1, 3), "2013-02"),  # valid, known before the test's first
            row(datetime(2013, 2, 27, 10), datetime(2013, 3, 1, 4), "2013-02"),  # valid, known after it
            row(datetime(2013, 3, 1, 0, 30), datetime(2013, 3, 1, 5, 30), "2013-03"),  # test: predicted 03:30 UTC
        ]
    )
    kept = split_by_time(rows, spec, "2013-03").frame
    assert sorted(zip(kept["split"], kept["label_known_at"], strict=True)) == [
        ("test", datetime(2013, 3, 1, 5, 30)),
        ("train", datetime(2013, 2, 15, 3)),
        ("valid", datetime(2013, 2, 15, 5, 30)),
        ("valid", datetime(2013, 3, 1, 3)),
    ]


def test_training_is_deterministic_to_the_byte(training_set: TrainingSet, model: TrainedModel) -> None:
    again = train_model(training_set, FLIGHT_FEATURES, PARAMS, num_boost_round=300, early_stopping_rounds=30)
    assert again.text == model.text


def test_validation_weeks_of_one_class_are_refused_not_trained_into_a_one_tree_model(training_set: TrainingSet) -> None:
    """Validation weeks without a single delayed flight (sampled data, a rare label): LightGBM would report an AUC of
    1.0 from the first round and early stopping would keep one tree, which could pass a first model's gate. The
    training is refused with the reason and what to do."""
    label = FLIGHT_FEATURES.label
    frame = training_set.frame.with_columns(
        pl.when(pl.col("split") == "valid").then(0).otherwise(pl.col(label)).alias(label)
    )
    one_class = TrainingSet(frame, training_set.test_month, training_set.valid_start, training_set.test_start)
    with pytest.raises(ValueError, match=rf"hold one class only \({label} is always 0\).*--every 1"):
        train_model(one_class, FLIGHT_FEATURES, PARAMS, num_boost_round=300, early_stopping_rounds=30)


def test_a_label_that_is_not_0_or_1_is_refused(training_set: TrainingSet) -> None:
    """Minutes of delay where whether the flight was late belongs: LightGBM's binary objective would train on it and
    the metrics would be nonsense (a PR AUC of 162), yet pass the first model's gates."""
    label = FLIGHT_FEATURES.label
    frame = training_set.frame.with_columns((pl.col(label) * 30).alias(label))
    minutes = TrainingSet(frame, training_set.test_month, training_set.valid_start, training_set.test_start)
    with pytest.raises(ValueError, match=rf"{label} holds \[30\]: a label is 0 or 1 .* Fix the feature SQL"):
        train_model(minutes, FLIGHT_FEATURES, PARAMS, num_boost_round=300, early_stopping_rounds=30)


def test_auc_on_the_held_out_month_is_above_a_floor(training_set: TrainingSet, model: TrainedModel) -> None:
    test = training_set.part("test")
    auc = roc_auc(test["is_delayed"].to_numpy(), model.predict(test))
    assert auc > 0.70, auc


def test_the_flight_number_does_not_change_the_score(training_set: TrainingSet, model: TrainedModel) -> None:
    test = training_set.part("test").head(2000)
    renumbered = test.with_columns((pl.col("flight") + 7000).alias("flight"))
    np.testing.assert_array_equal(model.predict(test), model.predict(renumbered))


def test_a_much_higher_origin_delay_does_not_lower_the_risk(training_set: TrainingSet, model: TrainedModel) -> None:
    test = training_set.part("test").head(2000)
    stormy = test.with_columns(pl.lit(120.0).alias("origin_dep_delay_mean_3h"))
    calm = test.with_columns(pl.lit(0.0).alias("origin_dep_delay_mean_3h"))
    assert model.predict(stormy).mean() > model.predict(calm).mean()


def test_a_registered_model_scores_exactly_like_the_trained_one(
    tmp_path: Path, training_set: TrainingSet, model: TrainedModel
) -> None:
    registry = Registry(tmp_path)
    version = registry.register(model.text, {"encoder": model.encoder.to_json()}, {}, run_id=None).version
    test = training_set.part("test").head(500)
    np.testing.assert_array_equal(load_version(registry, version).predict(test), model.predict(test))


def test_served_requests_are_encoded_exactly_as_batches(model: TrainedModel, training_set: TrainingSet) -> None:
    """A few rows (a request) take the row-by-row encoder; they must give the batch encoder's matrix and scores."""
    test = training_set.part("test")
    unseen = test.head(3).with_columns(pl.lit("ZZ").alias("carrier"), pl.lit(None, pl.String).alias("dest"))
    for rows in (test.head(1), test.slice(100, SMALL_FRAME), unseen):
        small = model.encoder.matrix(rows)
        batch = model.encoder.matrix(pl.concat([rows] * (SMALL_FRAME + 1)))[: rows.height]
        assert np.array_equal(small, batch, equal_nan=True)
        assert np.array_equal(model.predict(rows), model.predict(pl.concat([rows] * (SMALL_FRAME + 1)))[: rows.height])
