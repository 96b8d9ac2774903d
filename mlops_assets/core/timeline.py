"""The replayed year's timeline: per month, what drift said, whether the platform retrained and why, which model
served, and how it did against a model frozen at the start."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from mlops_assets.core.evaluation import figure_png, markdown_image, subplots
from mlops_assets.core.markdown import frame_to_markdown


@dataclass(frozen=True)
class TimelineRow:
    month: str
    drifted: bool | None
    drift_share: float | None
    top_drifted: str
    score_drift: float | None
    retrained: bool
    retrain_trigger: str
    retrain_reason: str
    champion_version: str
    champion_live_auc: float | None
    frozen_version: str
    frozen_live_auc: float | None
    challenger_version: str
    promoted: bool
    decision: str
    champion_after: str
    #: runs of the month that failed, each with its failed step and error ("" when none): the champion kept serving
    failed_runs: str = ""
    #: the version the rollback sensor (or a person) moved the champion back to this month ("" when none)
    rolled_back_to: str = ""
    #: the rollback sensor kept the champion: only its AUC fell, and the version it would go to did no better
    rollback_declined: bool = False


def timeline_frame(rows: list[TimelineRow]) -> pl.DataFrame:
    return pl.DataFrame(
        [asdict(r) for r in rows],
        schema_overrides={
            "drifted": pl.Boolean,
            "drift_share": pl.Float64,
            "score_drift": pl.Float64,
            "champion_live_auc": pl.Float64,
            "frozen_live_auc": pl.Float64,
        },
    )


def months_champion_wins(frame: pl.DataFrame, since: str) -> tuple[int, int]:
    """(months from ``since`` on where the serving champion beat the frozen model, months compared). A month whose
    champion is the frozen model itself compares nothing and is left out."""
    compared = frame.filter(
        (pl.col("month") >= since)
        & pl.col("champion_live_auc").is_not_null()
        & pl.col("frozen_live_auc").is_not_null()
        & (pl.col("champion_version") != pl.col("frozen_version"))
    )
    wins = compared.filter(pl.col("champion_live_auc") > pl.col("frozen_live_auc")).height
    return wins, compared.height


def champion_vs_frozen(wins: int, compared: int, since: str) -> str:
    """The comparison in words (no month to compare is said, not shown as 0 of 0)."""
    if compared == 0:
        return f"No month from {since} on had a champion other than the frozen first model to compare with it"
    return f"From {since} on, the serving champion beat the frozen first model in {wins} of {compared} months"


def timeline_plot(frame: pl.DataFrame) -> bytes:
    """Live AUC of the serving champion and of the frozen first model per month; drift share as bars; retrains,
    promotions and rollbacks marked."""
    figure, (top, bottom) = subplots(2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    x = np.arange(frame.height)
    months = frame["month"].to_list()
    top.plot(x, frame["champion_live_auc"].to_numpy(), marker="o", label="serving champion (retrained by the platform)")
    top.plot(x, frame["frozen_live_auc"].to_numpy(), marker="s", linestyle="--", label="frozen first model")
    for i, row in enumerate(frame.iter_rows(named=True)):
        if row.get("rolled_back_to"):
            top.annotate(
                f"rolled back to {row['rolled_back_to']}",
                (i, row["champion_live_auc"] or 0),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
                color="tab:red",
            )
        if row["promoted"]:
            top.annotate(
                f"-> {row['champion_after']}",
                (i, row["champion_live_auc"] or 0),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
                color="green",
            )
    top.set(
        ylabel="live ROC AUC (month scored before retraining)", title="Replayed feed: champion vs frozen first model"
    )
    top.legend(fontsize=8, loc="lower left")
    colors = ["tab:red" if d else "tab:grey" for d in frame["drifted"].fill_null(False).to_list()]
    bottom.bar(x, frame["drift_share"].fill_null(0).to_numpy(), color=colors)
    for i, retrained in enumerate(frame["retrained"].to_list()):
        if retrained:
            bottom.annotate("retrain", (i, 0), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    bottom.set(ylabel="share of features drifted\n(red: month drifted)", ylim=(0, 1))
    bottom.set_xticks(x, months, rotation=30)
    return figure_png(figure)


def timeline_markdown(frame: pl.DataFrame, plot: bytes, since: str, table: str) -> str:
    wins, compared = months_champion_wins(frame, since)
    shown = frame.select(
        "month",
        "drifted",
        "drift_share",
        "top_drifted",
        "retrained",
        "retrain_trigger",
        "champion_version",
        "champion_live_auc",
        "frozen_live_auc",
        "challenger_version",
        "promoted",
        *(["rolled_back_to"] if "rolled_back_to" in frame.columns and (frame["rolled_back_to"] != "").any() else []),
        *(["rollback_declined"] if "rollback_declined" in frame.columns and frame["rollback_declined"].any() else []),
        "champion_after",
        *(["failed_runs"] if (frame["failed_runs"] != "").any() else []),
    )
    return "\n".join(
        [
            "## Replayed year: the platform keeping its model alive",
            "",
            champion_vs_frozen(wins, compared, since).replace(f"{wins} of {compared}", f"**{wins} of {compared}**")
            + ".",
            "",
            markdown_image(plot, "timeline"),
            "",
            frame_to_markdown(shown, max_rows=frame.height),
            "",
            f"Retrain reasons and promotion decisions are in the `retrain_reason` and `decision` columns of `{table}`.",
        ]
    )
