"""The few-request path: a served request's features, encoding and scores as plain Python values, no data frames.

A single flight through :meth:`OnlineStore.features` and ``TrainedModel.predict`` builds some fifteen small polars
frames and series (entity rows, each lookup and window column, the encoder's selection), which cost far more than the
arithmetic. :class:`RowFeatures` does the same point-in-time lookups and trailing windows on per-key Python lists made
once per online store (``bisect`` where the store uses ``np.searchsorted``, the same sums and divisions), and
:class:`RowScorer` encodes a feature dict as the encoder does and scores it with LightGBM's single-row predictor
(set up once per loaded version instead of on every call). The values are the same, not close: the tests check each
against the frame path, feature by feature and score by score.

The service uses it for small batches without overrides whose prediction times all exist; everything else (large
batches, what-if overrides, a local time in a daylight-saving gap, a store without dict indexes) takes the frame
path, whose behaviour it never has to reproduce.
"""

from __future__ import annotations

import ctypes
import math
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np

from mlops_assets.core.features.pit import hours_from_micros
from mlops_assets.core.online import OnlineStore
from mlops_assets.core.training import TrainedModel

#: Up to this many requests take the row path (as ``OnlineStore.features`` switches to per-key search at this size).
MAX_ROWS = 32
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """A naive datetime as integer microseconds since the epoch (polars' ``Datetime("us")`` value, exactly)."""
    return (moment - _EPOCH) // _MICROSECOND


class _Lookup:
    """One as-of lookup of the store, per key: the known-at times and the carried values as Python lists."""

    def __init__(self, keyed: Any) -> None:
        lookup = keyed.lookup
        self.by: tuple[str, ...] = lookup.by
        self.strict: bool = lookup.strict
        self.max_age = int(lookup.max_age.total_seconds() * 1_000_000) if lookup.max_age is not None else None
        self.columns: list[tuple[str, str, str | None]] = [
            (column, output, lookup.value_known_at.get(output)) for column, output in lookup.columns.items()
        ]
        self.age_hours: str | None = lookup.age_hours
        # the store's arrays as lists: bisect on a list is several times cheaper than np.searchsorted on one value
        self.groups: dict[tuple[Any, ...], tuple[list[int], dict[str, list[Any]]]] = {
            key: (times.tolist(), values) for key, (times, values) in keyed.groups.items()
        }

    def add(self, row: dict[str, Any], t: int) -> None:
        """Set the lookup's outputs in ``row`` as of ``t`` (what ``_KeyedLookup.columns`` gives for that row)."""
        key = tuple(row[c] for c in self.by)
        group = self.groups.get(key)
        index = -1
        if group is not None and None not in key:
            index = (bisect_left if self.strict else bisect_right)(group[0], t) - 1
        known = group[0][index] if index >= 0 and group is not None else None
        found = known is not None and (self.max_age is None or t - known <= self.max_age)
        for column, output, known_column in self.columns:
            value = group[1][column][index] if found and group is not None else None
            if value is not None and known_column is not None and group is not None:
                value_known = group[1][known_column][index]
                if value_known is None or (value_known >= t if self.strict else value_known > t):
                    value = None
            row[output] = value
        if self.age_hours:
            row[self.age_hours] = hours_from_micros(t - known) if found and known is not None else None


class _Window:
    """One trailing window of the store, per key: times, running sums and counts as Python lists."""

    def __init__(self, keyed: Any) -> None:
        window = keyed.window
        self.by: tuple[str, ...] = window.by
        self.length: int = keyed.length
        self.mean_name: str = window.mean_name
        self.count_name: str = window.count_name
        self.groups: dict[tuple[Any, ...], tuple[list[int], list[float], list[int]]] = {
            key: (ts.tolist(), sums.tolist(), ns.tolist()) for key, (ts, sums, ns) in keyed.groups.items()
        }

    def add(self, row: dict[str, Any], t: int) -> None:
        """Set the window's mean (None when empty) and count in ``row`` for the events known in ``[t - length, t)``
        (what ``_KeyedWindow.columns`` gives: float64 sums and counts, a NaN mean as None)."""
        key = tuple(row[c] for c in self.by)
        group = self.groups.get(key) if None not in key else None
        mean: float | None = None
        count = 0
        if group is not None:
            ts, sums, ns = group
            now = bisect_left(ts, t) - 1
            start = bisect_left(ts, t - self.length) - 1
            total = (sums[now] if now >= 0 else 0.0) - (sums[start] if start >= 0 else 0.0)
            count = (ns[now] if now >= 0 else 0) - (ns[start] if start >= 0 else 0)
            if count > 0:
                mean = total / count
                if math.isnan(mean):
                    mean = None
        row[self.mean_name] = mean
        row[self.count_name] = float(count)


