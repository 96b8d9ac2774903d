"""The prediction service of one registered model as plain Python: validated requests in, scored and logged
predictions out.

Each model of the catalog gets its own :class:`PredictionService`: its registry (``registry/<model>``), served model
set, online store (``online_store/<model>``), request schema and prediction log (``predictions/<model>``), so one
model without a champion, or with a broken export, never stops another from answering.

A batch is scored vectorised: one ``store.features`` call for all its entities, then one ``predict`` per model version
(the champion on its rows, the challenger on its A/B rows, the shadow on all). Features are computed as of the online
store's newest facts at the latest (``OnlineStore.as_of``); a request further past them than
``ServeConfig.max_feature_age_hours`` is refused (422), and every answer says how old its features are and which of
its codes the store has never seen (``unknown_codes``, also logged, so monitoring can count them).

The versions and the online store in use are read once per request from their
:class:`~mlops_assets.serving.reloading.Reloading` holders, which a watcher thread refreshes; the service never opens
DuckDB (it reads the registry's files and the online store's Parquet export).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from mlops_assets.core.features import feature_set_version
from mlops_assets.core.landing import utc_now
from mlops_assets.core.online import OnlineStore
from mlops_assets.core.prediction_log import PredictionLog, log_schema
from mlops_assets.core.registry import Registry, UnknownVersionError
from mlops_assets.core.settings import Settings, refresh_hint, train_hint
from mlops_assets.core.specs import FeatureTableSpec, ModelSpec
from mlops_assets.serving.config import ServeConfig
from mlops_assets.serving.models import (
    CHALLENGER,
    CHAMPION,
    SHADOW,
    ModelSet,
    ServedModel,
    metadata_summary,
    reloading_models,
)
from mlops_assets.serving.reloading import Reloading
from mlops_assets.serving.rows import MAX_ROWS
from mlops_assets.serving.schema import FieldError, PredictionRequest, RequestError, RequestSchema, error_summary
from mlops_assets.serving.store import ServedStore, reloading_store

logger = logging.getLogger("mlops_assets.serving")
#: Columns the service adds to the prediction log's (``core.prediction_log.log_schema``): the request fields whose
#: codes the online store has never seen (comma-separated; null: none) and how many hours past the store's newest
#: facts the prediction time was (0: none), and whether the request was a what-if (it overrode features: its answer is
#: about a flight that did not happen, and the month's live quality leaves it out).
SERVING_LOG_COLUMNS: dict[str, pl.DataType] = {
    "unknown_codes": pl.String(),
    "feature_age_hours": pl.Float64(),
    "what_if": pl.Boolean(),
}
#: Request ids drawn ahead after an answer (:meth:`PredictionService._draw_ids`): a few requests' worth.
DRAWN_IDS = 8


class Unavailable(Exception):
    """The model cannot answer yet (no champion, no online store): 503 with what to do."""


class PredictionFailed(Exception):
    """An internal failure while scoring (logged with status ``error``); ``request_ids`` name the log rows."""

    def __init__(self, message: str, request_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.request_ids = list(request_ids)


@dataclass(frozen=True)
class _Snapshot:
    """What one request uses, read once: the model set and the store."""

    models: ModelSet
    store: ServedStore


def outcome(model: ModelSpec, predicted: bool) -> str:
    """The answer in the model's own word: ``delayed`` / ``not delayed``, ``cancelled`` / ``not cancelled``."""
    return model.positive if predicted else f"not {model.positive}"


