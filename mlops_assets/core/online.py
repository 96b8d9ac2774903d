"""The online store: what serving needs to compute a feature vector at request time, exported from the warehouse.

Training and serving share one feature definition. The export holds the rows the feature SQL gives for the newest
months (with the time each fact became known), the right-hand rows of the as-of lookups (e.g. hourly weather) and the
spec's reference tables. At request time the spec's ``online.entities`` turns requests into the entity rows the SQL
would give, and the same point-in-time engine (``features/pit.py``) adds the lookups and trailing windows as of each
request's prediction time. So a flight scored online gets exactly the vector it has in ``features.<name>``, which the
tests check.

The export knows facts up to its horizon, the manifest's ``facts_known_through``. A request whose prediction time lies
past it gets its lookups and windows as of the horizon (what the export knows), never as of its own time: windows that
ran past the newest fact would count hours without data as hours without delays, i.e. made-up features. The features
known in advance (schedule, route, plane, calendar) stay the request's own. How far past the horizon a request may be
is the service's decision (``ServeConfig.max_feature_age_hours``).

Layout below ``$MLOPS_DATA_DIR/online_store``: ``versions/<id>/`` (Parquet frames + ``manifest.json``), and
``CURRENT`` naming the version to serve. A version folder is written under a temporary name and renamed; ``CURRENT`` is
replaced atomically, so a reader sees the old export or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from mlops_assets.core.features import context_start_for, feature_set_version, used_params
from mlops_assets.core.features.pit import (
    AsOfLookup,
    TrailingWindow,
    add_prepared_lookup,
    add_prepared_windows,
    hours_from_micros,
    lookup_candidates,
    window_cumulatives,
)
from mlops_assets.core.landing import month_key, shift_month, write_atomic
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.core.store import query_frame

CURRENT = "CURRENT"
_ORDER = "_request_order"
#: The time lookups and windows are evaluated at: the prediction time, or the export's horizon when that is earlier.
_AS_OF = "_features_as_of"
#: Up to this many requests, features are looked up per key with binary search (microseconds) instead of polars
#: as-of joins over the whole export (milliseconds); both give the same values, which the tests check.
SMALL_BATCH = 32
#: Up to this many rows, trailing windows too are found by per-key binary search (1000 rows: 9 ms -> 1 ms); beyond,
#: the as-of joins of the offline build win.
KEYED_WINDOW_ROWS = 4096


def _micros(series: pl.Series) -> np.ndarray:
    return series.dt.cast_time_unit("us").cast(pl.Int64).to_numpy()


def _by_key(frame: pl.DataFrame, by: tuple[str, ...]) -> tuple[pl.DataFrame, list[tuple[tuple[Any, ...], int, int]]]:
    """``frame`` with each key's rows together, in their order within the key, and each key's ``(key, start, stop)``
    in it: what ``partition_by(by, as_dict=True, maintain_order=True)`` gives, as slices of one frame's columns. A
    frame per key cost ~0.2 ms each: the delay model's plane lookup (3,450 tails) took 0.6 s of every store load."""
    ordered = frame.sort(list(by), maintain_order=True, nulls_last=True)
    bounds = (
        ordered.with_row_index("_start")
        .group_by(list(by), maintain_order=True)
        .agg(pl.col("_start").first(), pl.len().alias("_rows"))
    )
    return ordered, [(tuple(key), start, start + rows) for *key, start, rows in bounds.iter_rows()]


def _key(row: dict[str, Any], by: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row[c] for c in by)


