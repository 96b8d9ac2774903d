"""Promotion and rollback rules: when a challenger replaces the champion, and when a champion is taken out. Pure
functions of evaluation and live results, so every decision can be explained and tested without a model."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops_assets.core.records import EvaluationResult, FallbackLive, LiveSummary, VariantLive


@dataclass(frozen=True)
class PromotionGates:
    """Promotion thresholds (the defaults of the design).

    Attributes:
        min_auc_gain: the challenger's ROC AUC must beat the champion's by at least this.
        max_log_loss_increase: its log loss may be worse by at most this.
        slice_min_rows: slices with fewer test rows are not judged (their AUC is noise).
        max_slice_auc_drop: no judged slice may lose more AUC than this against the champion.
        first_model_min_auc: without a champion, the model must reach this AUC (the base-rate model has 0.5) and
            beat the base-rate model's log loss.
        max_pr_auc_drop: the challenger's PR AUC (average precision) may be worse than the champion's by at most this;
            None: not judged. For a rare positive class, ROC AUC can rise while the top of the ranking gets worse.
        first_model_min_pr_lift: without a champion, PR AUC must reach this multiple of the base rate (a random
            ranking's PR AUC is the base rate); None: not judged.
        slice_min_positives: slices with fewer positive test rows are not judged either (a rare class's slice AUC
            rests on its positives).
        max_plausible_auc: a held-out ROC AUC above this is not believed, first model or not: it is the mark of a
            feature that leaks the label (the outcome itself, or a fact known only after the prediction time), which
            scores well offline and fails in production. None: not judged.
    """

    min_auc_gain: float = 0.002
    max_log_loss_increase: float = 0.0
    slice_min_rows: int = 500
    max_slice_auc_drop: float = 0.02
    first_model_min_auc: float = 0.55
    max_pr_auc_drop: float | None = None
    first_model_min_pr_lift: float | None = None
    slice_min_positives: int = 0
    max_plausible_auc: float | None = 0.99


#: Metrics are compared with the gates after floating-point noise: a bound met exactly is met (0.75 - 0.73 is
#: 0.020000000000000018, which refused a slice that lost exactly the 0.02 AUC the gate allows).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    #: no champion to keep: the challenger was judged against the base-rate model
    first_model: bool = False

    @property
    def summary(self) -> str:
        verdict = (
            "promote" if self.promote else "not promoted, no champion yet" if self.first_model else "keep the champion"
        )
        return f"{verdict}: " + "; ".join(self.reasons)


def base_rate_log_loss(base_rate: float) -> float:
    """Log loss of the model that always predicts the base rate."""
    r = min(max(base_rate, 1e-15), 1 - 1e-15)
    return -(r * math.log(r) + (1 - r) * math.log(1 - r))


def scores_are_sane(scores: np.ndarray) -> str | None:
    """None when every score is a finite probability; else what is wrong."""
    if len(scores) == 0:
        return "no scores"
    if not np.all(np.isfinite(scores)):
        return f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite"
    if scores.min() < 0 or scores.max() > 1:
        return f"scores outside [0, 1] (min {scores.min():.3g}, max {scores.max():.3g})"
    return None


def decide_promotion(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    score_problem: str | None,
    slices: list[dict[str, Any]],
    gates: PromotionGates,
) -> PromotionDecision:
    """Apply the gates to metrics measured on the same held-out rows for both models.

    Args:
        challenger / champion: :func:`mlops_assets.core.evaluation.metrics` of each (champion None for the first model).
        score_problem: :func:`scores_are_sane` of the challenger's scores on those rows (None when sane).
        slices: per-slice rows with ``rows``, ``challenger_auc`` and ``champion_auc``.
    """
    if score_problem:
        return PromotionDecision(False, [f"challenger refused: {score_problem}"], first_model=champion is None)
    auc, loss = challenger["roc_auc"], challenger["log_loss"]
    if gates.max_plausible_auc is not None and auc > gates.max_plausible_auc + TOLERANCE:
        # judged before the rest: a leaking model passes every other gate, and no other clause may read as a reason
        # to promote it
        return PromotionDecision(
            False,
            [
                f"AUC {auc:.4f} is above {gates.max_plausible_auc}: too good to believe. A feature most likely leaks "
                "the label (the outcome itself, or a fact known only after the prediction time): check the feature "
                "SQL, or promote it by hand (`mlops promote --to VERSION`) if it is real" + _failed(False)
            ],
            first_model=champion is None,
        )
    if champion is None:
        reference = base_rate_log_loss(challenger["base_rate"])
        auc_ok, loss_ok = auc >= gates.first_model_min_auc - TOLERANCE, loss < reference
        reasons = [
            f"first model: AUC {auc:.4f} vs 0.5 for the base-rate model (needs >= {gates.first_model_min_auc})"
            + _failed(auc_ok),
            f"log loss {loss:.4f} vs {reference:.4f} for the base-rate model (needs lower)" + _failed(loss_ok),
        ]
        ok = auc_ok and loss_ok
        if gates.first_model_min_pr_lift is not None:
            lift = challenger["pr_auc"] / challenger["base_rate"] if challenger["base_rate"] > 0 else 0.0
            lift_ok = lift >= gates.first_model_min_pr_lift - TOLERANCE
            reasons.append(
                f"PR AUC {challenger['pr_auc']:.4f} is {lift:.1f}x the base rate "
                f"{challenger['base_rate']:.4f} (needs >= {gates.first_model_min_pr_lift}x)" + _failed(lift_ok)
            )
            ok = ok and lift_ok
        return PromotionDecision(ok, reasons, first_model=True)

    reasons: list[str] = []
    gain = auc - champion["roc_auc"]
    auc_ok = gain >= gates.min_auc_gain - TOLERANCE
    reasons.append(
        f"AUC {auc:.4f} vs {champion['roc_auc']:.4f} ({gain:+.4f}, needs >= +{gates.min_auc_gain})" + _failed(auc_ok)
    )
    loss_change = loss - champion["log_loss"]
    loss_ok = loss_change <= gates.max_log_loss_increase + TOLERANCE
    reasons.append(
        f"log loss {loss:.4f} vs {champion['log_loss']:.4f} ({loss_change:+.4f}, may rise by <= "
        f"{gates.max_log_loss_increase:g})" + _failed(loss_ok)
    )
    pr_ok = True
    if gates.max_pr_auc_drop is not None:
        pr_change = challenger["pr_auc"] - champion["pr_auc"]
        pr_ok = pr_change >= -gates.max_pr_auc_drop - TOLERANCE
        reasons.append(
            f"PR AUC {challenger['pr_auc']:.4f} vs {champion['pr_auc']:.4f} ({pr_change:+.4f}, "
            f"may drop by <= {gates.max_pr_auc_drop})" + _failed(pr_ok)
        )
    regressions = [
        f"{s['slice']}={s['value']} ({s['rows']} rows) AUC {s['challenger_auc']:.3f} vs {s['champion_auc']:.3f}"
        for s in slices
        if s["rows"] >= gates.slice_min_rows
        and s.get("positives", s["rows"]) >= gates.slice_min_positives
        and not math.isnan(s["challenger_auc"])
        and not math.isnan(s["champion_auc"])
        and s["champion_auc"] - s["challenger_auc"] > gates.max_slice_auc_drop + TOLERANCE
    ]
    if regressions:
        reasons.append(
            f"slice regression beyond {gates.max_slice_auc_drop}: " + ", ".join(regressions) + _failed(False)
        )
    else:
        judged = f">= {gates.slice_min_rows} rows" + (
            f" and >= {gates.slice_min_positives} positives" if gates.slice_min_positives else ""
        )
        reasons.append(f"no slice with {judged} loses more than {gates.max_slice_auc_drop} AUC")
    return PromotionDecision(auc_ok and loss_ok and pr_ok and not regressions, reasons)


def _failed(passed: bool) -> str:
    """The mark on a gate's clause that failed, so a kept-out challenger's summary says which gate kept it out."""
    return "" if passed else " [FAILED]"


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def decide_promotion_from(
    result: EvaluationResult, gates: PromotionGates, rolled_back: Collection[str] = ()
) -> PromotionDecision:
    """:func:`decide_promotion` on a stored evaluation. Undefined metrics (None) go in as NaN, so they fail every
    gate that compares them and an undefined slice AUC is not judged, exactly as with the raw metrics. A challenger
    in ``rolled_back`` (versions a rollback took out of service) is not promoted again on its old evaluation: only a
    person brings it back (``mlops rollback --to``)."""
    if result.challenger_version in rolled_back:
        return PromotionDecision(False, [f"{result.challenger_version} was rolled back before: never promoted again"])
    challenger = {name: _nan_if_none(value) for name, value in result.metrics["challenger"].items()}
    stored = result.metrics.get("champion")
    champion = {name: _nan_if_none(value) for name, value in stored.items()} if stored is not None else None
    slices = [
        {
            "slice": s.slice,
            "value": s.value,
            "rows": s.rows,
            "positives": s.positives,
            "challenger_auc": _nan_if_none(s.challenger_auc),
            "champion_auc": _nan_if_none(s.champion_auc),
        }
        for s in result.slices
    ]
    return decide_promotion(challenger, champion, result.challenger_score_problem, slices, gates)


@dataclass(frozen=True)
class RollbackPolicy:
    """When the serving champion is taken out of production (the design's rollback rule).

    Attributes:
        max_auc_drop: live AUC may fall at most this far below the AUC the champion must hold (its own evaluation AUC
            when it came in through the gates; the last gated champion's when it was forced in).
        max_extreme_shift: the share of scores above 0.99 or below 0.01 may rise at most this far above the
            reference profile's (outputs exploding to certainty).
        min_score_std_ratio: the scores' spread may not shrink below this share of the reference spread (collapse).
        max_error_rate: share of failed online predictions.
        min_requests: online predictions asked of the champion in the month before their error rate is judged (one
            failure in two requests is not a failure rate).
        min_rows: labelled rows needed before quality is judged at all.
    """

    max_auc_drop: float = 0.05
    max_extreme_shift: float = 0.1
    min_score_std_ratio: float = 0.25
    max_error_rate: float = 0.01
    min_requests: int = 100
    min_rows: int = 200


def rollback_reasons(
    live: LiveSummary, required_auc: float | None, reference_scores: Mapping[str, Any], policy: RollbackPolicy
) -> list[str]:
    """Why the champion's live numbers call for a rollback; empty when they do not.

    Quality (AUC, extreme scores, spread) is judged on the batch champion once it has ``policy.min_rows`` labelled
    rows; a live AUC of None (the month has one class) is not judged. Failed predictions are judged on the online
    champion once it was asked ``policy.min_requests`` predictions in the month, when it is the version that scored
    the batch (the one judged), and on the batch champion's scores that were not finite (counted as failed).
    ``reference_scores`` is the ``scores`` part of the champion's reference profile.
    """
    return (
        _auc_reasons(live, required_auc, policy)
        + _output_reasons(live, reference_scores, policy)
        + _failure_reasons(live, policy)
    )


def _judged_quality(live: LiveSummary, policy: RollbackPolicy) -> VariantLive | None:
    """The batch champion when it has enough labelled rows for its quality to be judged."""
    champion = live.champion
    return champion if champion is not None and champion.rows >= policy.min_rows else None


def _auc_reasons(live: LiveSummary, required_auc: float | None, policy: RollbackPolicy) -> list[str]:
    champion = _judged_quality(live, policy)
    auc = champion.live_roc_auc if champion is not None else None
    if auc is None or required_auc is None or required_auc - auc <= policy.max_auc_drop + TOLERANCE:
        return []
    drop = required_auc - auc
    return [f"live AUC {auc:.4f} is {drop:.4f} below the required {required_auc:.4f} (max drop {policy.max_auc_drop})"]


def _extreme_share(scores: VariantLive | FallbackLive) -> float | None:
    if scores.share_above_0_99 is None or scores.share_below_0_01 is None:
        return None
    return scores.share_above_0_99 + scores.share_below_0_01


def _output_reasons(live: LiveSummary, reference_scores: Mapping[str, Any], policy: RollbackPolicy) -> list[str]:
    """The champion's scores went extreme or collapsed against its reference profile (its training scores)."""
    champion = _judged_quality(live, policy)
    if champion is None:
        return []
    reasons = []
    extreme = _extreme_share(champion) or 0.0
    # a profile without scores (features only) has no shares: compared with none, as before
    reference_extreme = sum(reference_scores.get(k, 0.0) for k in ("share_above_0_99", "share_below_0_01"))
    # a rise only: fewer near-certain scores is no explosion (a rare label in a season that has more of it; a
    # collapse towards the middle is the spread rule's). Both ways rolled a sound champion back to a worse one
    if extreme - reference_extreme > policy.max_extreme_shift + TOLERANCE:
        reasons.append(
            f"{extreme:.1%} of scores are extreme (< 0.01 or > 0.99) vs {reference_extreme:.1%} in its "
            "reference profile"
        )
    spread, reference_spread = champion.score_std, reference_scores.get("std")
    if reference_spread and spread < policy.min_score_std_ratio * reference_spread:
        reasons.append(f"scores collapsed: spread {spread:.4f} vs {reference_spread:.4f} in its reference profile")
    return reasons


def _failure_reasons(live: LiveSummary, policy: RollbackPolicy) -> list[str]:
    reasons = []
    champion = live.champion
    # the batch champion's scores that were not numbers (a damaged model), judged on as many rows as requests are
    failing = champion is not None and champion.error_rate > policy.max_error_rate + TOLERANCE
    if failing and champion is not None and champion.requests >= policy.min_requests:
        reasons.append(
            f"{champion.error_rate:.1%} of its {champion.requests:,} scores on the month's rows were not finite "
            f"(max {policy.max_error_rate:.0%})"
        )
    online = live.online_champion
    # another version's failures (one promoted, then rolled back, mid-month) say nothing of the champion judged here
    judged = online is not None and (live.champion is None or online.version == live.champion_version)
    if judged and online.requests >= policy.min_requests and online.error_rate > policy.max_error_rate + TOLERANCE:
        limit = f"max {policy.max_error_rate:.0%}"
        reasons.append(f"{online.error_rate:.1%} of {online.requests:,} online predictions failed ({limit})")
    return reasons


def rollback_declined(
    live: LiveSummary,
    required_auc: float | None,
    reference_scores: Mapping[str, Any],
    policy: RollbackPolicy,
    target: str | None,
) -> str | None:
    """Why a rollback :func:`rollback_reasons` calls for would not help (None: roll back).

    ``live.fallback`` is ``target``, the version the rollback would go to, scored on the same labelled rows of the
    month as the champion. A fallen AUC is kept when the target did no better there: a month that every model finds
    harder (a season, a storm) is no reason to serve an older model, and a rollback went to one that was worse there.
    Extreme or collapsed scores are kept when the target's scores on those rows are as extreme, or as narrow, by the
    same rule: the month moved the scores, not a fault of the champion (a rare label in a month that has little of
    it gives a calibrated model many scores under 0.01 and a narrow spread; the cancellation model was rolled back
    in October and November for that alone). Failed predictions always roll back. Without the comparison (no target
    scored, another target by now, one class) it rolls back as before."""
    if not rollback_reasons(live, required_auc, reference_scores, policy) or _failure_reasons(live, policy):
        return None
    fallback, champion = live.fallback, live.champion
    if fallback is None or target is None or fallback.version != target or champion is None:
        return None
    kept = []
    if _auc_reasons(live, required_auc, policy):
        if fallback.live_roc_auc is None or champion.live_roc_auc is None:
            return None
        if fallback.live_roc_auc > champion.live_roc_auc + TOLERANCE:
            return None
        kept.append(f"AUC {fallback.live_roc_auc:.4f} vs the champion's {champion.live_roc_auc:.4f}")
    if _output_reasons(live, reference_scores, policy):
        if fallback.score_std is None or _extreme_share(fallback) is None:
            return None  # its scores not kept (a record from before): not compared
        if _output_reasons(live, fallback.scores_reference(), policy):
            return None  # the champion's outputs are off beside the earlier version's on the same rows too
        kept.append(
            f"{_extreme_share(fallback):.1%} extreme scores and a spread of {fallback.score_std:.4f} vs the "
            f"champion's {_extreme_share(champion):.1%} and {champion.score_std:.4f}"
        )
    return (
        f"{target}, the version it would go to, did no better on the month's {fallback.rows:,} labelled rows "
        f"({'; '.join(kept)}): the champion stays"
    )