class PredictionService:
    """Scores requests for one model with its served versions over its online store and logs every prediction.

    Raises ValueError when the model's feature table has no online spec (it cannot be served).
    """

    def __init__(self, settings: Settings, model: ModelSpec, config: ServeConfig) -> None:
        if model.features.online is None:
            raise ValueError(f"model {model.name}: feature table {model.features.name} declares no online spec")
        self.settings = settings
        self.model = model
        self.name = model.name
        self.spec: FeatureTableSpec = model.features
        self.paths = settings.model(model.name)
        self.config = config
        self.schema = RequestSchema(self.spec, config.max_batch, title=f"{model.name}_request")
        self.registry = Registry(self.paths.registry_dir)
        self.models: Reloading[ModelSet] = reloading_models(
            self.registry, config.ab_share, self.model.name, feature_set_version(self.model.features)
        )
        self.store: Reloading[ServedStore] = reloading_store(self.spec, self.paths.online_store_dir, self.model.name)
        self._log: PredictionLog | None = None
        self._log_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.started_at = time.monotonic()
        #: What a log row and an answer need of each entity: its key columns and prediction time.
        self._key_columns = (*self.spec.key, self.spec.time_column)
        self._ids: list[str] = []  # request ids drawn ahead (list.pop and extend are atomic: no lock)

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load what exists now (the service starts even without a champion: it answers 503 until one appears),
        then watch the registry aliases and the online store for changes."""
        self.refresh()
        self._watcher = threading.Thread(target=self._watch, name=f"serving-reload-{self.name}", daemon=True)
        self._watcher.start()

    def refresh(self) -> None:
        self.models.refresh()
        if self.store.refresh():
            self._ensure_log()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.reload_seconds):
            try:
                self.refresh()
            except Exception:  # keep watching: a dead watcher would silently stop every future reload
                logger.exception("reload check failed for model %s", self.name)

    def close(self) -> int:
        """Stop watching and flush the prediction log; return the rows written by the final flush."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._log_lock:
            return self._log.close() if self._log is not None else 0

    def _ensure_log(self) -> PredictionLog | None:
        """The log, created with the first online store (its key column types make the log's schema)."""
        if self._log is not None:
            return self._log
        with self._log_lock:
            loaded = self.store.current
            if self._log is None and loaded is not None and not self._stop.is_set():
                schema = {**log_schema(self.spec.key, loaded.value.key_types), **SERVING_LOG_COLUMNS}
                flush_rows, flush_seconds = self.config.log_flush_rows, self.config.log_flush_seconds
                self._log = PredictionLog(self.paths.predictions_dir, schema, flush_rows, flush_seconds)
            return self._log

    # --- scoring -------------------------------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        models, store = self.models.current, self.store.current
        if models is None or models.value.champion is None:
            detail = f" ({self.models.error})" if self.models.error else ""
            raise Unavailable(
                f"model {self.name} has no champion in {self.registry.root}{detail}: {train_hint()} to train and "
                f"promote one (or `mlops rollback --model {self.name} --to VERSION`); the service picks it up "
                "without a restart"
            )
        if store is None:
            detail = f" ({self.store.error})" if self.store.error else ""
            raise Unavailable(
                f"model {self.name} has no online store in {self.paths.online_store_dir}{detail}: {train_hint()} "
                f"(or materialize {self.name}/online_store); the service picks it up without a restart"
            )
        return _Snapshot(models.value, store.value)

    def predict(
        self, requests: Sequence[PredictionRequest], started: float, batch: bool = False
    ) -> list[dict[str, Any]]:
        """Score validated requests (``started``: ``time.perf_counter()`` when the request arrived; ``batch``: they
        came as a list, so errors name them ``[i].field``) and log them.

        Raises :class:`Unavailable` (503), :class:`RequestError` (422: a local time that does not exist at the place,
        a prediction time before the online store's newest month, or one further past the online store's facts than
        the service answers for) or
        :class:`PredictionFailed` (an internal failure, logged with status ``error``).
        """
        answers, finish = self.answer(requests, started, batch)
        finish()
        return answers

    def answer(
        self, requests: Sequence[PredictionRequest], started: float, batch: bool = False
    ) -> tuple[list[dict[str, Any]], Callable[[], None]]:
        """:meth:`predict`'s answers, and ``finish``, which scores the shadow and writes the prediction log rows:
        call it once, after sending the answers (the client need not wait for either; it never raises for the
        shadow, whose failure is logged)."""
        snapshot = self._snapshot()
        store = snapshot.store.store
        ids = self._request_ids(len(requests))
        models, champion = snapshot.models, snapshot.models.champion
        assert champion is not None  # _snapshot refuses a set without one
        # the A/B bucket is a sha256 of the key: only worth computing when there is a challenger to route to
        arms = [models.variant_for(r.bucket) for r in requests] if models.challenger else [champion] * len(requests)
        features: pl.DataFrame | list[dict[str, Any]] | None = self._feature_rows(requests, snapshot, arms)
        if features is not None:
            keys = [{c: row[c] for c in self._key_columns} for row in features]
        else:
            try:
                features = store.features(self.schema.frame(requests))
                # before overrides: a what-if keeps its entity's key
                keys = features.select(*self._key_columns).to_dicts()
            except Exception as error:
                self._log_failure(requests, ids, arms, started, error)
                raise PredictionFailed(f"computing features failed: {type(error).__name__}", ids) from error
        times = self._check_times([k[self.spec.time_column] for k in keys], store, snapshot.store.version, batch)
        ages = [store.feature_age_hours(t) for t in times]
        unknown = unknown_codes(requests, store)
        try:
            if isinstance(features, pl.DataFrame):
                features = apply_overrides(features, requests, self.spec)
            scores = np.empty(len(requests), dtype=np.float64)
            for model in {id(m): m for m in arms}.values():  # one predict per model for the whole batch
                rows = [i for i, arm in enumerate(arms) if arm is model]
                scores[rows] = _score(model, features, rows)
            if not np.isfinite(scores).all():
                raise ValueError("the model returned a non-finite score")
        except Exception as error:
            self._log_failure(requests, ids, arms, started, error, keys)
            raise PredictionFailed(f"scoring failed: {type(error).__name__}", ids) from error
        latency_ms = (time.perf_counter() - started) * 1000.0
        scored = features

        def finish() -> None:
            self._draw_ids()
            shadow, shadow_scores, shadow_error = snapshot.models.shadow, None, None
            if shadow is not None:  # its failure must never cost the answer: it is logged, not raised
                try:
                    shadow_scores = _score(shadow, scored, range(len(requests)))
                except Exception as error:
                    logger.exception("shadow %s failed", shadow.version)
                    shadow_error = f"{type(error).__name__}: {error}"
            self._log_rows(
                keys,
                ids,
                requests,
                arms,
                scores,
                latency_ms,
                (shadow, shadow_scores, shadow_error),
                (unknown, ages),
            )

        predicted = [bool(score >= 0.5) for score in scores]
        return [
            {
                "request_id": ids[i],
                "model": self.name,
                "entity_key": requests[i].key,
                "probability": float(scores[i]),
                "predicted": predicted[i],
                "outcome": outcome(self.model, predicted[i]),
                "model_version": arms[i].version,
                "variant": arms[i].variant,
                "online_store": snapshot.store.version,
                "features_as_of": store.as_of(times[i]).isoformat(),
                "feature_age_hours": round(ages[i], 3),
                "features_stale": ages[i] > 0,
                "unknown_codes": unknown[i],
            }
            for i in range(len(requests))
        ], finish

    def _request_ids(self, count: int) -> list[str]:
        """``count`` new request ids (uuid4, hex): drawn ahead, after an earlier answer (:meth:`_draw_ids`), when
        there are enough."""
        drawn = self._ids
        if count > len(drawn):
            return [uuid.uuid4().hex for _ in range(count)]
        try:
            return [drawn.pop() for _ in range(count)]
        except IndexError:  # another thread took them meanwhile
            return [uuid.uuid4().hex for _ in range(count)]

    def _draw_ids(self) -> None:
        """Draw request ids ahead (a few requests' worth), after an answer is sent: an answer need not wait for the
        random bytes."""
        missing = DRAWN_IDS - len(self._ids)
        if missing > 0:
            self._ids.extend(uuid.uuid4().hex for _ in range(missing))

    def _feature_rows(
        self, requests: Sequence[PredictionRequest], snapshot: _Snapshot, arms: list[ServedModel]
    ) -> list[dict[str, Any]] | None:
        """The requests' feature rows as dicts (the few-request path, :mod:`~mlops_assets.serving.rows`), or None
        for the frame path: a large batch, overrides (what-ifs keep the frame path's casts), a store without dict
        indexes, a prediction time that does not exist, or a served model reading a feature the rows lack."""
        features = snapshot.store.rows
        if len(requests) > MAX_ROWS or not features.available or any(r.overrides for r in requests):
            return None
        try:
            rows = features.rows([r.fields for r in requests])
        except Exception:  # a bug of this path, not of the request: the frame path answers as it always has
            logger.warning("model %s: the few-request path failed; using the frame path", self.name, exc_info=True)
            return None
        if rows is None:
            return None
        shadow = snapshot.models.shadow
        scorers = {id(m): m.rows for m in (*arms, *((shadow,) if shadow is not None else ()))}
        return rows if all(scorer.covers(rows[0]) for scorer in scorers.values()) else None

    def _check_times(
        self, times: list[datetime | None], store: OnlineStore, version: str, batch: bool
    ) -> list[datetime]:
        """The prediction times, all checked: refuse, naming the field, a local time skipped by a daylight-saving
        change (it has no prediction time), one before the store's facts begin (its windows would miss their
        start) and one further past the store's newest facts than ``max_feature_age_hours`` (its features would be
        older than that)."""
        fields = "/".join(self.schema.time_fields) or "request"
        limit = self.config.max_feature_age_hours
        errors: list[FieldError] = []
        for i, time_ in enumerate(times):
            where = f"[{i}].{fields}" if batch else fields
            if time_ is None:
                errors.append(FieldError(where, "this local time does not exist at the place (a daylight-saving gap)"))
                continue
            if store.before_its_facts(time_):
                begins = store.serves_from.isoformat(timespec="minutes") if store.serves_from else "?"
                errors.append(
                    FieldError(
                        where,
                        f"its prediction time {time_.isoformat(timespec='minutes')} UTC is before online store "
                        f"{version}, which serves flights from {begins} (its newest month, "
                        f"{store.manifest.get('newest_month')}): an earlier flight's windows would reach before its "
                        f"data. Earlier flights are scored in batch ({self.name}/batch_predictions), not here",
                    )
                )
                continue
            age = store.feature_age_hours(time_)
            if age > limit:
                newest = store.horizon.isoformat(timespec="minutes") if store.horizon else "?"
                errors.append(
                    FieldError(
                        where,
                        f"its prediction time {time_.isoformat(timespec='minutes')} UTC is {age:.1f} h past the "
                        f"newest facts of online store {version} ({newest} UTC); features older than {limit:g} h are "
                        f"not served: land newer months (`mlops replay --month YYYY-MM`) and refresh the store ("
                        f"{refresh_hint()}), then ask again",
                    )
                )
        if errors:
            raise RequestError(422, error_summary(errors), errors)
        return [t for t in times if t is not None]

    # --- the prediction log --------------------------------------------------------------------------------------

    def _log_rows(
        self,
        keys: list[dict[str, Any]],
        ids: list[str],
        requests: Sequence[PredictionRequest],
        arms: list[ServedModel],
        scores: np.ndarray,
        latency_ms: float,
        shadowed: tuple[ServedModel | None, np.ndarray | None, str | None],
        flags: tuple[list[list[str]], list[float]],
    ) -> None:
        """One row per request and served version (``shadowed``: the shadow, its scores or its error; ``flags``: each
        request's unknown codes and feature age)."""
        log = self._ensure_log()
        if log is None:
            return
        shadow, shadow_scores, shadow_error = shadowed
        unknown, ages = flags
        now = utc_now()
        rows: list[dict[str, object]] = []
        for i, key in enumerate(keys):
            base = self._row_base(ids[i], now, requests[i], key, unknown[i], ages[i])
            rows.append(
                {
                    **base,
                    "variant": arms[i].variant,
                    "model_version": arms[i].version,
                    "score": float(scores[i]),
                    "served": True,
                    "latency_ms": latency_ms,
                    "status": "ok",
                    "error": None,
                }
            )
            if shadow is not None:
                score = None if shadow_scores is None else float(shadow_scores[i])
                rows.append(
                    {
                        **base,
                        "variant": SHADOW,
                        "model_version": shadow.version,
                        "score": score,
                        "served": False,
                        "latency_ms": latency_ms,
                        "status": "ok" if shadow_error is None else "error",
                        "error": shadow_error,
                    }
                )
        self._append(log, rows)

    def _row_base(
        self,
        request_id: str,
        now: datetime,
        request: PredictionRequest,
        key: dict[str, Any],
        unknown: list[str] | None = None,
        age: float | None = None,
    ) -> dict[str, object]:
        """The columns every log row of one request shares: ids, the model, the entity's key and prediction time,
        the codes the store has never seen, the features' age and whether the request was a what-if."""
        return {
            "request_id": request_id,
            "logged_at": now,
            "model": self.name,
            "entity_key": request.key,
            **{c: key[c] for c in self.spec.key},
            "prediction_time": key[self.spec.time_column],
            "unknown_codes": ",".join(unknown) if unknown else None,
            "feature_age_hours": age,
            "what_if": bool(request.overrides),
        }

    def _log_failure(
        self,
        requests: Sequence[PredictionRequest],
        ids: list[str],
        arms: list[ServedModel],
        started: float,
        error: Exception,
        keys: list[dict[str, Any]] | None = None,
    ) -> None:
        """An internal failure, logged with status ``error``: with the entities' keys and prediction times when the
        features were computed (so the month's error rate counts it), else the key columns the request carries."""
        logger.exception("prediction failed for %d request(s)", len(requests))
        log = self._ensure_log()
        if log is None:
            return
        if keys is not None:
            known = keys
        else:  # the key from the request's key fields (OnlineSpec.key_fields: the key's order), so the month counts it
            fields = self.spec.online.key_fields if self.spec.online is not None else ()
            named = dict(zip(self.spec.key, fields, strict=True)) if len(fields) == len(self.spec.key) else {}
            known = [
                {**{c: r.fields.get(named.get(c, c)) for c in self.spec.key}, self.spec.time_column: None}
                for r in requests
            ]
        latency_ms, now, message = (
            (time.perf_counter() - started) * 1000.0,
            utc_now(),
            f"{type(error).__name__}: {error}"[:1000],
        )
        failed = {"score": None, "served": False, "latency_ms": latency_ms, "status": "error", "error": message}
        rows: list[dict[str, object]] = [
            {
                **self._row_base(ids[i], now, requests[i], key),
                "variant": arms[i].variant,
                "model_version": arms[i].version,
                **failed,
            }
            for i, key in enumerate(known)
        ]
        self._append(log, rows)

    @staticmethod
    def _append(log: PredictionLog, rows: list[dict[str, object]]) -> None:
        try:
            log.append(rows)
        except RuntimeError:  # closed: the process is shutting down after the answer was computed
            logger.warning("prediction log closed; %d row(s) not logged", len(rows))

    # --- introspection -------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body) for ``GET /health``: ready means a champion and an online store are loaded; ``degraded``
        means serving, but the newest aliases or export could not be loaded (the last good ones still serve), or
        the champion alias's version cannot be served and an earlier one answers (``fallback``)."""
        models, store = self.models.current, self.store.current
        champion = models.value.champion if models is not None else None
        fallback = models.value.fallback if models is not None else None
        problems = [*(models.value.problems if models is not None else ())]
        # each problem once: what failed to load, or what is missing and how to make it
        if champion is None:
            problems.append(f"no champion model for {self.name}: {self.models.error or train_hint()}")
        elif self.models.error:
            problems.append(self.models.error)
        if store is None:
            missing = f"{train_hint()} (or materialize {self.name}/online_store)"
            # the store's own message says what is missing: the exception's class adds nothing for a person
            why = (self.store.error or "").removeprefix("FileNotFoundError: ")
            problems.append(f"no online store for {self.name}: {why or missing}")
        elif self.store.error:
            problems.append(
                f"the newest online store of {self.name} cannot be loaded ({self.store.error}); the last good one "
                f"({store.value.version}) keeps serving: materialize {self.name}/online_store to export it again"
            )
        log = self._log
        if log is not None and log.last_error:
            problems.append(
                f"the prediction log cannot be written ({log.last_error}); {log.pending} row(s) kept in memory, "
                f"retrying: free the disk or fix {self.paths.predictions_dir} (live quality and the rollback "
                "sensor read this log)"
            )
        ready = champion is not None and store is not None
        return ready, {
            "status": ("degraded" if problems else "ok")
            if ready
            else "unavailable",  # degraded: serving, but a reload failed or an earlier champion answers
            "champion": champion.version if champion is not None else None,
            "fallback": fallback.as_dict() if fallback is not None else None,
            "online_store": None
            if store is None
            else {
                "version": store.value.version,
                "newest_month": store.value.store.manifest.get("newest_month"),
                "facts_known_through": store.value.store.manifest.get("facts_known_through"),
                "loaded_at": store.loaded_at.isoformat(timespec="seconds"),
            },
            "log": {
                "rows_written": log.rows_written if log else 0,
                "files_written": log.files_written if log else 0,
                "rows_pending": log.pending if log else 0,
                "failed_writes": log.failed_flushes if log else 0,
                "rows_set_aside": log.rows_set_aside if log else 0,
                "folder": str(self.paths.predictions_dir),
            },
            "problems": problems,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
        }

    def describe_models(self) -> dict[str, Any]:
        """For ``GET /models``: each alias's version and registry summary, whether it serves, the A/B share and mode."""
        loaded = self.models.current
        if loaded is None:
            return {
                "mode": None,
                "ab_share": self.config.ab_share,
                "champion": None,
                "challenger": None,
                "shadow": None,
                "problems": [self.models.error or f"no registry aliases yet: {train_hint()}"],
            }
        models = loaded.value
        serving = {CHAMPION: models.champion, CHALLENGER: models.challenger, SHADOW: models.shadow}
        entries: dict[str, Any] = {}
        for alias in (CHAMPION, CHALLENGER, SHADOW):
            version = models.aliases.get(alias)
            if version is None:
                entries[alias] = None
                continue
            served = serving[alias]
            if served is not None and served.version == version:
                entries[alias] = {**served.summary(), "serving": True}
                continue
            try:  # named but not loaded (A/B off, or the same version as the champion): metadata only
                summary = metadata_summary(self.registry.get(version).metadata)
            except (UnknownVersionError, OSError, ValueError) as error:
                summary = {"error": str(error)}
            entries[alias] = {"version": version, **summary, "serving": False}
            if served is not None:  # the champion alias's version cannot serve: say who answers instead
                entries[alias]["served_instead"] = served.version
        return {
            "mode": models.mode,
            "ab_share": self.config.ab_share,
            "shadow_enabled": models.shadow is not None,
            **entries,
            "fallback": models.fallback.as_dict() if models.fallback is not None else None,
            "loaded_at": loaded.loaded_at.isoformat(timespec="seconds"),
            "problems": [
                *([f"no champion model for {self.name}: {train_hint()}"] if models.champion is None else []),
                *models.problems,
                *([self.models.error] if self.models.error else []),
            ],
            "waiting": list(models.waiting),  # not in the set yet, and no problem (a challenger being evaluated)
        }