class _KeyedLookup:
    """An as-of lookup's candidates split by key: per key the known-at times (sorted) and the carried values."""

    def __init__(self, candidates: pl.DataFrame, lookup: AsOfLookup) -> None:
        self.lookup = lookup
        self.dtypes = {
            c: candidates.schema[c] for c in dict.fromkeys([*lookup.columns, *lookup.value_known_at.values()])
        }
        ordered, slices = _by_key(candidates, lookup.by)
        known = _micros(ordered["_known"])
        # a value's known-at time as microseconds, None where it is unknown (numpy would give NaN, which compares
        # as known: a frame per key had given NaN only in keys holding a null)
        columns = {
            c: (
                ordered[c].dt.cast_time_unit("us").cast(pl.Int64).to_list()
                if c in lookup.value_known_at.values()
                else ordered[c].to_list()
            )
            for c in self.dtypes
        }
        self.groups: dict[tuple[Any, ...], tuple[np.ndarray, dict[str, list[Any]]]] = {
            key: (known[start:stop], {c: values[start:stop] for c, values in columns.items()})
            for key, start, stop in slices
        }

    def columns(self, rows: list[dict[str, Any]], times: np.ndarray) -> dict[str, pl.Series]:
        lookup = self.lookup
        out: dict[str, list[Any]] = {output: [] for output in lookup.outputs}
        max_age = int(lookup.max_age.total_seconds() * 1_000_000) if lookup.max_age is not None else None
        for row, t in zip(rows, times, strict=True):
            group = self.groups.get(_key(row, lookup.by))
            index = -1
            # as the as-of join: a null key, or no prediction time (NaN: a local time that does not exist), matches
            # nothing, even where no max_age would turn the newest row away
            if group is not None and not np.isnan(t) and not any(v is None for v in _key(row, lookup.by)):
                index = int(np.searchsorted(group[0], t, side="left" if lookup.strict else "right")) - 1
            known = int(group[0][index]) if index >= 0 and group is not None else None
            found = known is not None and (max_age is None or t - known <= max_age)
            for column, output in lookup.columns.items():
                value = group[1][column][index] if found and group is not None else None
                known_column = lookup.value_known_at.get(output)
                if value is not None and known_column is not None and group is not None:
                    value_known = group[1][known_column][index]
                    if value_known is None or (value_known >= t if lookup.strict else value_known > t):
                        value = None
                out[output].append(value)
            if lookup.age_hours:
                out[lookup.age_hours].append(hours_from_micros(t - known) if found and known is not None else None)
        series = {
            output: pl.Series(output, out[output], dtype=self.dtypes[column])
            for column, output in lookup.columns.items()
        }
        if lookup.age_hours:
            series[lookup.age_hours] = pl.Series(lookup.age_hours, out[lookup.age_hours], dtype=pl.Float64)
        return series


class _KeyedWindow:
    """A trailing window's cumulative sums split by key: per key the times (sorted), running sums and counts."""

    def __init__(self, cumulative: pl.DataFrame, window: TrailingWindow) -> None:
        self.window = window
        self.length = int(window.window.total_seconds() * 1_000_000)
        ordered, slices = _by_key(cumulative, window.by)
        times, sums, counts = (
            _micros(ordered["_ts"]),
            ordered["_sum"].cast(pl.Float64).to_numpy(),
            ordered["_n"].to_numpy(),
        )
        self.groups = {key: (times[start:stop], sums[start:stop], counts[start:stop]) for key, start, stop in slices}

    def columns(self, rows: pl.DataFrame, times: np.ndarray) -> dict[str, pl.Series]:
        """Mean and count for every row, one binary search per key and batch (vectorised over the key's rows)."""
        means = np.full(len(times), np.nan)
        counts = np.zeros(len(times))
        positions: dict[tuple[Any, ...], list[int]] = {}
        for i, key in enumerate(zip(*(rows[c].to_list() for c in self.window.by), strict=True)):
            if not any(v is None for v in key):  # as a join: a null key matches nothing
                positions.setdefault(key, []).append(i)
        for key, where in positions.items():
            group = self.groups.get(key)
            if group is None:
                continue
            ts, sums, ns = group
            at = np.asarray(where)
            now = np.searchsorted(ts, times[at], "left") - 1
            start = np.searchsorted(ts, times[at] - self.length, "left") - 1
            total = np.where(now >= 0, sums[np.maximum(now, 0)], 0.0) - np.where(
                start >= 0, sums[np.maximum(start, 0)], 0.0
            )
            n = np.where(now >= 0, ns[np.maximum(now, 0)], 0) - np.where(start >= 0, ns[np.maximum(start, 0)], 0)
            counts[at] = n
            with np.errstate(invalid="ignore", divide="ignore"):
                means[at] = np.where(n > 0, total / n, np.nan)
        return {
            self.window.mean_name: pl.Series(self.window.mean_name, means, dtype=pl.Float64).fill_nan(None),
            self.window.count_name: pl.Series(self.window.count_name, counts, dtype=pl.Float64),
        }


