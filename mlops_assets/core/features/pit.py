"""Point-in-time helpers: as-of lookups and trailing windows over facts known before each row's prediction time.

Both work on rows sorted by prediction time and add columns in that order, so each costs a sort of the (narrow) right
side and a merge, never a join back onto the wide frame.

* :class:`AsOfLookup`: the latest row of another frame with the same key that was known by the prediction time
  (weather at the origin, a plane's previous leg), optionally only if recent enough.
* :class:`TrailingWindow`: mean and count of events of the same key known in ``[t - window, t)``, as the difference of
  per-key cumulative sums found by two as-of joins, so a window costs the same whatever its length. Sums of
  integer-valued columns (minutes, 0/1 flags) are exact, so a month built alone equals the same month in a full build
  bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class AsOfLookup:
    """Columns of the latest row of another frame, with the same key, known at each row's prediction time.

    Attributes:
        name: what is looked up (for people and the feature-set version).
        by: key columns, same names on both sides.
        known_at: right-hand column: when the row became known.
        columns: right-hand column -> output column.
        sql_path: query giving the right-hand rows (it gets the feature SQL's bound parameters); ``None`` means the
            feature rows themselves (e.g. a plane's previous leg).
        max_age: a row known longer ago than this counts as missing.
        strict: the row must be known strictly before the prediction time (else at or before it).
        value_known_at: output column -> right-hand column saying when that value became known; the value is null
            while not yet known (e.g. the previous leg's delay before it has left).
        age_hours: optional output column: hours between the row becoming known and the prediction time.
    """

    name: str
    by: tuple[str, ...]
    known_at: str
    columns: dict[str, str]
    sql_path: Path | None = None
    max_age: timedelta | None = None
    strict: bool = True
    value_known_at: dict[str, str] = field(default_factory=dict)
    age_hours: str | None = None

    @property
    def sql(self) -> str | None:
        return self.sql_path.read_text() if self.sql_path else None

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*self.columns.values(), *((self.age_hours,) if self.age_hours else ()))


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

    @property
    def outputs(self) -> tuple[str, str]:
        return (self.mean_name, self.count_name)

    @property
    def source(self) -> tuple[tuple[str, ...], str, str]:
        """What the window aggregates, whatever its length: windows of one source share their cumulative sums."""
        return (self.by, self.known_at, self.value)


def lookup_candidates(right: pl.DataFrame, lookup: AsOfLookup) -> pl.DataFrame:
    """The right-hand rows of ``lookup`` ready for as-of joins: keyed, deduplicated, sorted by when they were known.
    Computed once per build (or once per online store load), whatever the number of targets."""
    by = list(lookup.by)
    carried = list(dict.fromkeys([*lookup.columns, *lookup.value_known_at.values()]))
    return (
        right.select(*by, pl.col(lookup.known_at).alias("_known"), *carried)
        .filter(pl.all_horizontal(pl.col(c).is_not_null() for c in [*by, "_known"]))
        # rows sharing a key and a time (the data repeats a few) are merged deterministically
        .group_by([*by, "_known"])
        .agg(pl.col(c).max() for c in carried)
        .sort("_known")
    )


def hours_from_micros(micros: int) -> float:
    """Hours in a span of ``micros`` microseconds, to the last bit as the as-of join computes a lookup's age
    (:func:`add_prepared_lookup`): polars takes a duration's seconds as microseconds times 1e-6 and divides by a
    literal as a product with its reciprocal. An exact division differed in the last digit for ~0.6% of the spans
    with seconds, so a request with seconds got another value alone than in a batch; the tests hold the two equal."""
    return (micros * 1e-6) * (1 / 3600.0)


def add_lookup(targets: pl.DataFrame, right: pl.DataFrame, lookup: AsOfLookup, time_column: str) -> pl.DataFrame:
    """Add ``lookup``'s output columns to ``targets`` (sorted by ``time_column``), keeping its order."""
    return add_prepared_lookup(targets, lookup_candidates(right, lookup), lookup, time_column)


def add_prepared_lookup(
    targets: pl.DataFrame, candidates: pl.DataFrame, lookup: AsOfLookup, time_column: str
) -> pl.DataFrame:
    """``add_lookup`` with the right-hand side already prepared by :func:`lookup_candidates`."""
    by = list(lookup.by)
    joined = targets.select(*by, pl.col(time_column).alias("_t")).join_asof(
        candidates,
        left_on="_t",
        right_on="_known",
        by=by,
        strategy="backward",
        allow_exact_matches=not lookup.strict,
        check_sortedness=False,
    )
    found = pl.col("_known").is_not_null()
    if lookup.max_age is not None:
        found = found & (pl.col("_t") - pl.col("_known") <= lookup.max_age)
    known_by_t = {
        output: (pl.col(column) < pl.col("_t")) if lookup.strict else (pl.col(column) <= pl.col("_t"))
        for output, column in lookup.value_known_at.items()
    }
    values = [
        pl.when(found & known_by_t.get(output, pl.lit(True))).then(pl.col(column)).alias(output)
        for column, output in lookup.columns.items()
    ]
    if lookup.age_hours:
        age = (pl.col("_t") - pl.col("_known")).dt.total_seconds(fractional=True) / 3600.0
        values.append(pl.when(found).then(age).alias(lookup.age_hours))  # as hours_from_micros
    return targets.hstack(joined.select(values))


def _cumulative(events: pl.DataFrame, spec: TrailingWindow) -> pl.DataFrame:
    """Per key, cumulative sum and count of the value at each distinct known-at time, in time order."""
    by = list(spec.by)
    return (
        events.select(*by, pl.col(spec.known_at).alias("_ts"), pl.col(spec.value).alias("_v"))
        .filter(pl.col("_ts").is_not_null() & pl.col("_v").is_not_null())
        .group_by([*by, "_ts"])
        .agg(pl.col("_v").sum().alias("_sum"), pl.len().cast(pl.Int64).alias("_n"))
        .sort("_ts")
        .with_columns(pl.col("_sum").cum_sum().over(by), pl.col("_n").cum_sum().over(by))
    )


def window_cumulatives(events: pl.DataFrame, windows: tuple[TrailingWindow, ...]) -> list[pl.DataFrame]:
    """Each window's per-key cumulative sums over ``events``: computed once, then any number of targets look up.
    Windows of the same key, time and value (a 3 h and a 24 h rate by origin) share one: only the window's start
    differs."""
    shared: dict[tuple[tuple[str, ...], str, str], pl.DataFrame] = {}
    for spec in windows:
        if spec.source not in shared:
            shared[spec.source] = _cumulative(events, spec)
    return [shared[spec.source] for spec in windows]


def add_trailing_windows(
    events: pl.DataFrame, targets: pl.DataFrame, windows: tuple[TrailingWindow, ...], time_column: str
) -> pl.DataFrame:
    """Add each window's mean and count to ``targets`` (sorted by ``time_column``), aggregating ``events``."""
    return add_prepared_windows(window_cumulatives(events, windows), targets, windows, time_column)


def _known_before(
    targets: pl.DataFrame, by: list[str], cumulative: pl.DataFrame, at: pl.Expr, suffix: str
) -> pl.DataFrame:
    """Cumulative sum and count of the events known strictly before ``at``, for each row of ``targets``."""
    return (
        targets.select(*by, at.alias("_at"))
        .join_asof(
            cumulative,
            left_on="_at",
            right_on="_ts",
            by=by,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .select(pl.col("_sum").fill_null(0).alias(f"_sum{suffix}"), pl.col("_n").fill_null(0).alias(f"_n{suffix}"))
    )


def add_prepared_windows(
    cumulatives: list[pl.DataFrame], targets: pl.DataFrame, windows: tuple[TrailingWindow, ...], time_column: str
) -> pl.DataFrame:
    """``add_trailing_windows`` with the cumulative sums already computed by :func:`window_cumulatives`."""
    # per source (its windows share one cumulative): the sums up to each target's time, looked up once
    sums_now: dict[tuple[tuple[str, ...], str, str], pl.DataFrame] = {}
    for spec, cumulative in zip(windows, cumulatives, strict=True):
        by = list(spec.by)
        now = sums_now.get(spec.source)
        if now is None:
            now = sums_now[spec.source] = _known_before(targets, by, cumulative, pl.col(time_column), "_t")
        start = _known_before(
            targets, by, cumulative, pl.col(time_column) - spec.window, "_0"
        )  # same order: t - window is monotonic in t
        counts = pl.concat([now, start], how="horizontal").select(
            (pl.col("_sum_t") - pl.col("_sum_0")).alias("_sum"), (pl.col("_n_t") - pl.col("_n_0")).alias("_n")
        )
        targets = targets.hstack(
            counts.select(
                (pl.col("_sum").cast(pl.Float64) / pl.when(pl.col("_n") > 0).then(pl.col("_n"))).alias(spec.mean_name),
                pl.col("_n").cast(pl.Float64).alias(spec.count_name),
            )
        )
    return targets
