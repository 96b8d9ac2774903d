"""Metrics against hand-computed values, the promotion rules, and the rollback and retraining rules on typed
records."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from mlops_assets.core.evaluation import average_precision, log_loss, metrics, roc_auc
from mlops_assets.core.monitoring import drift_retrain_reason, performance_retrain_reason
from mlops_assets.core.policy import (
    PromotionGates,
    RollbackPolicy,
    base_rate_log_loss,
    decide_promotion,
    decide_promotion_from,
    rollback_declined,
    rollback_reasons,
    scores_are_sane,
)
from mlops_assets.core.records import (
    DriftSummary,
    EvaluationResult,
    FallbackLive,
    LiveSummary,
    RecordError,
    VariantLive,
)


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
GATES = PromotionGates()
SLICES_OK = [{"slice": "carrier", "value": "UA", "rows": 900, "challenger_auc": 0.76, "champion_auc": 0.75}]


def test_a_better_challenger_is_promoted() -> None:
    better = {"roc_auc": 0.76, "log_loss": 0.46, "base_rate": 0.25}
    decision = decide_promotion(better, CHAMPION, None, SLICES_OK, GATES)
    assert decision.promote, decision.summary


def test_a_worse_challenger_is_kept_out() -> None:
    small_gain = {"roc_auc": 0.751, "log_loss": 0.46, "base_rate": 0.25}
    decision = decide_promotion(small_gain, CHAMPION, None, SLICES_OK, GATES)
    assert not decision.promote and "needs >= +0.002) [FAILED]" in decision.summary
    worse = {"roc_auc": 0.76, "log_loss": 0.48, "base_rate": 0.25}
    worse_loss = decide_promotion(worse, CHAMPION, None, SLICES_OK, GATES)
    assert not worse_loss.promote
    # the summary marks the gate that kept it out, and that one only
    assert worse_loss.summary.count("[FAILED]") == 1
    assert "may rise by <= 0) [FAILED]" in worse_loss.summary, worse_loss.summary


def test_a_slice_regression_keeps_the_champion_and_says_which() -> None:
    slices = [
        {"slice": "origin", "value": "EWR", "rows": 800, "challenger_auc": 0.70, "champion_auc": 0.74},
        {"slice": "carrier", "value": "HA", "rows": 30, "challenger_auc": 0.40, "champion_auc": 0.90},  # too small
    ]
    decision = decide_promotion({"roc_auc": 0.77, "log_loss": 0.45, "base_rate": 0.25}, CHAMPION, None, slices, GATES)
    assert not decision.promote
    assert "origin=EWR (800 rows)" in decision.summary and "HA" not in decision.summary


def test_the_first_model_must_clearly_beat_the_base_rate() -> None:
    good = decide_promotion({"roc_auc": 0.70, "log_loss": 0.50, "base_rate": 0.25}, None, None, [], PromotionGates())
    assert good.promote and base_rate_log_loss(0.25) > 0.50
    weak = decide_promotion({"roc_auc": 0.52, "log_loss": 0.56, "base_rate": 0.25}, None, None, [], PromotionGates())
    assert not weak.promote
    # there is no champion to keep: the summary says so rather than "keep the champion"
    assert good.summary.startswith("promote: first model: AUC 0.7000")
    assert weak.summary.startswith("not promoted, no champion yet: first model: AUC 0.5200"), weak.summary
    refused = decide_promotion({"roc_auc": 0.7, "log_loss": 0.5, "base_rate": 0.25}, None, "NaN", [], GATES)
    assert refused.summary == "not promoted, no champion yet: challenger refused: NaN"
    kept = decide_promotion({"roc_auc": 0.70, "log_loss": 0.60, "base_rate": 0.25}, CHAMPION, None, SLICES_OK, GATES)
    assert kept.summary.startswith("keep the champion: ")


def test_an_auc_too_good_to_believe_is_refused_as_a_leak_first_model_or_not() -> None:
    leaking = {"roc_auc": 0.998, "log_loss": 0.02, "base_rate": 0.25}  # passes every other gate by far
    slices = [{"slice": "carrier", "value": "UA", "rows": 900, "challenger_auc": 0.999, "champion_auc": 0.75}]
    for champion in (CHAMPION, None):
        decision = decide_promotion(leaking, champion, None, slices if champion else [], GATES)
        assert not decision.promote and decision.first_model == (champion is None)
        assert "AUC 0.9980 is above 0.99: too good to believe" in decision.summary, decision.summary
        assert "leaks the label" in decision.summary and decision.summary.count("[FAILED]") == 1
        # only that reason: no clause that passed reads as a case for promoting it
        assert "needs >=" not in decision.summary
    assert decide_promotion(leaking, CHAMPION, None, slices, PromotionGates(max_plausible_auc=None)).promote
    # the bound itself is believed
    at_bound = {"roc_auc": 0.99, "log_loss": 0.05, "base_rate": 0.25}
    assert decide_promotion(at_bound, CHAMPION, None, slices, GATES).promote


def test_nan_or_out_of_range_scores_are_refused() -> None:
    problem = scores_are_sane(np.array([0.2, float("nan"), 0.4]))
    assert problem == "1 scores are NaN or infinite"
    assert scores_are_sane(np.array([0.2, 1.3])) is not None and scores_are_sane(np.array([0.2, 0.9])) is None
    great = {"roc_auc": 0.9, "log_loss": 0.1, "base_rate": 0.25}
    decision = decide_promotion(great, CHAMPION, problem, SLICES_OK, GATES)
    assert not decision.promote and "refused" in decision.summary


def test_promotion_from_a_stored_evaluation_decides_as_from_the_metrics() -> None:
    challenger = {"roc_auc": 0.77, "pr_auc": 0.5, "log_loss": 0.45, "base_rate": 0.25}
    champion = {**CHAMPION, "pr_auc": 0.5}
    slices = [
        {
            "slice": "origin",
            "value": "EWR",
            "rows": 800,
            "positives": 200,
            "base_rate": 0.25,
            "challenger_auc": 0.70,
            "champion_auc": 0.74,
            "challenger_log_loss": 0.5,
            "champion_log_loss": 0.5,
        },
        {
            "slice": "origin",
            "value": "LGA",
            "rows": 900,
            "positives": 0,
            "base_rate": 0.0,
            "challenger_auc": math.nan,
            "champion_auc": math.nan,
            "challenger_log_loss": 0.1,
            "champion_log_loss": 0.1,
        },  # one class: not judged
    ]
    roles = {"challenger": challenger, "champion": champion}
    result = EvaluationResult.from_evaluation("flights", "v0003", "v0002", "2013-03", roles, slices, None)
    stored = EvaluationResult.from_json(json.loads(json.dumps(result.to_json(), allow_nan=False)))
    decision = decide_promotion_from(stored, PromotionGates())
    assert decision == decide_promotion(challenger, champion, None, slices, PromotionGates())
    assert not decision.promote and "origin=EWR (800 rows)" in decision.summary and "LGA" not in decision.summary
    first = EvaluationResult.from_evaluation("flights", "v0001", None, "2013-03", {"challenger": challenger}, [], None)
    assert decide_promotion_from(first, PromotionGates(first_model_min_pr_lift=1.5)).promote
    # a version a rollback took out of service is not promoted again on the evaluation that once let it in
    again = decide_promotion_from(first, PromotionGates(first_model_min_pr_lift=1.5), rolled_back={"v0001"})
    assert not again.promote and again.reasons == ["v0001 was rolled back before: never promoted again"]


def test_an_undefined_challenger_auc_is_never_promoted() -> None:
    undefined = {"roc_auc": None, "pr_auc": None, "log_loss": 0.4, "base_rate": 0.0}
    first = EvaluationResult("flights", "v0001", None, "2013-03", {"challenger": undefined}, (), None)
    assert not decide_promotion_from(first, PromotionGates()).promote


# --- rollback and retraining rules, on typed live summaries ---------------------------------------------------------

REFERENCE = {"share_above_0_99": 0.0, "share_below_0_01": 0.01, "std": 0.15}
HEALTHY_CHAMPION = VariantLive(
    version="v0002",
    rows=5000,
    requests=5000,
    live_roc_auc=0.73,
    live_log_loss=0.5,
    score_std=0.14,
    share_above_0_99=0.0,
    share_below_0_01=0.02,
    error_rate=0.0,
    evaluation_roc_auc=0.75,
    auc_drop=0.02,
)
HEALTHY = LiveSummary("2013-04", 5000, {"champion": HEALTHY_CHAMPION}, {"champion": replace(HEALTHY_CHAMPION, rows=40)})


def live(**champion: Any) -> LiveSummary:
    return replace(HEALTHY, batch={"champion": replace(HEALTHY_CHAMPION, **champion)})


def online_errors(rate: float, requests: int = 400) -> LiveSummary:
    """The online champion asked ``requests`` predictions, ``rate`` of them failed, half of the answered labelled."""
    answered_labelled = int(requests * (1 - rate)) // 2
    online = replace(HEALTHY_CHAMPION, rows=answered_labelled, requests=requests, error_rate=rate)
    return replace(HEALTHY, online={"champion": online})


def test_rollback_rules() -> None:
    policy = RollbackPolicy()
    assert rollback_reasons(HEALTHY, 0.75, REFERENCE, policy) == []
    assert "below the required" in rollback_reasons(live(live_roc_auc=0.69, auc_drop=0.06), 0.75, REFERENCE, policy)[0]
    assert "extreme" in rollback_reasons(live(share_above_0_99=0.3), 0.75, REFERENCE, policy)[0]
    # fewer extreme scores than in the reference is no explosion (a rare label's season): not a reason
    fewer = {**REFERENCE, "share_below_0_01": 0.62}
    assert rollback_reasons(live(share_below_0_01=0.497), 0.75, fewer, policy) == []
    assert "extreme" in rollback_reasons(live(share_below_0_01=0.75), 0.75, fewer, policy)[0]
    assert "collapsed" in rollback_reasons(live(score_std=0.01), 0.75, REFERENCE, policy)[0]
    assert "failed" in rollback_reasons(online_errors(0.02), 0.75, REFERENCE, policy)[0]
    # too few labelled rows: quality is not judged (errors still are)
    assert rollback_reasons(live(rows=50, live_roc_auc=0.5, auc_drop=0.25), 0.75, REFERENCE, policy) == []
    assert "failed" in rollback_reasons(replace(online_errors(0.02), batch={}), 0.75, REFERENCE, policy)[0]
    assert np.isclose(policy.max_auc_drop, 0.05)


def test_a_bound_met_exactly_is_met_whatever_the_floating_point_noise() -> None:
    """0.75 - 0.73 is 0.020000000000000018 in floating point: a slice that lost exactly the 0.02 AUC the gate allows
    was refused (83% of such 4-digit pairs), and a live AUC exactly 0.05 below the bar was rolled back (57%)."""
    exact = [{"slice": "origin", "value": "EWR", "rows": 600, "challenger_auc": 0.73, "champion_auc": 0.75}]
    better = {"roc_auc": CHAMPION["roc_auc"] + 0.002, "log_loss": 0.47, "base_rate": 0.25}
    assert decide_promotion(better, CHAMPION, None, exact, GATES).promote
    beyond = [{**exact[0], "challenger_auc": 0.7299}]
    assert not decide_promotion(better, CHAMPION, None, beyond, GATES).promote
    policy = RollbackPolicy()
    for required, auc in ((0.79, 0.74), (0.7123, 0.6623), (0.81, 0.76)):
        assert rollback_reasons(live(live_roc_auc=auc), required, REFERENCE, policy) == [], (required, auc)
    assert rollback_reasons(live(live_roc_auc=0.7399), 0.79, REFERENCE, policy)


def test_failed_online_predictions_are_judged_on_enough_requests_only() -> None:
    """One failure in two requests is not a failure rate: the error rate is judged from ``min_requests`` requests of
    the month on; a record written before requests were counted (live_summary version 1) is judged on the least
    number of requests its rows and error rate imply."""
    policy = RollbackPolicy()
    assert rollback_reasons(online_errors(0.5, requests=2), 0.75, REFERENCE, policy) == []
    assert rollback_reasons(online_errors(1.0, requests=policy.min_requests - 1), 0.75, REFERENCE, policy) == []
    at_floor = rollback_reasons(online_errors(0.02, requests=policy.min_requests), 0.75, REFERENCE, policy)
    assert at_floor == [f"2.0% of {policy.min_requests} online predictions failed (max 1%)"]
    # live_summary version 1 did not count requests: read as the least its rows and error rate (rounded to 6 digits)
    # imply: 3920 answered at 2% failed are 3999.9 requests at least; a failure without an answered row is 1
    cases = ((online_errors(1.0), 1, False), (online_errors(0.5, requests=1), 1, False))
    for summary, least, judged in (*cases, (online_errors(0.02, requests=8000), 3999, True)):
        version_1 = json.loads(json.dumps(summary.to_json()))
        version_1["schema_version"] = 1
        del version_1["fallback"]  # version 3's: version 1 had none
        for variants in (version_1["batch"], version_1["online"]):
            for variant in variants.values():
                del variant["requests"]
        read = LiveSummary.from_json(version_1)
        assert read.online_champion is not None and read.online_champion.requests == least
        assert read.champion == HEALTHY_CHAMPION  # 5000 rows, no error: 5000 requests, the rest as written
        assert bool(rollback_reasons(read, 0.75, REFERENCE, policy)) is judged
    with pytest.raises(
        RecordError, match=r"^LiveSummary.batch\['champion'\]: unknown field\(s\) requests in a live_summary version 1"
    ):
        stored = {k: v for k, v in online_errors(0.5).to_json().items() if k != "fallback"}
        LiveSummary.from_json({**json.loads(json.dumps(stored)), "schema_version": 1})
    unknown = json.loads(json.dumps(online_errors(0.5).to_json()))
    unknown["online"]["champion"]["requests"] = None  # version 2 counts them: an unknown count is refused
    with pytest.raises(RecordError, match=r"requests: expected int, found NoneType"):
        LiveSummary.from_json(unknown)
    with pytest.raises(RecordError, match="live_summary schema_version is 0, this code reads 4"):
        LiveSummary.from_json({**version_1, "schema_version": 0})
    with pytest.raises(RecordError, match="live_summary schema_version is 5, this code reads 4"):
        LiveSummary.from_json({**version_1, "schema_version": 5})
    with pytest.raises(RecordError, match="VariantLive.requests: 2 requests cannot have answered 40 rows"):
        replace(HEALTHY_CHAMPION, rows=40, requests=2)


def test_an_undefined_live_auc_is_not_judged_and_not_said() -> None:
    reasons = rollback_reasons(live(live_roc_auc=None, auc_drop=None), 0.75, REFERENCE, RollbackPolicy())
    assert reasons == []
    assert rollback_reasons(live(live_roc_auc=0.5, auc_drop=None), None, REFERENCE, RollbackPolicy()) == []  # no bar
    assert rollback_reasons(LiveSummary.empty("2013-04"), 0.75, REFERENCE, RollbackPolicy()) == []


def test_the_rule_reads_a_stored_summary_and_a_renamed_field_fails_loudly() -> None:
    bad = live(live_roc_auc=0.69, auc_drop=0.06)
    stored = json.loads(json.dumps(bad.to_json()))
    assert rollback_reasons(LiveSummary.from_json(stored), 0.75, REFERENCE, RollbackPolicy()) != []
    stored["batch"]["champion"]["live_auc"] = stored["batch"]["champion"].pop("live_roc_auc")
    renamed = r"batch\['champion'\]: missing field\(s\) live_roc_auc; unknown field\(s\) live_auc"
    with pytest.raises(RecordError, match=renamed):
        LiveSummary.from_json(stored)  # was: .get("champion_live_roc_auc") -> None -> the AUC rule silently off
    stored = json.loads(json.dumps(online_errors(0.02).to_json()))
    stored["online"]["champion"]["errors"] = stored["online"]["champion"].pop("error_rate")
    with pytest.raises(RecordError, match="error_rate"):
        LiveSummary.from_json(stored)


def test_retrain_reasons() -> None:
    assert performance_retrain_reason(HEALTHY, 0.02) is None  # a drop of exactly the margin is not more
    reason = performance_retrain_reason(live(live_roc_auc=0.72, auc_drop=0.03), 0.02)
    assert reason == "live AUC 0.7200 of v0002 in 2013-04 is 0.0300 below its evaluation AUC 0.7500 (margin 0.02)"
    assert performance_retrain_reason(live(evaluation_roc_auc=None, auc_drop=None), 0.02) is None
    assert performance_retrain_reason(LiveSummary.empty("2013-04"), 0.02) is None
    # four labelled rows with an AUC of 0.5 say nothing: no retrain below the rollback rule's floor of rows
    few = live(rows=4, live_roc_auc=0.5, auc_drop=0.25)
    assert performance_retrain_reason(few, 0.02) is None and performance_retrain_reason(few, 0.02, min_rows=4)
    drifted = DriftSummary(
        "2013-04", "v0002", True, 0.4, ("dep_delay",), "dep_delay (0.30)", None, None, "4/10 drifted"
    )
    assert drift_retrain_reason(drifted) == "drift in 2013-04: 4/10 drifted"
    assert drift_retrain_reason(DriftSummary.no_champion("2013-04")) is None


def test_a_rollback_for_a_fallen_auc_alone_is_declined_when_its_target_does_no_better_on_the_month() -> None:
    """The version a rollback would go to, scored on the champion's rows of the month (``fallback``): no better there,
    the rollback is declined; better, or not comparable, or the champion's outputs broke, it goes ahead."""
    policy = RollbackPolicy()
    fallen = live(live_roc_auc=0.66, auc_drop=0.09)  # 0.09 below the required 0.75

    def with_fallback(summary: LiveSummary, auc: float | None, version: str = "v0001") -> LiveSummary:
        # the earlier version's scores on the same rows as spread and as extreme as the healthy champion's
        return replace(summary, fallback=FallbackLive(version, 5000, auc, 0.14, 0.0, 0.02))

    for auc in (0.60, 0.66):  # worse, or as good: declined, with both AUCs
        why = rollback_declined(with_fallback(fallen, auc), 0.75, REFERENCE, policy, target="v0001")
        assert why == (
            f"v0001, the version it would go to, did no better on the month's 5,000 labelled rows (AUC {auc:.4f} vs "
            "the champion's 0.6600): the champion stays"
        )
    assert rollback_declined(with_fallback(fallen, 0.6601), 0.75, REFERENCE, policy, target="v0001") is None
    assert rollback_declined(fallen, 0.75, REFERENCE, policy, target="v0001") is None  # no fallback scored
    assert rollback_declined(with_fallback(fallen, None), 0.75, REFERENCE, policy, target="v0001") is None
    assert rollback_declined(with_fallback(fallen, 0.60), 0.75, REFERENCE, policy, target="v0003") is None  # moved
    assert rollback_declined(with_fallback(fallen, 0.60), 0.75, REFERENCE, policy, target=None) is None
    extreme = replace(fallen, batch={"champion": replace(fallen.batch["champion"], share_above_0_99=0.5)})
    assert rollback_declined(with_fallback(extreme, 0.60), 0.75, REFERENCE, policy, target="v0001") is None
    assert rollback_declined(with_fallback(HEALTHY, 0.60), 0.75, REFERENCE, policy, target="v0001") is None