@dataclass
class OnlineExport:
    """The frames of one export (before preparation)."""

    events: pl.DataFrame
    lookups: list[pl.DataFrame]
    reference: dict[str, pl.DataFrame]
    manifest: dict[str, Any]
    #: Columns that order the events uniquely (time, key): written in that order (else sorted by every column)
    events_order: tuple[str, ...] = ()


def build_export(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, newest_month: str) -> OnlineExport:
    """What serving needs to compute features for flights after (and during) ``newest_month``: its rows and the
    look-back before it, the lookup rows and the reference tables."""
    if spec.online is None:
        raise ValueError(f"feature table {spec.name} declares no online spec: it cannot be served")
    start = context_start_for(spec, newest_month)
    params = {"context_first": month_key(start.year, start.month), "target_last": newest_month, "context_start": start}
    events = query_frame(conn, spec.sql, used_params(spec.sql, params))
    lookups = [
        events if lookup.sql is None else query_frame(conn, lookup.sql, used_params(lookup.sql, params))
        for lookup in spec.lookups
    ]
    reference = {name: query_frame(conn, sql) for name, sql in spec.online.reference_sql.items()}
    # Facts are complete up to the newest prediction time exported, not up to the newest fact: an outcome known hours
    # after the month's last departure does not mean that nothing of the next month (not exported) happened meanwhile.
    as_of = events[spec.time_column].max() if events.height else None
    manifest = {
        "feature_table": spec.name,
        "feature_set_version": feature_set_version(spec),
        "newest_month": newest_month,
        "context_start": start.isoformat(),
        "serves_through": shift_month(newest_month, 1),
        "facts_known_through": as_of.isoformat() if isinstance(as_of, datetime) else None,
        "rows": {
            "events": events.height,
            **{f"lookup_{i}": f.height for i, f in enumerate(lookups)},
            **{f"reference_{n}": f.height for n, f in reference.items()},
        },
    }
    return OnlineExport(events, lookups, reference, manifest, (spec.time_column, *spec.key))


def write_export(export: OnlineExport, root: Path) -> str:
    """Write an export as a new version folder and point ``CURRENT`` at it; return the version id (content hash).

    Each frame is written in a canonical row order (DuckDB returns rows in whatever order its threads finish), so the
    same facts make the same version: a rerun finds it there and adds nothing."""
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
    try:
        # the entity rows by time and key (unique, and cheaper than sorting by every column)
        order = list(export.events_order)
        events = export.events.sort(order, nulls_last=True) if order else _canonical(export.events)
        events.write_parquet(staging / "events.parquet")
        for i, frame in enumerate(export.lookups):
            _canonical(frame).write_parquet(staging / f"lookup_{i}.parquet")
        for name, frame in export.reference.items():
            _canonical(frame).write_parquet(staging / f"reference_{name}.parquet")
        digest = hashlib.sha256()
        for path in sorted(staging.iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        version = f"{export.manifest['newest_month']}-{digest.hexdigest()[:12]}"
        (staging / "manifest.json").write_text(json.dumps({**export.manifest, "version": version}, indent=1))
        target = versions / version
        if target.exists():
            shutil.rmtree(staging)  # the same content is there already
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomic(root / CURRENT, version.encode())
    return version


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True, maintain_order=True) if frame.width else frame


def current_version(root: Path) -> str | None:
    path = root / CURRENT
    return path.read_text().strip() if path.exists() else None