class RowFeatures:
    """The feature rows of a few requests from one online store, as dicts (entity columns + every feature)."""

    def __init__(self, store: OnlineStore) -> None:
        self.store = store
        online = store.spec.online
        self._entity_rows = online.entity_rows if online is not None else None
        self._entity_dicts = online.entity_dicts if online is not None else None
        self._time_column = store.spec.time_column
        horizon = store.horizon
        self._horizon = micros(horizon) if horizon is not None else None
        self._lookups = [_Lookup(keyed) for keyed in store.keyed_lookups]
        self._windows = [_Window(keyed) for keyed in store.keyed_windows]

    @property
    def available(self) -> bool:
        """Whether the spec turns requests into entity rows from dict indexes (else only the frame path works)."""
        return self._entity_rows is not None and self.store.index is not None

    def rows(self, fields: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Feature rows for the requests' fields, in order; None when one has no prediction time (a local time in
        a daylight-saving gap), which the frame path refuses as it always has."""
        assert self._entity_rows is not None and self.store.index is not None
        if self._entity_dicts is not None:  # the same values without a frame built and read back
            rows = self._entity_dicts(list(fields), self.store.index)
        else:
            rows = self._entity_rows(list(fields), self.store.index).to_dicts()
        for row in rows:
            moment = row[self._time_column]
            if moment is None:
                return None
            t = micros(moment)
            if self._horizon is not None and t > self._horizon:  # as of the newest facts, never past them
                t = self._horizon
            for lookup in self._lookups:
                lookup.add(row, t)
            for window in self._windows:
                window.add(row, t)
        return rows


class RowScorer:
    """One loaded model's scores for feature dicts: encoded as ``FeatureEncoder.matrix`` encodes a few rows, scored
    one row at a time by LightGBM's single-row predictor (its setup done once here, not on every call as
    ``Booster.predict`` does), on one thread. Where that predictor is not available the matrix goes to
    ``Booster.predict`` (same scores, slower)."""

    def __init__(self, model: TrainedModel) -> None:
        encoder = model.encoder
        self.model = model
        self.names: tuple[str, ...] = (*encoder.numeric, *encoder.categorical)
        self._needed = frozenset(self.names)
        self._numeric = len(encoder.numeric)
        self._codes = [{value: code for code, value in enumerate(encoder.vocabulary[c])} for c in encoder.categorical]
        self._single = _SingleRow.create(model.booster, model.best_iteration, len(self.names))

    def matrix(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """The encoder's matrix for ``rows``: numeric values as floats, categorical codes, missing -> NaN. A row
        lacking a feature raises KeyError (the caller takes the frame path, which reports it as it always has)."""
        out = np.full((len(rows), len(self.names)), np.nan)
        width = self._numeric
        for r, row in enumerate(rows):
            target = out[r]
            for j in range(width):
                value = row[self.names[j]]
                if value is not None:
                    target[j] = value
            for k, codes in enumerate(self._codes):
                value = row[self.names[width + k]]
                code = codes.get(value) if value is not None else None
                if code is not None:
                    target[width + k] = code
        return out

    def predict(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Probabilities for feature dicts (as ``TrainedModel.predict(frame, num_threads=1)`` gives them)."""
        matrix = self.matrix(rows)
        if self._single is None:
            return self.model.booster.predict(matrix, num_iteration=self.model.best_iteration, num_threads=1)
        return self._single.predict(matrix)

    def covers(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` has every feature this model reads."""
        return self._needed <= row.keys()


class _SingleRow:
    """LightGBM's ``LGBM_BoosterPredictForMatSingleRowFast`` for one booster: the prediction setup (parameters,
    threads) is made once, so a row costs microseconds instead of ``Booster.predict``'s ~50. The input row and the
    output are buffers bound once; a lock makes their use one call at a time."""

    def __init__(self, booster: lgb.Booster, config: ctypes.c_void_p, width: int) -> None:
        self._lock = threading.Lock()
        self._row = np.zeros(width, dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._call = lgb.basic._LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._args = (
            config,
            self._row.ctypes.data_as(ctypes.c_void_p),
            ctypes.byref(self._out_len),
            self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        # frees the setup before the booster it points into (the finalizer holds the booster until then)
        weakref.finalize(self, _free_config, config, booster)

    @classmethod
    def create(cls, booster: lgb.Booster, num_iteration: int, width: int) -> _SingleRow | None:
        """The predictor, or None when this LightGBM lacks it or the model is not one score per row of ``width``
        features (then ``Booster.predict`` answers, raising for a wrong width as it always has)."""
        try:
            library = lgb.basic._LIB
            if booster.num_feature() != width or booster.num_model_per_iteration() != 1:
                return None
            config = ctypes.c_void_p()
            status = library.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL: probabilities, as Booster.predict
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(num_iteration),
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(width),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(config),
            )
        except (AttributeError, OSError, lgb.basic.LightGBMError):
            return None
        return cls(booster, config, width) if status == 0 else None

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        scores = np.empty(matrix.shape[0], dtype=np.float64)
        with self._lock:
            for i in range(matrix.shape[0]):
                self._row[:] = matrix[i]
                lgb.basic._safe_call(self._call(*self._args))
                scores[i] = self._out[0]
        return scores


def _free_config(config: ctypes.c_void_p, _booster: lgb.Booster) -> None:
    lgb.basic._LIB.LGBM_FastConfigFree(config)