#: The cancellation model's October 2013 as the simulation judged it (a rare label in a month with little of it): its
#: reference profile (training scores) and its scores on the month, calibrated and ranking well (live AUC 0.859).
RARE_REFERENCE = {"share_above_0_99": 0.0, "share_below_0_01": 0.548, "std": 0.0899}
QUIET_MONTH = live(live_roc_auc=0.859, auc_drop=0.0, score_std=0.0178, share_below_0_01=0.704)


def test_scores_the_month_moved_for_every_model_roll_nothing_back() -> None:
    """A calibrated rare-label model in a month with little of the label gives more scores under 0.01 and a narrower
    spread than on its training rows: the extreme and spread rules fired on their own (the cancellation model was
    rolled back in October and November of the simulation, live AUC fine). The version a rollback would go to,
    scored on the same rows, shows whether the month or the champion moved them: as extreme and as narrow there, the
    champion stays; its outputs off beside it (or not compared, or failing predictions), it is rolled back."""
    policy = RollbackPolicy()
    reasons = rollback_reasons(QUIET_MONTH, 0.86, RARE_REFERENCE, policy)
    assert [r.split(":")[0].split(" ")[-1] for r in reasons] == ["profile", "collapsed"], reasons

    def beside(summary: LiveSummary, std: float | None, below: float | None, above: float | None = 0.0) -> str | None:
        scored = replace(summary, fallback=FallbackLive("v0001", 5000, 0.85, std, above, below))
        return rollback_declined(scored, 0.86, RARE_REFERENCE, policy, target="v0001")

    assert beside(QUIET_MONTH, 0.019, 0.69) == (
        "v0001, the version it would go to, did no better on the month's 5,000 labelled rows (69.0% extreme scores "
        "and a spread of 0.0190 vs the champion's 70.4% and 0.0178): the champion stays"
    )
    assert beside(QUIET_MONTH, 0.07, 0.69) is not None  # the champion's spread within 4x of the earlier version's
    assert beside(QUIET_MONTH, 0.072, 0.69) is None  # beyond: its spread collapsed beside the earlier version's
    assert beside(QUIET_MONTH, 0.019, 0.604) is not None  # exactly the allowed 10 points more extreme
    assert beside(QUIET_MONTH, 0.019, 0.60) is None  # more extreme than the earlier version by more than allowed
    assert beside(QUIET_MONTH, None, None, None) is None  # not compared (a live_summary version 3): rolled back
    assert rollback_declined(QUIET_MONTH, 0.86, RARE_REFERENCE, policy, target="v0001") is None  # nothing scored
    failing = replace(QUIET_MONTH, online=online_errors(0.5).online)
    assert beside(failing, 0.019, 0.69) is None  # failed predictions are the champion's whatever the month
    # outputs the month explains and an AUC the earlier version does better on: rolled back (for the AUC)
    fallen = replace(QUIET_MONTH, batch={"champion": replace(QUIET_MONTH.batch["champion"], live_roc_auc=0.78)})
    assert rollback_reasons(fallen, 0.86, RARE_REFERENCE, policy)[0].startswith("live AUC 0.7800")
    assert beside(fallen, 0.019, 0.69) is None
    worse = replace(fallen, fallback=FallbackLive("v0001", 5000, 0.77, 0.019, 0.0, 0.69))
    assert "AUC 0.7700 vs the champion's 0.7800; 69.0% extreme" in str(
        rollback_declined(worse, 0.86, RARE_REFERENCE, policy, target="v0001")
    )


