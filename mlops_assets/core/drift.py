"""Drift: reference profiles stored with each model, and a month's features and scores compared with them.

The reference profile is computed once, from the rows a model trained on, and stored next to the model in the
registry, so that drift checks never rescan training data. Per column it keeps a quantile function (500 levels), ten
reference buckets with their shares, mean, standard deviation and null share (numeric), or value shares (categorical).

Verdicts follow the field's usual rules for large samples (p-values flag everything at 30k rows a month):

* numeric: Wasserstein-1 distance between the reference (its stored quantile function) and the month's values,
  divided by the reference standard deviation ("normalized Wasserstein"); drifted above 0.1 (one tenth of a standard deviation of mass moved),
  or when the share of nulls moved by more than 0.1;
* categorical: Jensen-Shannon distance (natural log, so 0..0.83) between the value shares; drifted above 0.1;
* scores: the model's scores on the month against its scores on its training rows, normalized Wasserstein;
* the month drifts when at least ``drift_share`` (30%) of the features drift, or the scores drift.

PSI over the ten reference buckets, the mean shift (in reference standard deviations) and the variance ratio are
reported beside the verdict. The label's rate is compared when the month has labels; it is reported, not voted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import polars as pl

#: Levels of the stored quantile functions: bucket midpoints, so the mean over levels is the integral over [0, 1].
QUANTILE_LEVELS = (np.arange(500) + 0.5) / 500
#: Categorical values kept per column in a profile; rarer values share the bucket ``OTHER``.
MAX_CATEGORIES = 500
OTHER = "<other>"
NULL = "<null>"
#: Shares of zero are replaced by this in PSI and Jensen-Shannon (log of zero).
EPSILON = 1e-6
PROFILE_FORMAT = 2


@dataclass(frozen=True)
class DriftThresholds:
    numeric: float = 0.1
    categorical: float = 0.1
    scores: float = 0.1
    null_share_change: float = 0.1
    drift_share: float = 0.3
    #: a month with fewer rows is compared and reported, but not judged drifted: a handful of rows sits far from
    #: any reference (a 1-row month at the median moved 0.8 of a standard deviation), as the live AUC has its floor
    min_rows: int = 200


@dataclass(frozen=True)
class ColumnDrift:
    """One column's comparison. ``statistic`` is normalized Wasserstein (numeric, scores) or Jensen-Shannon distance
    (categorical, label)."""

    column: str
    kind: str
    method: str
    statistic: float
    threshold: float
    drifted: bool
    psi: float | None = None
    reference_mean: float | None = None
    current_mean: float | None = None
    mean_shift_in_std: float | None = None
    variance_ratio: float | None = None
    reference_null_share: float = 0.0
    current_null_share: float = 0.0
    rows: int = 0


@dataclass(frozen=True)
class DriftVerdict:
    features: list[ColumnDrift]
    scores: ColumnDrift | None
    label: ColumnDrift | None
    thresholds: DriftThresholds
    drifted_features: list[str] = field(default_factory=list)
    month_rows: int | None = None  # the month's rows (None: not said)

    @property
    def too_few_rows(self) -> bool:
        return self.month_rows is not None and self.month_rows < self.thresholds.min_rows

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / max(len(self.features), 1)

    @property
    def scores_drifted(self) -> bool:
        return bool(self.scores and self.scores.drifted)

    @property
    def drifted(self) -> bool:
        if self.too_few_rows:
            return False
        return self.drift_share >= self.thresholds.drift_share or self.scores_drifted

    @property
    def reason(self) -> str:
        if self.too_few_rows:
            return (
                f"{self.month_rows} rows, too few to judge drift (at least {self.thresholds.min_rows}): "
                f"{len(self.drifted_features)}/{len(self.features)} features differ, not counted"
            )
        parts = []
        if self.drift_share >= self.thresholds.drift_share:
            parts.append(
                f"{len(self.drifted_features)}/{len(self.features)} features drifted (>= {self.thresholds.drift_share:.0%})"
            )
        if self.scores_drifted:
            assert self.scores is not None
            if self.scores.method == "null_share":  # no finite score on one side: their share is what moved
                parts.append(
                    f"scores drifted (finite scores {1 - self.scores.reference_null_share:.0%} of rows in the "
                    f"reference, {1 - self.scores.current_null_share:.0%} now)"
                )
            else:
                parts.append(f"scores drifted (normalized Wasserstein {self.scores.statistic:.3f})")
        if not parts:
            parts.append(f"{len(self.drifted_features)}/{len(self.features)} features drifted, scores stable: no drift")
        return "; ".join(parts)

    def top(self, n: int = 5) -> list[ColumnDrift]:
        """The most drifted features, by statistic relative to its threshold."""
        return sorted(self.features, key=lambda c: c.statistic / c.threshold, reverse=True)[:n]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per compared column (features, then scores and label)."""
        columns = [*self.features, *([self.scores] if self.scores else []), *([self.label] if self.label else [])]
        return [asdict(c) for c in columns]


