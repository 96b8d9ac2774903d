"""Drift statistics against hand-computed values and scipy; a real month with injected drift is flagged, the same
month unchanged is not; scoring never touches a month a model trained on."""

import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from mlops_assets.core import drift
from mlops_assets.core.features import compute_features
from mlops_assets.core.monitoring import ScoringModel, score_month, store_month_scores
from mlops_assets.core.settings import Settings
from mlops_assets.core.training import split_by_time, train_model
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_FEATURES
from mlops_assets_tests.conftest import MONTHLY, load_month

SPEC = FLIGHT_FEATURES


def test_wasserstein_by_hand() -> None:
    # [0, 1, 2, 3] -> [1, 2, 3, 4]: every unit of mass moves by 1; the reference std is sqrt(5/4)
    reference, current = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])
    distance = drift.wasserstein_from_quantiles(drift.quantile_function(reference), drift.quantile_function(current))
    assert distance == pytest.approx(1.0)
    assert drift.wasserstein_atoms_to_sample(drift.quantile_function(reference), current) == pytest.approx(1.0)
    normed = drift.normalized_wasserstein(drift.quantile_function(reference), current, reference.std())
    assert normed == pytest.approx(1 / math.sqrt(5 / 4))
    # half the mass moves by 2: W1 = 1
    assert drift.wasserstein_atoms_to_sample(np.array([0.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(1.0)


def test_wasserstein_matches_scipy_on_continuous_and_discrete_samples() -> None:
    rng = np.random.default_rng(7)
    samples = [
        (rng.normal(0, 1, 20_000), rng.normal(0.3, 1.2, 15_000)),
        (rng.integers(0, 24, 20_000).astype(float), rng.integers(3, 24, 20_000).astype(float)),
    ]
    for reference, current in samples:
        ours = drift.wasserstein_atoms_to_sample(drift.quantile_function(reference), current)
        assert ours == pytest.approx(wasserstein_distance(reference, current), rel=0.005)
    # a few-valued column (engine counts): the month is not rounded to quantile levels
    reference = rng.choice([1.0, 2.0, 4.0], size=30_000, p=[0.021, 0.968, 0.011])
    current = rng.choice([1.0, 2.0, 4.0], size=25_000, p=[0.03, 0.95, 0.02])
    ours = drift.wasserstein_atoms_to_sample(drift.quantile_function(reference), current)
    assert ours == pytest.approx(wasserstein_distance(reference, current), abs=0.002)


def test_one_sort_gives_numpys_statistics() -> None:
    rng = np.random.default_rng(11)
    for values in (rng.normal(5, 2, 10_001), rng.integers(0, 7, 5_000).astype(float), np.array([3.0])):
        sample = drift.Sample.of(values)
        levels = np.linspace(0.1, 0.9, 9)
        assert np.allclose(
            sample.quantiles(drift.QUANTILE_LEVELS), np.quantile(values, drift.QUANTILE_LEVELS, method="inverted_cdf")
        )
        assert np.allclose(sample.linear_quantiles(levels), np.quantile(values, levels))
        assert sample.mean() == pytest.approx(values.mean()) and sample.std() == pytest.approx(values.std())
        edges = np.unique(np.quantile(values, levels))
        assert np.allclose(sample.bucket_shares(edges), drift.bucket_shares(values, edges))


def test_infinities_count_as_missing_and_profiles_need_no_scores() -> None:
    frame = pl.DataFrame({"x": [1.0, 2.0, float("inf"), None, 3.0]})
    profile = drift.reference_profile(frame, ["x"], [], np.array([]))
    assert profile["numeric"]["x"]["null_share"] == pytest.approx(0.4) and math.isfinite(profile["numeric"]["x"]["std"])
    assert profile["scores"] == {"null_share": 1.0}


def test_jensen_shannon_by_hand_and_against_scipy() -> None:
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4): JSD = (KL(p||m) + KL(q||m)) / 2
    expected = math.sqrt(0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75))
    assert drift.jensen_shannon({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(expected, abs=1e-3)
    assert drift.jensen_shannon({"a": 0.2, "b": 0.3, "c": 0.5}, {"a": 0.5, "b": 0.4, "c": 0.1}) == pytest.approx(
        jensenshannon([0.2, 0.3, 0.5], [0.5, 0.4, 0.1]), abs=1e-6
    )
    assert drift.jensen_shannon({"a": 0.3, "b": 0.7}, {"a": 0.3, "b": 0.7}) == pytest.approx(0.0, abs=1e-6)


def test_psi_by_hand() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    expected = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert drift.population_stability_index([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert drift.population_stability_index([0.1, 0.9], [0.1, 0.9]) == pytest.approx(0.0)


def test_bucket_shares_are_open_ended() -> None:
    shares = drift.bucket_shares(np.array([-5.0, 0.0, 1.0, 1.5, 99.0]), [1.0, 2.0])
    assert shares.tolist() == pytest.approx([0.4, 0.4, 0.2])


@pytest.fixture(scope="module")
def two_months(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """January and February 2013's feature rows (every 10th flight), through the real landing, validation and
    feature path."""
    root = tmp_path_factory.mktemp("drift")
    settings = Settings(data_dir=root, dagster_home=root / "home")
    replay_months(settings.landing_dir, ["2013-01", "2013-02"], every=10)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        load_month(conn, settings, None, ["airlines", "airports", "planes"])
        for month in ("2013-01", "2013-02"):
            load_month(conn, settings, month, MONTHLY)
        return compute_features(conn, SPEC, "2013-01", "2013-02")


@pytest.fixture(scope="module")
def january(two_months: pl.DataFrame) -> pl.DataFrame:
    return two_months.filter(pl.col("_month") == "2013-01")


def _profile(frame: pl.DataFrame) -> dict:
    scores = np.linspace(0.05, 0.6, frame.height)  # a fixed score distribution: scores are compared separately below
    return drift.reference_profile(frame, SPEC.numeric, SPEC.categorical, scores, SPEC.label)


def test_an_unchanged_month_does_not_drift(january: pl.DataFrame) -> None:
    verdict = drift.compare(_profile(january), january, np.linspace(0.05, 0.6, january.height), SPEC.label)
    assert not verdict.drifted, verdict.reason
    assert verdict.drifted_features == []
    assert verdict.scores is not None and verdict.scores.statistic < 0.01
    assert verdict.label is not None and not verdict.label.drifted


def test_shifted_scores_drift_even_with_a_nan_among_them(january: pl.DataFrame) -> None:
    """One NaN score made the score statistic NaN, and a NaN never exceeds the threshold: the month read "not
    drifted". Non-finite scores are missing values, as for a feature, counted in the null share."""
    scores = np.linspace(0.05, 0.6, january.height) + 0.2
    scores[0] = np.nan
    verdict = drift.compare(_profile(january), january, scores, SPEC.label)
    assert verdict.scores is not None and verdict.scores.drifted and np.isfinite(verdict.scores.statistic)


def test_a_heat_wave_is_flagged(january: pl.DataFrame) -> None:
    """Temperatures (and dew points, which move with them) 15 C = 27 F warmer, with the scores the heat brings."""
    hot = january.with_columns(pl.col("temp") + 27, pl.col("dewp") + 27)
    scores = np.linspace(0.05, 0.6, january.height) + 0.08
    verdict = drift.compare(_profile(january), hot, scores, SPEC.label)
    by_column = {c.column: c for c in verdict.features}
    assert {"temp", "dewp"} <= set(verdict.drifted_features)
    assert by_column["temp"].statistic > 1.0  # 27 F is about two January standard deviations
    assert by_column["temp"].mean_shift_in_std == pytest.approx(
        27 / drift.reference_profile(january, ["temp"], [], np.zeros(1))["numeric"]["temp"]["std"], rel=0.01
    )
    assert by_column["temp"].psi is not None and by_column["temp"].psi > 0.2
    assert not by_column["carrier"].drifted and not by_column["distance"].drifted
    assert verdict.scores_drifted and verdict.drifted
    assert "scores drifted" in verdict.reason


def test_many_shifted_features_flag_a_month_without_score_drift(january: pl.DataFrame) -> None:
    weather = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib", "wind_dir", "wind_gust"]
    shifted = january.with_columns(*(pl.col(c) * 1.5 + 10 for c in weather if c in january.columns))
    scores = np.linspace(0.05, 0.6, january.height)
    verdict = drift.compare(_profile(january), shifted, scores, SPEC.label, drift.DriftThresholds(drift_share=0.25))
    assert verdict.drift_share >= 0.25 and not verdict.scores_drifted and verdict.drifted
    stricter = drift.compare(_profile(january), shifted, scores, SPEC.label, drift.DriftThresholds(drift_share=0.9))
    assert not stricter.drifted  # the share is configurable


def test_a_changed_carrier_mix_is_flagged_by_jensen_shannon(january: pl.DataFrame) -> None:
    one_carrier = january.with_columns(pl.lit("UA").alias("carrier"))
    column = next(c for c in drift.compare(_profile(january), one_carrier).features if c.column == "carrier")
    assert column.method == "jensen_shannon" and column.drifted and column.statistic > 0.3


def test_edge_columns_report_what_they_hold(january: pl.DataFrame) -> None:
    """A categorical column that becomes all null reports a null share of 1.0 (its nulls were pooled as `<other>`
    and reported as 0); a column constant in both the reference and the month keeps a variance ratio of 1.0 (it read
    0.0, "the variance vanished"); a profile stored without scores compares no scores (it reported drift)."""
    column = drift.compare_categorical("carrier", {"UA": 0.5, "AA": 0.5}, pl.Series("carrier", [None] * 50), 0.1)
    assert column.current_null_share == 1.0 and column.reference_null_share == 0.0 and column.drifted
    assert drift.variance_ratio(0.0, 0.0) == 1.0 and drift.variance_ratio(1.0, 0.0) is None
    assert drift.variance_ratio(2.0, 1.0) == 4.0
    constant = january.with_columns(pl.lit(5.0).alias("temp"))
    profile = drift.reference_profile(constant, ["temp"], [], np.array([]))
    verdict = drift.compare(profile, constant, scores=np.full(constant.height, 0.3))
    [temp] = verdict.features
    assert temp.variance_ratio == 1.0 and not temp.drifted
    assert verdict.scores is None and not verdict.scores_drifted
    # scores described on one side only (all NaN now): the reason says what moved, not a Wasserstein distance
    scored = drift.reference_profile(constant, ["temp"], [], np.full(constant.height, 0.3))
    nan_now = drift.compare(scored, constant, scores=np.full(constant.height, np.nan))
    assert nan_now.scores_drifted and "finite scores 100% of rows in the reference, 0% now" in nan_now.reason


def test_a_month_of_a_few_rows_is_reported_but_not_judged_drifted(january: pl.DataFrame) -> None:
    """A handful of rows sits far from any reference (a 1-row month at the median moved 0.8 of a standard
    deviation): below the floor the month is compared and reported, not judged drifted (no retrain asked)."""
    profile = _profile(january)
    few = january.head(20).with_columns(pl.col("temp") + 40)
    verdict = drift.compare(profile, few, np.linspace(0.05, 0.6, few.height), SPEC.label)
    assert verdict.too_few_rows and not verdict.drifted and "temp" in verdict.drifted_features
    assert verdict.reason.startswith("20 rows, too few to judge drift (at least 200)"), verdict.reason
    shifted = january.with_columns(pl.col(SPEC.numeric).fill_null(0) * 3 + 50)
    assert drift.compare(profile, shifted, np.linspace(0.05, 0.6, shifted.height), SPEC.label).drifted


def test_a_profile_without_quantiles_asks_for_a_retrain(january: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="retrain"):
        drift.compare({"numeric": {}, "categorical": {}}, january)


def test_a_model_never_scores_a_month_it_trained_on(two_months: pl.DataFrame) -> None:
    training_set = split_by_time(two_months, SPEC, "2013-02")  # trains on January, tests on February
    model = train_model(training_set, SPEC, {"num_leaves": 7, "num_threads": 1}, 20, 5)
    scoring = ScoringModel("champion", "v0001", training_set.test_month, model)
    january, february = (two_months.filter(pl.col("_month") == m) for m in ("2013-01", "2013-02"))
    scored, skipped = score_month(january, SPEC, [scoring])
    assert scored.height == 0 and "trained on 2013-01" in skipped[0]
    scored, skipped = score_month(february, SPEC, [scoring])
    assert scored.height == february.height and not skipped
    assert scored["score"].is_between(0, 1).all() and set(scored["variant"]) == {"champion"}


def test_a_month_rescored_by_the_shadow_alone_keeps_the_champions_earlier_scores(
    two_months: pl.DataFrame, tmp_path: Path
) -> None:
    """A corrected month re-landed after the champion retrained on it: the champion may not score it again, the shadow
    may. The shadow's rows are replaced; the champion's out-of-sample scores from before stay in the table."""
    training_set = split_by_time(two_months, SPEC, "2013-02")
    model = train_model(training_set, SPEC, {"num_leaves": 7, "num_threads": 1}, 20, 5)
    february = two_months.filter(pl.col("_month") == "2013-02")
    before = [ScoringModel("champion", "v0001", "2013-02", model), ScoringModel("shadow", "v0002", "2013-02", model)]
    after = [ScoringModel("champion", "v0003", "2013-03", model), before[1]]  # v0003 trained on February
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as conn:
        conn.execute("CREATE SCHEMA flight_delay")
        store_month_scores(conn, "flight_delay", "batch_predictions", score_month(february, SPEC, before)[0], "2013-02")
        scored, skipped = score_month(february, SPEC, after)
        assert set(scored["variant"]) == {"shadow"} and "v0003 trained on 2013-02" in skipped[0]
        store_month_scores(conn, "flight_delay", "batch_predictions", scored, "2013-02")
        kept = conn.sql(
            "SELECT variant, model_version, count(*) FROM flight_delay.batch_predictions GROUP BY ALL ORDER BY 1"
        ).fetchall()
    assert kept == [("champion", "v0001", february.height), ("shadow", "v0002", february.height)]


def test_a_champion_chosen_on_a_month_leaves_the_earlier_champions_scores_of_it_alone(two_months: pl.DataFrame) -> None:
    """v0002 was evaluated on February and promoted: a rerun of the pipeline rescored February with it and replaced
    v0001's live record (AUC 0.7063, the drop that asked for the retrain) by the selection's own score (a hunt found
    it). With no earlier scores (the first champion, scoring its test month), it scores the month as before."""
    training_set = split_by_time(two_months, SPEC, "2013-02")
    model = train_model(training_set, SPEC, {"num_leaves": 7, "num_threads": 1}, 20, 5)
    february = two_months.filter(pl.col("_month") == "2013-02")
    chosen = ScoringModel("champion", "v0002", "2013-02", model)
    scored, skipped = score_month(february, SPEC, [chosen], {"champion": "v0001"})
    assert scored.height == 0 and skipped == [
        "champion v0002 was evaluated on 2013-02 (chosen on it): the month keeps the scores of v0001, its live record"
    ]
    for scored_by in ({}, {"champion": "v0002"}, {"shadow": "v0001"}):
        scored, skipped = score_month(february, SPEC, [chosen], scored_by)
        assert scored.height == february.height and not skipped


def test_the_report_histograms_draw_each_share_as_a_bar_of_its_height() -> None:
    from io import BytesIO

    from PIL import Image

    pair = {"column": "dep_delay", "labels": ["a", "b", "c"], "reference": [0.5, 0.5, 0.0], "current": [0.0, 0.0, 1.0]}
    image = np.asarray(Image.open(BytesIO(drift.drift_histograms_plot([pair], "one panel"))).convert("RGB"))

    def bars(rgb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the pixels of one series' colour."""
        return np.nonzero(np.all(np.abs(image.astype(int) - rgb) <= 2, axis=-1))

    blue_rows, blue_columns = bars((0x1F, 0x77, 0xB4))  # reference (matplotlib's tab:blue)
    orange_rows, orange_columns = bars((0xFF, 0x7F, 0x0E))  # current month (tab:orange)
    legend_below = image.shape[0] * 0.25  # the legend's colour swatches sit above the panel
    blue_rows, blue_columns = blue_rows[blue_rows > legend_below], blue_columns[blue_rows > legend_below]
    orange_rows, orange_columns = orange_rows[orange_rows > legend_below], orange_columns[orange_rows > legend_below]
    blue_height = blue_rows.max() - blue_rows.min() + 1
    orange_height = orange_rows.max() - orange_rows.min() + 1
    assert abs(orange_height / blue_height - 2.0) < 0.1, (orange_height, blue_height)  # shares 1.0 and 0.5
    assert orange_rows.max() == blue_rows.max()  # on the same baseline
    assert orange_columns.min() > blue_columns.max()  # the current month's bar is the third bucket's
    assert len(np.unique(blue_columns)) > 2 * len(np.unique(orange_columns)) * 0.9  # two reference bars, one current


def test_a_report_drawn_after_another_looks_as_if_drawn_first() -> None:
    """The histogram figure of each grid shape is made once per process: nothing of one report stays in the next."""

    def pair(column: str, labels: list[str], seed: int) -> dict[str, object]:
        rng = np.random.default_rng(seed)
        return {
            "column": column,
            "labels": labels,
            "reference": rng.dirichlet(np.ones(len(labels))).tolist(),
            "current": rng.dirichlet(np.ones(len(labels))).tolist(),
        }

    four = [pair(f"a{i}", [f"{j}-{j + 1}" for j in range(12)], i) for i in range(4)]
    three = [pair(f"b{i}", ["UA", "AA", "B6", "<other>"], 10 + i) for i in range(3)]  # the same 2x2 grid, one empty
    drift._GRIDS.clear()
    three_alone = drift.drift_histograms_plot(three, "three")
    drift._GRIDS.clear()
    four_first = drift.drift_histograms_plot(four, "four")
    three_after = drift.drift_histograms_plot(three, "three")
    four_again = drift.drift_histograms_plot(four, "four")
    assert len(drift._GRIDS) == 1  # both reports were drawn on one figure
    assert three_after == three_alone
    assert four_again == four_first
    assert three_after != four_first