def test_a_live_record_keeps_its_fallback_and_reads_earlier_versions_without_one() -> None:
    scored = replace(HEALTHY, fallback=FallbackLive("v0001", 4000, 0.7, 0.1, 0.0, 0.3))
    assert LiveSummary.from_json(json.loads(json.dumps(scored.to_json()))) == scored
    version_2 = {k: v for k, v in json.loads(json.dumps(scored.to_json())).items() if k != "fallback"}
    assert LiveSummary.from_json({**version_2, "schema_version": 2}) == HEALTHY  # version 2 scored no fallback
    with pytest.raises(RecordError, match="missing field"):
        LiveSummary.from_json(version_2)  # this version without it: refused, not read as "no fallback"
    with pytest.raises(RecordError, match="unknown field\\(s\\) fallback in a live_summary version 2"):
        LiveSummary.from_json({**scored.to_json(), "schema_version": 2})
    # version 3 kept the fallback's AUC only: its scores read as not known (the rule then rolls back as before)
    version_3 = json.loads(json.dumps(scored.to_json()))
    version_3["schema_version"] = 3
    for name in ("score_std", "share_above_0_99", "share_below_0_01"):
        del version_3["fallback"][name]
    unscored = replace(scored, fallback=FallbackLive("v0001", 4000, 0.7, None, None, None))
    assert LiveSummary.from_json(version_3) == unscored
    assert LiveSummary.from_json({**version_3, "fallback": None}) == HEALTHY
    with pytest.raises(
        RecordError, match=r"fallback: unknown field\(s\) score_std, share_above_0_99, share_below_0_01"
    ):
        LiveSummary.from_json({**scored.to_json(), "schema_version": 3})