def _score(model: ServedModel, features: pl.DataFrame | list[dict[str, Any]], rows: Sequence[int]) -> np.ndarray:
    """``model``'s probabilities for the feature rows at positions ``rows`` (all of them in one predict call)."""
    if isinstance(features, list):
        return model.predict_rows([features[i] for i in rows])
    return model.predict(features if len(rows) == features.height else features[list(rows)])


def unknown_codes(requests: Sequence[PredictionRequest], store: OnlineStore) -> list[list[str]]:
    """Per request, the fields whose (well-formed) value the store's reference export has never seen, e.g. a new
    destination, then the combinations of known values it has never seen (``route``: a destination flown only from
    another airport): answered, but flagged, since their features (a route's distance and windows) are missing."""
    known, combinations = store.known_codes, store.known_combinations
    flagged = []
    for r in requests:
        names = [
            name for name, values in known.items() if (value := r.fields.get(name)) is not None and value not in values
        ]
        for name, (fields, seen) in combinations.items():
            values = tuple(r.fields.get(f) for f in fields)
            if None not in values and not set(fields) & set(names) and values not in seen:
                names.append(name)
        flagged.append(names)
    return flagged


def apply_overrides(
    features: pl.DataFrame, requests: Sequence[PredictionRequest], spec: FeatureTableSpec
) -> pl.DataFrame:
    """Replace computed features by the requests' overrides (vectorised: one expression per overridden feature)."""
    names = sorted({name for r in requests for name in r.overrides})
    if not names:
        return features
    columns = []
    for name in names:
        dtype: pl.DataType = pl.Float64() if name in spec.numeric else pl.String()
        mask = pl.Series([name in r.overrides for r in requests], dtype=pl.Boolean)
        values = pl.Series([r.overrides.get(name) for r in requests], dtype=dtype)
        columns.append(pl.when(mask).then(values).otherwise(pl.col(name).cast(dtype)).alias(name))
    return features.with_columns(columns)