@dataclass
class OnlineStore:
    """A loaded export, prepared for request-time lookups (lookup candidates and window sums computed once)."""

    spec: FeatureTableSpec
    version: str
    manifest: dict[str, Any]
    reference: dict[str, pl.DataFrame]
    candidates: list[pl.DataFrame] = field(repr=False)
    cumulatives: list[pl.DataFrame] = field(repr=False)
    key_types: dict[str, pl.DataType] = field(default_factory=dict)
    keyed_lookups: list[_KeyedLookup] = field(init=False, repr=False)
    keyed_windows: list[_KeyedWindow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        online = self.spec.online
        self.index = online.index(self.reference) if online is not None and online.index is not None else None
        known = self.manifest.get("facts_known_through")
        #: The newest time the export's facts reach (UTC, naive as every time here); None: it holds no facts.
        self.horizon: datetime | None = datetime.fromisoformat(known) if known else None
        self._horizon_us = int(_micros(pl.Series([self.horizon], dtype=pl.Datetime("us")))[0]) if known else None
        start = self.manifest.get("context_start")
        #: The earliest prediction time whose look-back the export holds whole (its newest month's start): before it
        #: the windows would miss the days before the export began and count them as days without delays.
        self.serves_from: datetime | None = (
            datetime.fromisoformat(start) + timedelta(days=self.spec.lookback_days) if start else None
        )
        #: Request field -> the values the export has seen (an export written before a frame was declared has no
        #: entry for its fields: nothing is flagged rather than everything).
        self.known_codes: dict[str, frozenset[str]] = {}
        for name, (frame, column) in (online.known_values if online is not None else {}).items():
            if frame in self.reference and column in self.reference[frame].columns:
                self.known_codes[name] = frozenset(self.reference[frame][column].drop_nulls().cast(pl.String))
        #: Name -> (request fields, the combinations of their values the export has seen).
        self.known_combinations: dict[str, tuple[tuple[str, ...], frozenset[tuple[str, ...]]]] = {}
        for name, (frame, fields) in (online.known_combinations if online is not None else {}).items():
            if frame in self.reference and set(fields) <= set(self.reference[frame].columns):
                seen = self.reference[frame].select(pl.col(f).cast(pl.String) for f in fields).drop_nulls()
                self.known_combinations[name] = (tuple(fields), frozenset(seen.iter_rows()))
        self.keyed_lookups = [
            _KeyedLookup(c, lookup) for c, lookup in zip(self.candidates, self.spec.lookups, strict=True)
        ]
        self.keyed_windows = [
            _KeyedWindow(c, window) for c, window in zip(self.cumulatives, self.spec.windows, strict=True)
        ]

    @classmethod
    def from_export(cls, spec: FeatureTableSpec, export: OnlineExport, version: str = "unsaved") -> OnlineStore:
        candidates = [
            lookup_candidates(frame, lookup) for frame, lookup in zip(export.lookups, spec.lookups, strict=True)
        ]
        missing = [c for c in spec.key if c not in export.events.columns]
        if missing:
            raise ValueError(f"online store {version} lacks the key column(s) {missing} of {spec.name}")
        key_types = {c: export.events.schema[c] for c in spec.key}
        return cls(
            spec,
            version,
            export.manifest,
            export.reference,
            candidates,
            window_cumulatives(export.events, spec.windows),
            key_types,
        )

    @classmethod
    def load(cls, spec: FeatureTableSpec, root: Path, version: str | None = None) -> OnlineStore:
        """The version ``CURRENT`` names (or ``version``), refusing one built by another feature-set version."""
        version = version or current_version(root)
        if version is None:
            raise FileNotFoundError(f"no online store under {root}: materialize features/online_store first")
        folder = root / "versions" / version
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["feature_set_version"] != feature_set_version(spec):
            raise ValueError(
                f"online store {version} was built by feature-set version {manifest['feature_set_version']}, the code "
                f"has {feature_set_version(spec)}: materialize features/online_store again"
            )
        export = OnlineExport(
            events=pl.read_parquet(folder / "events.parquet"),
            lookups=[pl.read_parquet(folder / f"lookup_{i}.parquet") for i in range(len(spec.lookups))],
            reference={
                name: pl.read_parquet(folder / f"reference_{name}.parquet") for name in manifest_reference(manifest)
            },
            manifest=manifest,
        )
        return cls.from_export(spec, export, version)

    def as_of(self, prediction_time: datetime) -> datetime:
        """When the features of a request at ``prediction_time`` are computed: its own time, or the horizon when the
        export's facts end before it."""
        return prediction_time if self.horizon is None or prediction_time <= self.horizon else self.horizon

    def before_its_facts(self, prediction_time: datetime) -> bool:
        """Whether ``prediction_time`` lies before :attr:`serves_from`: the export cannot give its features."""
        return self.serves_from is not None and prediction_time < self.serves_from

    def feature_age_hours(self, prediction_time: datetime) -> float:
        """How many hours ``prediction_time`` lies past the horizon (0: the export knows what the time needs)."""
        if self.horizon is None or prediction_time <= self.horizon:
            return 0.0
        return (prediction_time - self.horizon).total_seconds() / 3600.0

    def features(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Feature rows for ``requests`` (in request order): the entity columns (with each request's own prediction
        time) and every feature, with the lookups and windows as of the prediction time or the export's horizon,
        whichever is earlier (:meth:`as_of`)."""
        assert self.spec.online is not None
        if requests.height <= SMALL_BATCH:
            online = self.spec.online
            if online.entity_rows is not None and self.index is not None:
                return self._features_by_key(online.entity_rows(requests.to_dicts(), self.index))
            return self._features_by_key(online.entities(requests, self.reference))
        rows = self.spec.online.entities(requests, self.reference).with_row_index(_ORDER)
        rows = rows.with_columns(self._as_of_expr()).sort([_AS_OF, _ORDER])
        for candidates, lookup in zip(self.candidates, self.spec.lookups, strict=True):
            rows = add_prepared_lookup(rows, candidates, lookup, _AS_OF)
        if rows.height > KEYED_WINDOW_ROWS:  # large batches: the as-of joins, as the offline build does
            rows = add_prepared_windows(self.cumulatives, rows, self.spec.windows, _AS_OF)
            return rows.sort(_ORDER).drop(_ORDER, _AS_OF)
        # up to a few thousand rows, per-key binary search: an as-of join re-groups the whole export on every call
        times = _micros(rows[_AS_OF])
        for window in self.keyed_windows:
            rows = rows.hstack(list(window.columns(rows, times).values()))
        return rows.sort(_ORDER).drop(_ORDER, _AS_OF)

    def _as_of_expr(self) -> pl.Expr:
        """The prediction time capped at the horizon (null stays null: a local time that does not exist)."""
        time = pl.col(self.spec.time_column)
        if self.horizon is None:
            return time.alias(_AS_OF)
        horizon = pl.lit(self.horizon, dtype=pl.Datetime("us"))
        return pl.when(time > horizon).then(horizon).otherwise(time).cast(pl.Datetime("us")).alias(_AS_OF)

    def _features_by_key(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The same lookups and windows for a few rows, by binary search in the per-key arrays."""
        times = _micros(rows[self.spec.time_column])
        if self._horizon_us is not None:  # NaN (no prediction time) stays NaN: np.minimum propagates it
            times = np.minimum(times, self._horizon_us)
        dicts = rows.to_dicts()
        columns: dict[str, pl.Series] = {}
        for keyed in self.keyed_lookups:
            columns.update(keyed.columns(dicts, times))
        for window in self.keyed_windows:
            columns.update(window.columns(rows, times))
        return rows.hstack(list(columns.values()))


def manifest_reference(manifest: dict[str, Any]) -> list[str]:
    return [name.removeprefix("reference_") for name in manifest["rows"] if name.startswith("reference_")]
