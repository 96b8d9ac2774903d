"""Promotion rules: when a challenger replaces the champion. Pure functions of evaluation results, so every decision
can be explained and tested without a model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
    """

    min_auc_gain: float = 0.002
    max_log_loss_increase: float = 0.0
    slice_min_rows: int = 500
    max_slice_auc_drop: float = 0.02
    first_model_min_auc: float = 0.55


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return ("promote: " if self.promote else "keep the champion: ") + "; ".join(self.reasons)


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
        return PromotionDecision(False, [f"challenger refused: {score_problem}"])
    auc, loss = challenger["roc_auc"], challenger["log_loss"]
    if champion is None:
        reference = base_rate_log_loss(challenger["base_rate"])
        reasons = [f"first model: AUC {auc:.4f} vs 0.5 for the base-rate model (needs >= {gates.first_model_min_auc})",
                   f"log loss {loss:.4f} vs {reference:.4f} for the base-rate model"]  # fmt: skip
        ok = auc >= gates.first_model_min_auc and loss < reference
        return PromotionDecision(ok, reasons)

    reasons: list[str] = []
    gain = auc - champion["roc_auc"]
    auc_ok = gain >= gates.min_auc_gain
    reasons.append(f"AUC {auc:.4f} vs {champion['roc_auc']:.4f} ({gain:+.4f}, needs >= +{gates.min_auc_gain})")
    loss_change = loss - champion["log_loss"]
    loss_ok = loss_change <= gates.max_log_loss_increase
    reasons.append(f"log loss {loss:.4f} vs {champion['log_loss']:.4f} ({loss_change:+.4f})")
    regressions = [
        f"{s['slice']}={s['value']} ({s['rows']} rows) AUC {s['challenger_auc']:.3f} vs {s['champion_auc']:.3f}"
        for s in slices
        if s["rows"] >= gates.slice_min_rows
        and not math.isnan(s["challenger_auc"]) and not math.isnan(s["champion_auc"])
        and s["champion_auc"] - s["challenger_auc"] > gates.max_slice_auc_drop
    ]  # fmt: skip
    if regressions:
        reasons.append(f"slice regression beyond {gates.max_slice_auc_drop}: " + ", ".join(regressions))
    else:
        reasons.append(f"no slice with >= {gates.slice_min_rows} rows loses more than {gates.max_slice_auc_drop} AUC")
    return PromotionDecision(auc_ok and loss_ok and not regressions, reasons)