# --- statistics ----------------------------------------------------------------------------------------------------


def quantile_function(values: np.ndarray, levels: np.ndarray = QUANTILE_LEVELS) -> np.ndarray:
    """The empirical quantile function at ``levels`` (inverse CDF, no interpolation: exact for step distributions)."""
    return np.quantile(np.asarray(values, dtype=float), levels, method="inverted_cdf")


def wasserstein_from_quantiles(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance = integral over u of |F_ref^-1(u) - F_cur^-1(u)|, from quantiles at midpoint levels."""
    return float(np.mean(np.abs(np.asarray(reference) - np.asarray(current))))


@dataclass(frozen=True)
class Sample:
    """A sample as its distinct values (sorted) and their counts: one sort serves every statistic of a column."""

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Sample:
        distinct, counts = np.unique(np.asarray(values, dtype=float), return_counts=True)
        return cls(distinct, counts)

    @property
    def size(self) -> int:
        return int(self.counts.sum())

    # Weighted averages, not ``np.dot``: numpy hands a dot of over 10,000 values to OpenBLAS's thread pool, whose
    # threads then spin for ~0.1 s of CPU on a core that another step is using (a cold monthly refresh: ~0.2 s).
    def mean(self) -> float:
        return float(np.average(self.values, weights=self.counts))

    def std(self) -> float:
        return float(np.sqrt(np.average((self.values - self.mean()) ** 2, weights=self.counts)))

    def _at_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Values at 0-based ranks of the sorted sample."""
        return self.values[np.searchsorted(np.cumsum(self.counts), ranks, side="right")]

    def quantiles(self, levels: np.ndarray) -> np.ndarray:
        """``np.quantile(sample, levels, method="inverted_cdf")``: the smallest value whose CDF reaches the level."""
        ranks = np.maximum(np.ceil(np.asarray(levels) * self.size).astype(np.int64) - 1, 0)
        return self._at_ranks(ranks)

    def linear_quantiles(self, levels: np.ndarray) -> np.ndarray:
        """``np.quantile(sample, levels)`` (linear interpolation between ranks)."""
        position = np.asarray(levels) * (self.size - 1)
        low, high = np.floor(position).astype(np.int64), np.ceil(position).astype(np.int64)
        below, above = self._at_ranks(low), self._at_ranks(high)
        return below + (position - low) * (above - below)

    def bucket_shares(self, inner_edges: Sequence[float]) -> np.ndarray:
        index = np.searchsorted(np.asarray(inner_edges, dtype=float), self.values, side="right")
        return np.bincount(index, weights=self.counts, minlength=len(inner_edges) + 1) / self.size


def wasserstein_atoms_to_sample(atoms: np.ndarray, sample: np.ndarray | Sample) -> float:
    """Exact Wasserstein-1 between equal-weight atoms (a stored quantile function) and a whole sample: the integral
    of |F_ref(x) - F_cur(x)| over the merged support. Only the reference side is summarised, so a month's own
    rounding to quantile levels adds no error (it did for few-valued columns such as engine counts)."""
    atoms = np.sort(np.asarray(atoms, dtype=float))
    current = sample if isinstance(sample, Sample) else Sample.of(sample)
    points = np.concatenate([atoms, current.values])
    order = np.argsort(points, kind="stable")  # two sorted runs: a linear merge
    support = points[order]
    from_reference = order < len(atoms)
    # each point raises its own side's CDF by its mass; between points both CDFs are flat
    steps_reference = np.where(from_reference, 1.0 / len(atoms), 0.0)
    steps_current = np.where(from_reference, 0.0, current.counts[np.maximum(order - len(atoms), 0)] / current.size)
    gap = np.abs(np.cumsum(steps_reference) - np.cumsum(steps_current))[:-1]
    return float(np.sum(gap * np.diff(support)))


def normalized_wasserstein(reference: np.ndarray, current: np.ndarray | Sample, reference_std: float) -> float:
    """Wasserstein-1 between a stored reference quantile function and a current sample, in units of the reference
    standard deviation (floored, so a constant column stays finite)."""
    return wasserstein_atoms_to_sample(reference, current) / max(reference_std, 1e-3)


def _shares(counts: Mapping[str, float], keys: Sequence[str]) -> np.ndarray:
    values = np.array([float(counts.get(k, 0.0)) for k in keys])
    total = values.sum()
    values = values / total if total > 0 else values
    return np.where(values > 0, values, EPSILON)


def jensen_shannon(reference: Mapping[str, float], current: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (square root of the divergence, natural log) between two share tables over the union
    of their values."""
    keys = sorted(set(reference) | set(current))
    p, q = _shares(reference, keys), _shares(current, keys)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    return float(np.sqrt(max(divergence, 0.0)))


def population_stability_index(reference_shares: Sequence[float], current_shares: Sequence[float]) -> float:
    """PSI = sum((cur - ref) * ln(cur / ref)) over the same buckets (empty buckets floored at a tiny share)."""
    ref = np.maximum(np.asarray(reference_shares, dtype=float), EPSILON)
    cur = np.maximum(np.asarray(current_shares, dtype=float), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def bucket_shares(values: np.ndarray, inner_edges: Sequence[float]) -> np.ndarray:
    """Shares of ``values`` in the buckets (-inf, e1), [e1, e2), ..., [ek, inf)."""
    index = np.searchsorted(np.asarray(inner_edges, dtype=float), values, side="right")
    counts = np.bincount(index, minlength=len(inner_edges) + 1)
    return counts / max(counts.sum(), 1)


# --- profiles ------------------------------------------------------------------------------------------------------


def _numeric_values(frame: pl.DataFrame, column: str) -> np.ndarray:
    """The column's finite values (nulls, NaN and infinities are missing values, counted in the null share)."""
    values = frame[column].cast(pl.Float64).drop_nulls().to_numpy()
    return values[np.isfinite(values)]


def numeric_profile(values: np.ndarray, rows: int) -> dict[str, Any]:
    if len(values) == 0:
        return {"null_share": 1.0}
    sample = Sample.of(values)  # one sort for every number below
    inner_edges = np.unique(sample.linear_quantiles(np.linspace(0.1, 0.9, 9)))
    return {
        "null_share": 1 - len(values) / max(rows, 1),
        "mean": sample.mean(),
        "std": sample.std(),
        "quantiles": sample.quantiles(QUANTILE_LEVELS).tolist(),
        "inner_edges": inner_edges.tolist(),
        "shares": sample.bucket_shares(inner_edges).tolist(),
    }


def categorical_shares(series: pl.Series, keep: Sequence[str] | None = None) -> dict[str, float]:
    """Value shares (nulls as ``<null>``, never pooled: their share is reported as such); with ``keep``, values
    outside it are pooled as ``<other>``."""
    counts = series.cast(pl.String).fill_null(NULL).value_counts(name="n").sort("n", descending=True)
    values, n = counts[series.name].to_list(), counts["n"].to_list()
    total = max(sum(n), 1)
    allowed = {*(keep if keep is not None else values[:MAX_CATEGORIES]), NULL}
    shares: dict[str, float] = {}
    for value, count in zip(values, n, strict=True):
        key = value if value in allowed else OTHER
        shares[key] = shares.get(key, 0.0) + count / total
    return shares


def _score_profile(scores: np.ndarray) -> dict[str, Any]:
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        return {"null_share": 1.0}  # no scores to describe (a features-only profile): nothing to compare later
    return {
        **numeric_profile(finite, len(scores)),
        "share_above_0_99": float(np.mean(finite > 0.99)),
        "share_below_0_01": float(np.mean(finite < 0.01)),
    }


def reference_profile(
    frame: pl.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    scores: np.ndarray,
    label: str | None = None,
) -> dict[str, Any]:
    """A compact description of the rows a model trained on and of its scores on them, stored with the model."""
    profile: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "rows": frame.height,
        "numeric": {c: numeric_profile(_numeric_values(frame, c), frame.height) for c in numeric},
        "categorical": {c: categorical_shares(frame[c]) for c in categorical},
        "scores": _score_profile(np.asarray(scores, dtype=float)),
    }
    if label is not None and label in frame.columns:
        profile["label_rate"] = float(frame[label].cast(pl.Float64).mean())
    return profile


# --- comparison ----------------------------------------------------------------------------------------------------


def compare_numeric(
    column: str,
    kind: str,
    reference: Mapping[str, Any],
    values: np.ndarray,
    rows: int,
    threshold: float,
    null_threshold: float,
) -> ColumnDrift:
    current_null = 1 - len(values) / max(rows, 1)
    reference_null = float(reference.get("null_share", 0.0))
    if "quantiles" not in reference or len(values) == 0:
        # all-null on one side: only the null share can be compared
        moved = abs(current_null - reference_null)
        return ColumnDrift(
            column,
            kind,
            "null_share",
            moved,
            null_threshold,
            moved > null_threshold,
            reference_null_share=reference_null,
            current_null_share=current_null,
            rows=rows,
        )
    std = float(reference["std"])
    sample = Sample.of(values)
    statistic = normalized_wasserstein(np.asarray(reference["quantiles"]), sample, std)
    current_mean, current_std = sample.mean(), sample.std()
    return ColumnDrift(
        column=column,
        kind=kind,
        method="wasserstein_normed",
        statistic=statistic,
        threshold=threshold,
        drifted=statistic > threshold or abs(current_null - reference_null) > null_threshold,
        psi=population_stability_index(reference["shares"], sample.bucket_shares(reference["inner_edges"])),
        reference_mean=float(reference["mean"]),
        current_mean=current_mean,
        mean_shift_in_std=(current_mean - float(reference["mean"])) / max(std, 1e-3),
        variance_ratio=variance_ratio(current_std, std),
        reference_null_share=reference_null,
        current_null_share=current_null,
        rows=rows,
    )


def variance_ratio(current_std: float, reference_std: float) -> float | None:
    """Current variance over the reference's: 1.0 for a column constant in both, None (undefined) when only the
    reference is constant."""
    if reference_std**2 < 1e-12:
        return 1.0 if current_std**2 < 1e-12 else None
    return current_std**2 / reference_std**2


def compare_categorical(
    column: str, reference: Mapping[str, float], series: pl.Series, threshold: float
) -> ColumnDrift:
    keep = [k for k in reference if k != OTHER]
    current = categorical_shares(series, keep=keep)
    statistic = jensen_shannon(reference, current)
    keys = sorted(set(reference) | set(current))
    return ColumnDrift(
        column=column,
        kind="categorical",
        method="jensen_shannon",
        statistic=statistic,
        threshold=threshold,
        drifted=statistic > threshold,
        psi=population_stability_index(_shares(reference, keys), _shares(current, keys)),
        reference_null_share=float(reference.get(NULL, 0.0)),
        current_null_share=float(current.get(NULL, 0.0)),
        rows=series.len(),
    )


def compare(
    profile: Mapping[str, Any],
    frame: pl.DataFrame,
    scores: np.ndarray | None = None,
    label: str | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftVerdict:
    """Compare a month (its feature rows, and the model's scores on them) with a model's reference profile."""
    thresholds = thresholds or DriftThresholds()
    if profile.get("format") != PROFILE_FORMAT:
        raise ValueError(
            "this model's reference profile predates drift detection (no quantiles): retrain it "
            "(`dagster job execute -m mlops_assets.definitions -j training_pipeline`) to store a current profile"
        )
    features = [
        compare_numeric(
            c, "numeric", ref, _numeric_values(frame, c), frame.height, thresholds.numeric, thresholds.null_share_change
        )
        for c, ref in profile["numeric"].items()
    ]
    features += [
        compare_categorical(c, ref, frame[c], thresholds.categorical) for c, ref in profile["categorical"].items()
    ]
    score_drift = None
    # a profile that describes no scores (stored without them) has nothing to compare a month's scores with
    described = "quantiles" in profile.get("scores", {})
    if scores is not None and len(scores) and described:
        finite = np.asarray(scores, dtype=float)
        finite = finite[np.isfinite(finite)]  # as for a feature: a NaN score is missing, counted in the null share
        score_drift = compare_numeric(
            "score",
            "score",
            profile["scores"],
            finite,
            len(scores),
            thresholds.scores,
            thresholds.null_share_change,
        )
    label_drift = None
    if label and label in frame.columns and "label_rate" in profile and frame[label].null_count() < frame.height:
        rate = float(frame[label].cast(pl.Float64).mean())
        reference = {"1": profile["label_rate"], "0": 1 - profile["label_rate"]}
        statistic = jensen_shannon(reference, {"1": rate, "0": 1 - rate})
        label_drift = ColumnDrift(
            label,
            "label",
            "jensen_shannon",
            statistic,
            thresholds.categorical,
            statistic > thresholds.categorical,
            reference_mean=profile["label_rate"],
            current_mean=rate,
            rows=frame.height,
        )
    return DriftVerdict(
        features=features,
        scores=score_drift,
        label=label_drift,
        thresholds=thresholds,
        drifted_features=[c.column for c in features if c.drifted],
        month_rows=frame.height,
    )


# --- report plots --------------------------------------------------------------------------------------------------


def histogram_pairs(profile: Mapping[str, Any], frame: pl.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Reference and current shares per bucket (numeric: the profile's ten buckets; categorical: the 12 most common
    values), for the report's histograms."""
    pairs = []
    for column in columns:
        if column in profile["numeric"] and "inner_edges" in profile["numeric"][column]:
            reference = profile["numeric"][column]
            edges = reference["inner_edges"]
            labels = [f"<{edges[0]:.4g}"] + [f"{a:.4g}-{b:.4g}" for a, b in pairwise(edges)] + [f">={edges[-1]:.4g}"]
            current = bucket_shares(_numeric_values(frame, column), edges)
            pairs.append(
                {
                    "column": column,
                    "labels": labels,
                    "reference": list(reference["shares"]),
                    "current": current.tolist(),
                }
            )
        elif column in profile["categorical"]:
            reference = profile["categorical"][column]
            current = categorical_shares(frame[column], keep=[k for k in reference if k != OTHER])
            keys = sorted(set(reference) | set(current), key=lambda k: -max(reference.get(k, 0), current.get(k, 0)))[
                :12
            ]
            pairs.append(
                {
                    "column": column,
                    "labels": keys,
                    "reference": [reference.get(k, 0.0) for k in keys],
                    "current": [current.get(k, 0.0) for k in keys],
                }
            )
    return pairs


def _bar_corners(centers: np.ndarray, heights: Sequence[float], width: float) -> np.ndarray:
    """The four corners of each bar, for one polygon collection per series: ``Axes.bar`` makes an artist per bar and
    updates the axes' limits for each (most of a report's drawing time)."""
    left, right = centers - width / 2, centers + width / 2
    base, tops = np.zeros(len(centers)), np.asarray(heights, dtype=float)
    return np.stack([np.c_[left, base], np.c_[left, tops], np.c_[right, tops], np.c_[right, base]], axis=1)


_SERIES = (("reference (training)", "tab:blue", -0.2), ("current month", "tab:orange", 0.2))


class _HistogramGrid:
    """A figure of ``rows`` x ``columns`` panels that draws one report's histograms at a time: its panels, bar
    collections, legend and ticks are made once and given each report's data (making them was ~15% of a report's
    drawing time: ~150 -> ~130 ms)."""

    def __init__(self, rows: int, columns: int) -> None:
        from matplotlib.collections import PolyCollection
        from matplotlib.ticker import MaxNLocator

        from mlops_assets.core.evaluation import subplots

        height = 1.1 + 2.3 * rows  # inches: the title and legend band, then each row of panels with its tick labels
        self.figure, axes = subplots(
            rows,
            columns,
            figsize=(4.2 * columns, height),
            squeeze=False,
            gridspec_kw={
                "left": 0.08,
                "right": 0.99,
                "top": 1 - 1.0 / height,
                "bottom": 0.65 / height,
                "hspace": 0.75,
                "wspace": 0.22,
            },
        )
        self.axes = list(axes.flat)
        self.bars = []
        for axis in self.axes:
            series = [
                PolyCollection([], facecolors=color, edgecolors="none", label=label) for label, color, _ in _SERIES
            ]
            for collection in series:
                axis.add_collection(collection, autolim=False)
            self.bars.append(series)
            axis.tick_params(axis="y", labelsize=7)
            axis.tick_params(axis="x", labelsize=6, labelrotation=30)
            axis.yaxis.set_major_locator(MaxNLocator(4))
            # the panels have no axis labels: fixed label spots spare matplotlib measuring every tick label at each
            # draw to place them (~10% of a report's drawing time)
            axis.xaxis.set_label_coords(0.5, -0.2)
            axis.yaxis.set_label_coords(-0.1, 0.5)
        self.figure.supylabel("share of the rows", x=0.005, fontsize=8)
        legend_top = 1 - 0.45 / height  # a line below the title, which may span the width
        self.figure.legend(
            self.bars[0],
            [label for label, _, _ in _SERIES],
            loc="upper right",
            bbox_to_anchor=(0.99, legend_top),
            ncols=2,
            fontsize=8,
            frameon=False,
        )
        self.title = self.figure.suptitle("", x=0.08, ha="left", y=1 - 0.15 / height, va="top")

    def draw(self, pairs: Sequence[Mapping[str, Any]], title: str) -> bytes:
        from mlops_assets.core.evaluation import figure_png

        self.title.set_text(title)
        for axis, series, pair in zip(self.axes, self.bars, [*pairs, *[None] * len(self.axes)], strict=False):
            if pair is None:  # a panel this report does not fill
                for collection in series:
                    collection.set_verts([])
                axis.set_title("")
                axis.set_axis_off()
                continue
            axis.set_axis_on()
            positions = np.arange(len(pair["labels"]))
            for collection, shares, (_, _, offset) in zip(
                series, (pair["reference"], pair["current"]), _SERIES, strict=True
            ):
                collection.set_verts(_bar_corners(positions + offset, shares, 0.4))
            top = max(max(pair["reference"], default=0.0), max(pair["current"], default=0.0)) or 1.0
            axis.set(xlim=(-0.6, len(positions) - 0.4), ylim=(0.0, 1.05 * top))
            axis.set_xticks(positions, pair["labels"], ha="right")
            axis.set_title(pair["column"], fontsize=9, y=1.0)  # a set y skips matplotlib's search for a free spot
        return figure_png(self.figure, tight=False)


#: One grid per shape in this process, drawn under a lock (a run's two drift reports may draw on two threads).
_GRIDS: dict[tuple[int, int], _HistogramGrid] = {}
_GRIDS_LOCK = threading.Lock()


def _forget_grids_in_child() -> None:
    """A forked child starts without its parent's figures, whose lock a parent's thread may have held."""
    global _GRIDS_LOCK
    _GRIDS_LOCK = threading.Lock()
    _GRIDS.clear()


os.register_at_fork(after_in_child=_forget_grids_in_child)


def drift_histograms_plot(pairs: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Reference-vs-current bar charts, one panel per column under one legend: two panels a row (a report's top four
    drifted columns make a 2x2 grid), three when there are more than four.

    Laid out by fixed margins rather than ``tight_layout`` (which measures every label of every panel: most of the
    drawing time of a dozen panels) and a grid rather than one tall column (fewer pixels to compress, one screen).
    Each grid shape's figure is made once per process and drawn again for each report (a test checks that nothing
    of one report shows in the next).
    """
    columns = min(max(len(pairs), 1), 2 if len(pairs) <= 4 else 3)
    rows = max(-(-len(pairs) // columns), 1)
    with _GRIDS_LOCK:
        grid = _GRIDS.get((rows, columns))
        if grid is None:
            grid = _GRIDS[rows, columns] = _HistogramGrid(rows, columns)
        return grid.draw(pairs, title)
