"""The served model set: the champion answers, a challenger takes an A/B share, a shadow scores silently.

Built from the registry's aliases and rebuilt when they change. The reload token is the bytes of
``registry/aliases.json`` plus the file signatures (inode, size, times) of the versions they name, so the set is rebuilt
when a named version's files change too: a tampered file is noticed, and a restored one clears the fallback. The set
is built from exactly the alias bytes in the token, so the token and the set always agree. Versions are immutable, so
a model already loaded is reused by the next set instead of being read and verified again, as long as its files are
unchanged.

A champion that cannot be loaded (e.g. it fails its checksum) never stops the answers: the set falls back to the
newest earlier version that loads and verifies (the copy of the same version verified when it was loaded, else the
champion serving now, else the registry's gated champions, newest promotion first), says so on ``/health`` and in the
service's log, and records a ``serving_fallback`` event in the model's registry, once per distinct cause; when the
cause is gone, a ``serving_recovered`` event. A challenger or shadow that cannot be loaded is left out of the set and
reported: neither ever decides whether a request is answered. The challenger answers A/B requests only once its
evaluation stands (stored, its scores sane) and no rollback took it out of service; with A/B on, the token includes
its evaluation file, so an evaluation stored after the alias moved is picked up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlops_assets.core.records import RecordError, json_safe
from mlops_assets.core.registry import (
    CHAMPION,
    SHADOW,
    VERSION_PATTERN,
    Registry,
    RegistryDamaged,
    check_feature_set,
    logged_aliases,
    rollback_targets,
    rolled_back_from,
)
from mlops_assets.core.training import TrainedModel, load_version
from mlops_assets.serving.reloading import Reloading
from mlops_assets.serving.rows import RowScorer

CHALLENGER = "challenger"
#: Why a challenger takes no A/B traffic while its evaluation is still to come.
NOT_EVALUATED = "is not evaluated yet"
#: The registry events the service records (``Registry.log_event``): a champion it could not serve, and the end of it.
FALLBACK_EVENT, RECOVERED_EVENT = "serving_fallback", "serving_recovered"
#: A version's files whose change means its model must be read and verified again.
VERSION_FILES = ("model.txt", "model.sha256", "metadata.json")
logger = logging.getLogger("mlops_assets.serving")


@dataclass(frozen=True)
class ServedModel:
    """A loaded registry version in a role."""

    variant: str
    version: str
    model: TrainedModel = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)
    #: The same model for feature dicts (the few-request path); set up once per version, shared by its roles.
    rows: RowScorer = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.rows is None:
            object.__setattr__(self, "rows", RowScorer(self.model))

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Probabilities for feature rows, on one thread: a request is a few rows, and requests already run in
        parallel."""
        return self.model.predict(frame, num_threads=1)

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The same probabilities for feature dicts (:class:`~mlops_assets.serving.rows.RowScorer`)."""
        return self.rows.predict(rows)

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, **metadata_summary(self.metadata)}


def metadata_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /models`` shows of a version's registry metadata (strict JSON: a version registered before metrics
    were stored as such may hold a NaN)."""
    metrics = metadata.get("metrics") or {}
    return json_safe(
        {
            "validation_auc": (metrics.get("valid") or {}).get("roc_auc"),
            "test_month": (metadata.get("data") or {}).get("test_month"),
            "registered_at": metadata.get("registered_at"),
            "feature_set_version": metadata.get("feature_set_version"),
        }
    )


@dataclass(frozen=True)
class Fallback:
    """The champion alias names ``wanted``, which cannot serve (``error``); ``serving`` answers in its place."""

    wanted: str
    serving: str
    error: str

    @property
    def reason(self) -> str:
        """One sentence for ``/health``, the service's log and the registry's event."""
        if self.serving == self.wanted:
            return (
                f"champion {self.wanted}'s files no longer verify ({self.error}); serving the copy verified when it "
                "was loaded (a restart would fall back to an earlier champion): restore the files or roll back"
            )
        return (
            f"champion {self.wanted} cannot be served ({self.error}); serving {self.serving} instead, the newest "
            "earlier champion that loads and verifies: restore the files or roll back (`mlops rollback`)"
        )

    def as_dict(self) -> dict[str, str]:
        return {"champion_alias": self.wanted, "serving": self.serving, "reason": self.reason}


