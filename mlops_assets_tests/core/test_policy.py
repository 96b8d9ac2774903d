"""Metrics against hand-computed values, and the promotion rules."""

import math

import numpy as np
import pytest

from mlops_assets.core.evaluation import average_precision, log_loss, metrics, roc_auc
from mlops_assets.core.policy import PromotionGates, base_rate_log_loss, decide_promotion, scores_are_sane


def test_roc_auc_counts_ties_as_half() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs ordered right
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_average_precision_and_log_loss_by_hand() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1])
    # precision 1 at recall 0.5, then 2/3 at recall 1
    assert average_precision(y, p) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.2])) == pytest.approx(-math.log(0.8))
    m = metrics(y, p)
    assert m["base_rate"] == 0.5 and m["brier"] == pytest.approx(np.mean((p - y) ** 2))


CHAMPION = {"roc_auc": 0.75, "log_loss": 0.47, "base_rate": 0.25}
SLICES_OK = [{"slice": "carrier", "value": "UA", "rows": 900, "challenger_auc": 0.76, "champion_auc": 0.75}]


def test_a_better_challenger_is_promoted() -> None:
    decision = decide_promotion({"roc_auc": 0.76, "log_loss": 0.46, "base_rate": 0.25}, CHAMPION, None, SLICES_OK, PromotionGates())
    assert decision.promote, decision.summary


def test_a_worse_challenger_is_kept_out() -> None:
    decision = decide_promotion({"roc_auc": 0.751, "log_loss": 0.46, "base_rate": 0.25}, CHAMPION, None, SLICES_OK, PromotionGates())
    assert not decision.promote and "needs >= +0.002" in decision.summary
    worse_loss = decide_promotion({"roc_auc": 0.76, "log_loss": 0.48, "base_rate": 0.25}, CHAMPION, None, SLICES_OK, PromotionGates())
    assert not worse_loss.promote


def test_a_slice_regression_keeps_the_champion_and_says_which() -> None:
    slices = [
        {"slice": "origin", "value": "EWR", "rows": 800, "challenger_auc": 0.70, "champion_auc": 0.74},
        {"slice": "carrier", "value": "HA", "rows": 30, "challenger_auc": 0.40, "champion_auc": 0.90},  # too small to judge
    ]
    decision = decide_promotion({"roc_auc": 0.77, "log_loss": 0.45, "base_rate": 0.25}, CHAMPION, None, slices, PromotionGates())
    assert not decision.promote
    assert "origin=EWR (800 rows)" in decision.summary and "HA" not in decision.summary


def test_the_first_model_must_clearly_beat_the_base_rate() -> None:
    good = decide_promotion({"roc_auc": 0.70, "log_loss": 0.50, "base_rate": 0.25}, None, None, [], PromotionGates())
    assert good.promote and base_rate_log_loss(0.25) > 0.50
    weak = decide_promotion({"roc_auc": 0.52, "log_loss": 0.56, "base_rate": 0.25}, None, None, [], PromotionGates())
    assert not weak.promote


def test_nan_or_out_of_range_scores_are_refused() -> None:
    problem = scores_are_sane(np.array([0.2, float("nan"), 0.4]))
    assert problem == "1 scores are NaN or infinite"
    assert scores_are_sane(np.array([0.2, 1.3])) is not None and scores_are_sane(np.array([0.2, 0.9])) is None
    decision = decide_promotion({"roc_auc": 0.9, "log_loss": 0.1, "base_rate": 0.25}, CHAMPION, problem, SLICES_OK, PromotionGates())
    assert not decision.promote and "refused" in decision.summary
