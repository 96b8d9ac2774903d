"""Point-in-time helpers: trailing-window aggregates of events known strictly before each row's prediction time.

For a row predicted at ``t`` and a window ``w``, the aggregate covers the events of the same key whose known-at time
lies in ``[t - w, t)``. It is computed as a difference of per-key cumulative sums found by two as-of joins (events
known before ``t`` minus events known before ``t - w``), so each window costs a sort and two merges whatever its length.
Sums of integer-valued columns (minutes, 0/1 flags) are exact, so a month built alone equals the same month in a full
build bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl


@dataclass(frozen=True)
class TrailingWindow:
    """Mean and count of ``value`` over the events of the same ``by`` key known in ``[t - window, t)``.

    Attributes:
        mean_name: output column for the mean (null when the window holds no event).
        count_name: output column for the number of events in the window.
        by: key columns, e.g. ``("origin",)``.
        known_at: when each row's event became known; rows where it or ``value`` is null are no event.
        value: the column averaged.
        window: the trailing window length.
    """

    mean_name: str
    count_name: str
    by: tuple[str, ...]
    known_at: str
    value: str
    window: timedelta


def _cumulative(events: pl.DataFrame, spec: TrailingWindow) -> pl.DataFrame:
    """Per key, cumulative sum and count of the value at each distinct known-at time, in time order."""
    by = list(spec.by)
    return (
        events.filter(pl.col(spec.known_at).is_not_null() & pl.col(spec.value).is_not_null())
        .group_by([*by, spec.known_at])
        .agg(pl.col(spec.value).sum().alias("_sum"), pl.len().cast(pl.Int64).alias("_n"))
        .sort(spec.known_at)
        .with_columns(pl.col("_sum").cum_sum().over(by), pl.col("_n").cum_sum().over(by))
        .rename({spec.known_at: "_ts"})
    )


def add_trailing_windows(
    rows: pl.DataFrame, windows: tuple[TrailingWindow, ...], time_column: str, targets: pl.Expr | None = None
) -> pl.DataFrame:
    """Add each window's mean and count columns to the target rows.

    Args:
        rows: every row in the look-back and the target period; all of them are events, only targets get features.
        windows: the aggregates to add.
        time_column: the prediction time of each row (events must be known strictly before it).
        targets: which rows get features (default: all). Output keeps the input order of the target rows.
    """
    out = rows.filter(targets) if targets is not None else rows
    out = out.with_row_index("_pos")
    for spec in windows:
        by = list(spec.by)
        cumulative = _cumulative(rows, spec)
        at_t = cumulative.rename({"_sum": "_sum_t", "_n": "_n_t"})
        at_start = cumulative.rename({"_sum": "_sum_0", "_n": "_n_0"})
        queries = out.select("_pos", *by, pl.col(time_column).alias("_t")).with_columns(
            (pl.col("_t") - spec.window).alias("_since")
        )
        joined = (
            queries.sort("_t")
            .join_asof(at_t, left_on="_t", right_on="_ts", by=by, strategy="backward", allow_exact_matches=False,
                       check_sortedness=False)
            .sort("_since")
            .join_asof(at_start, left_on="_since", right_on="_ts", by=by, strategy="backward", allow_exact_matches=False,
                       check_sortedness=False)
            .select(
                "_pos",
                (pl.col("_sum_t").fill_null(0) - pl.col("_sum_0").fill_null(0)).alias("_sum"),
                (pl.col("_n_t").fill_null(0) - pl.col("_n_0").fill_null(0)).alias("_n"),
            )
        )
        out = out.join(joined, on="_pos", how="left").with_columns(
            (pl.col("_sum").cast(pl.Float64) / pl.when(pl.col("_n") > 0).then(pl.col("_n"))).alias(spec.mean_name),
            pl.col("_n").cast(pl.Float64).alias(spec.count_name),
        ).drop("_sum", "_n")
    return out.sort("_pos").drop("_pos")