@dataclass(frozen=True)
class ModelSet:
    """One consistent set of served models, as the aliases named them at one moment.

    ``challenger`` is set only when A/B is on (share > 0) and the alias names another version than the champion;
    ``shadow`` only when it names another version than the champion. ``aliases`` is the raw alias map.
    ``fallback`` says the champion alias's version could not be served and which version serves instead;
    ``left_out`` says why a named challenger or shadow is missing from the set (a problem: ``/health`` says
    ``degraded``); ``waiting`` why one is not in the set yet, which is no problem (a challenger being evaluated, or
    one rolled back until the next is trained).
    """

    champion: ServedModel | None
    challenger: ServedModel | None
    shadow: ServedModel | None
    aliases: dict[str, str | None]
    ab_share: float
    fallback: Fallback | None = None
    left_out: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()

    def variant_for(self, bucket: float) -> ServedModel:
        """The model that answers a request in A/B ``bucket`` (in [0, 1)); requires a champion."""
        assert self.champion is not None
        return self.challenger if self.challenger is not None and bucket < self.ab_share else self.champion

    @property
    def mode(self) -> str | None:
        """``ab``, ``champion``, or None when nothing answers (no champion yet)."""
        if self.champion is None:
            return None
        return "ab" if self.challenger is not None else "champion"

    @property
    def problems(self) -> list[str]:
        """What is wrong with this set although it serves (``/health`` reports it as ``degraded``)."""
        return [*((self.fallback.reason,) if self.fallback else ()), *self.left_out]

    def describe(self) -> str:
        """For the service's log: who answers."""
        champion = self.champion.version if self.champion else "none"
        if self.fallback is not None:
            champion += f" (in place of {self.fallback.wanted})"
        others = "".join(f", {m.variant} {m.version}" for m in (self.challenger, self.shadow) if m is not None)
        # a named version outside the set (A/B off, one waiting): said, so each move of an alias reads as one
        idle = "".join(
            f", {alias} {self.aliases.get(alias)} not serving"
            for alias, served in ((CHALLENGER, self.challenger), (SHADOW, self.shadow))
            if self.aliases.get(alias) and served is None and self.aliases.get(alias) != self.aliases.get(CHAMPION)
        )
        return f"champion {champion}{others}{idle}"


def _number(version: str) -> int:
    return int(version[1:])


class ModelLoader:
    """Builds model sets from reload tokens, reusing loaded versions whose files are unchanged (verified once)."""

    def __init__(self, registry: Registry, ab_share: float, model: str = "", feature_set: str | None = None) -> None:
        self.registry = registry
        self.ab_share = ab_share
        self.model = model
        #: the feature set the online store computes: a version trained on another cannot be served (None: not checked)
        self.feature_set = feature_set
        self._cache: dict[str, tuple[str | None, ServedModel]] = {}  # version -> (file signature, loaded model)
        self._serving: ModelSet | None = None  # the last set built (the reloader swaps every set it gets)
        self._reported: tuple[str, str, str] | None = None  # the fallback last recorded in the registry
        self._lock = threading.Lock()

    # --- the reload token ----------------------------------------------------------------------------------------

    def token(self) -> str | None:
        """The alias bytes and the signatures of the files of every version they name (None: no aliases yet)."""
        path = self.registry.aliases_path
        if not path.exists():
            return None
        text = path.read_text()
        try:
            named = json.loads(text)
        except json.JSONDecodeError:
            named = {}  # the build reports it
        versions = sorted(
            {v for v in named.values() if isinstance(v, str) and VERSION_PATTERN.match(v)}
            if isinstance(named, dict)
            else set()
        )
        state = {"aliases": text, "files": {v: self.signature(v) for v in versions}}
        challenger = named.get(CHALLENGER) if isinstance(named, dict) and self.ab_share > 0 else None
        if isinstance(challenger, str) and VERSION_PATTERN.match(challenger):
            # its evaluation decides whether it takes A/B traffic: stored after the alias moved, it must reload too
            state["evaluation"] = self._file_signature(self.registry.evaluations_dir / f"{challenger}.json")
        return json.dumps(state, sort_keys=True)

    @staticmethod
    def _file_signature(path: Path) -> str:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return "missing"
        return f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"

    def signature(self, version: str) -> str:
        """Inode, size and times of a version's files: any write, replacement or restore changes it."""
        folder = self.registry.versions_dir / version
        return ",".join(f"{name}:{self._file_signature(folder / name)}" for name in VERSION_FILES)

    # --- building a set ------------------------------------------------------------------------------------------

    def _not_ab_ready(self, version: str) -> str | None:
        """Why ``version`` may not answer real requests as the A/B challenger (None: it may). Only a version whose
        evaluation stands may: a freshly trained one is not evaluated yet, and one whose scores the evaluation
        refused (NaN, outside [0, 1]) would answer with them. Gates it narrowly missed do not keep it out: that is
        what an A/B test measures."""
        try:
            result = self.registry.evaluation(version)
        except (RecordError, OSError) as error:
            return f"has an unreadable evaluation ({_text(error)})"
        if result is None:
            return NOT_EVALUATED
        if result.challenger_score_problem:
            return f"had its scores refused at its evaluation ({result.challenger_score_problem})"
        return None

    def build(self, token: str | None) -> ModelSet:
        state = json.loads(token) if token else {"aliases": None, "files": {}}
        # a damaged file is refused naming itself and the repair (the set serving now keeps serving)
        # (an empty file is damage too: a cut write, a full disk; only no file at all means no aliases yet)
        aliases = self.registry.parse_aliases(state["aliases"]) if state["aliases"] is not None else {}
        signatures: dict[str, str] = state["files"]
        champion = aliases.get(CHAMPION)
        if champion is None:
            self._refuse_a_lost_champion(missing=state["aliases"] is None)
        challenger = aliases.get(CHALLENGER) if self.ab_share > 0 else None
        shadow = aliases.get(SHADOW)
        with self._lock:
            loaded: dict[str, tuple[str | None, ServedModel]] = {}
            fallback: Fallback | None = None
            served_champion: ServedModel | None = None
            if champion is not None:
                served_champion, fallback = self._champion(champion, signatures, loaded)
            left_out: list[str] = []
            waiting: list[str] = []
            others: dict[str, ServedModel | None] = {}
            # a version live quality took out of service answers no A/B traffic (it may still score as a shadow)
            taken_out: set[str] = set()
            if challenger not in (None, champion):
                try:
                    taken_out = rolled_back_from(self.registry)
                except (RegistryDamaged, OSError, ValueError) as error:
                    # whether live quality took it out is unknown: it answers no real traffic (the champion does)
                    left_out.append(f"challenger {challenger} answers no A/B traffic: {_text(error)}")
                    challenger = None
            for variant, version in ((CHALLENGER, challenger), (SHADOW, shadow)):
                others[variant] = None
                if version in (None, champion):
                    continue
                if served_champion is not None and version == served_champion.version:  # a fallback's champion
                    left_out.append(f"{variant} {version} answers as the champion (the fallback): not as {variant}")
                    continue
                if variant == CHALLENGER and version in taken_out:
                    # a rollback's normal course (by hand or by the rollback sensor), not a fault: until the next
                    # challenger is trained
                    waiting.append(
                        f"challenger {version} was rolled back: it answers no A/B traffic until a new one is trained"
                    )
                    continue
                if variant == CHALLENGER and (unready := self._not_ab_ready(version)):
                    # one still being evaluated is the pipeline's normal course; anything else is a problem
                    (waiting if unready == NOT_EVALUATED else left_out).append(
                        f"challenger {version} {unready}: it answers no A/B traffic"
                    )
                    continue
                try:
                    others[variant] = self._load(variant, version, signatures.get(version), loaded)
                except Exception as error:  # noqa: BLE001 - never the answer's concern: serve without it, and say so
                    left_out.append(f"{variant} {version} cannot be loaded ({_text(error)}); serving without it")
            # keep only what the new set serves: a retired version's booster is freed with the old set
            self._cache = loaded
            built = ModelSet(
                served_champion,
                others[CHALLENGER],
                others[SHADOW],
                aliases,
                self.ab_share,
                fallback,
                tuple(left_out),
                tuple(waiting),
            )
            self._record(built)
            self._serving = built
        return built

    def _refuse_a_lost_champion(self, missing: bool) -> None:
        """Raise :class:`RegistryDamaged` when the aliases name no champion (``missing``: there is no aliases file)
        although the event log's last move named one: no command unsets the champion, so the file was deleted or
        edited by hand, and the set serving now keeps serving. A registry never promoted (no champion logged) has
        none to serve, rightly."""
        try:
            logged = logged_aliases(self.registry).get(CHAMPION)
        except (RegistryDamaged, OSError, ValueError):
            return  # the event log cannot say either: nothing to compare with (the doctor reports the log)
        if logged is None:
            return
        what = "is missing" if missing else "names no champion"
        raise RegistryDamaged(
            f"{self.registry.aliases_path} {what}, but the event log's last move named champion {logged}: "
            f"`mlops doctor --model {self.registry.root.name} --repair` rebuilds it from the event log"
        )

    def _load(
        self, variant: str, version: str, signature: str | None, loaded: dict[str, tuple[str | None, ServedModel]]
    ) -> ServedModel:
        """``version`` in role ``variant``: the cached model if its files are unchanged, else read and verified
        (raises e.g. ``RegistryIntegrityError`` for a tampered file, ``UnknownVersionError`` for a missing one)."""
        # trained on another feature set, it would be fed columns it never learnt (every request failed with 500
        # while /health said ok): refused here like a damaged version, so an earlier champion serves, or none
        check_feature_set(self.registry, version, self.feature_set)
        cached = self._cache.get(version) or loaded.get(version)
        if cached is not None and signature is not None and cached[0] == signature:
            model = cached[1]
        else:
            entry = self.registry.get(version)
            model = ServedModel(variant, version, load_version(self.registry, version), entry.metadata)
        loaded[version] = (signature, model)
        return dataclasses.replace(model, variant=variant)

    def _champion(
        self, wanted: str, signatures: dict[str, str], loaded: dict[str, tuple[str | None, ServedModel]]
    ) -> tuple[ServedModel, Fallback | None]:
        """The champion alias's version, or the newest earlier one that loads and verifies (with why). Raises the
        champion's own error when none does: then no set is built and the last one, if any, keeps serving."""
        try:
            return self._load(CHAMPION, wanted, signatures.get(wanted), loaded), None
        except Exception as error:  # noqa: BLE001 - any failure to load it: fall back to an earlier champion
            failure = error
        cause = _text(failure)
        verified = self._cache.get(wanted)
        if verified is not None:  # its files changed after it was verified: the verified copy is that model still
            loaded[wanted] = (None, verified[1])  # no signature: the next build verifies the files again
            return dataclasses.replace(verified[1], variant=CHAMPION), Fallback(wanted, wanted, cause)
        for candidate in self._earlier(wanted):
            try:
                model = self._load(CHAMPION, candidate, self.signature(candidate), loaded)
            except Exception as error:  # noqa: BLE001 - try the next earlier one
                logger.warning(
                    "model %s: fallback candidate %s cannot be loaded either: %s", self.model, candidate, error
                )
                continue
            return model, Fallback(wanted, candidate, cause)
        raise failure

    def _earlier(self, wanted: str) -> list[str]:
        """Fallback candidates older than ``wanted``: the champion serving now, then the gated champions (those the
        promotion gates let in) that no rollback took out of service, most recent promotion first."""
        candidates: list[str] = []
        serving = self._serving.champion if self._serving is not None else None
        if serving is not None:
            candidates.append(serving.version)
        try:
            candidates.extend(rollback_targets(self.registry))
        except (RegistryDamaged, OSError, ValueError) as error:  # an unreadable event log: the serving champion is
            # all we know
            logger.warning("model %s: cannot read the registry's events for a fallback: %s", self.model, error)
        if not VERSION_PATTERN.match(wanted):
            return []
        older = [v for v in dict.fromkeys(candidates) if VERSION_PATTERN.match(v) and _number(v) < _number(wanted)]
        return older

    def _record(self, built: ModelSet) -> None:
        """Say in the log and in the registry's events that the set falls back, or no longer does: once per distinct
        cause, not on every rebuild."""
        fallback = built.fallback
        cause = (fallback.wanted, fallback.serving, fallback.error) if fallback is not None else None
        if cause == self._reported or (cause is None and built.champion is None):
            return
        if fallback is not None:
            logger.error("model %s: %s", self.model, fallback.reason)
            self._event(FALLBACK_EVENT, fallback.wanted, fallback.reason, served_version=fallback.serving)
        elif self._reported is not None and built.champion is not None:  # no champion at all is no recovery
            champion = built.champion.version
            reason = f"the fallback from {self._reported[0]} ended: serving champion {champion}"
            logger.info("model %s: %s", self.model, reason)
            self._event(RECOVERED_EVENT, champion, reason, served_version=champion)
        self._reported = cause

    def _event(self, event: str, version: str | None, reason: str, **details: Any) -> None:
        try:
            self.registry.log_event(event, version=version, reason=reason, **details)
        except OSError as error:  # e.g. a read-only registry: serving goes on, the service's log has it
            logger.warning("model %s: could not record %s in the registry's events: %s", self.model, event, error)


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def reloading_models(
    registry: Registry, ab_share: float, model: str, feature_set: str | None = None
) -> Reloading[ModelSet]:
    """The served model set of ``model``, rebuilt when its ``aliases.json`` or a named version's files change; only
    versions trained on ``feature_set`` serve."""
    loader = ModelLoader(registry, ab_share, model, feature_set)
    return Reloading(f"{model} model set", loader.token, loader.build, describe=ModelSet.describe)
