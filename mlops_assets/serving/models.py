"""The served model set: the champion answers, a challenger takes an A/B share, a shadow scores silently.

Built from the registry's aliases and rebuilt when ``registry/aliases.json`` changes (its bytes are the reload token,
and the set is built from exactly those bytes, so the token and the set always agree). Versions are immutable, so a
model already loaded is reused by the next set instead of being read and verified again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlops_assets.core.registry import Registry
from mlops_assets.core.training import TrainedModel, load_version
from mlops_assets.serving.reloading import Reloading

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


@dataclass(frozen=True)
class ServedModel:
    """A loaded registry version in a role."""

    variant: str
    version: str
    model: TrainedModel = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Probabilities for feature rows, on one thread: a request is a few rows, and requests already run in
        parallel."""
        return self.model.predict(frame, num_threads=1)

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, **metadata_summary(self.metadata)}


def metadata_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /models`` shows of a version's registry metadata."""
    metrics = metadata.get("metrics") or {}
    return {
        "validation_auc": (metrics.get("valid") or {}).get("roc_auc"),
        "test_month": (metadata.get("data") or {}).get("test_month"),
        "registered_at": metadata.get("registered_at"),
        "feature_set_version": metadata.get("feature_set_version"),
    }


@dataclass(frozen=True)
class ModelSet:
    """One consistent set of served models, as the aliases named them at one moment.

    ``challenger`` is set only when A/B is on (share > 0) and the alias names another version than the champion;
    ``shadow`` only when it names another version than the champion. ``aliases`` is the raw alias map.
    """

    champion: ServedModel | None
    challenger: ServedModel | None
    shadow: ServedModel | None
    aliases: dict[str, str | None]
    ab_share: float

    def variant_for(self, bucket: float) -> ServedModel:
        """The model that answers a request in A/B ``bucket`` (in [0, 1)); requires a champion."""
        assert self.champion is not None
        return self.challenger if self.challenger is not None and bucket < self.ab_share else self.champion

    @property
    def mode(self) -> str:
        return "ab" if self.challenger is not None else "champion"


class ModelLoader:
    """Builds model sets from alias bytes, reusing loaded versions (immutable, checksum verified once)."""

    def __init__(self, registry: Registry, ab_share: float) -> None:
        self.registry = registry
        self.ab_share = ab_share
        self._cache: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def token(self) -> str | None:
        path = self.registry.aliases_path
        return path.read_text() if path.exists() else None

    def build(self, token: str | None) -> ModelSet:
        aliases: dict[str, str | None] = json.loads(token) if token else {}
        champion = aliases.get(CHAMPION)
        challenger = aliases.get(CHALLENGER) if self.ab_share > 0 else None
        shadow = aliases.get(SHADOW)
        with self._lock:
            chosen = {
                CHAMPION: self._load(CHAMPION, champion),
                CHALLENGER: self._load(CHALLENGER, challenger) if challenger not in (None, champion) else None,
                SHADOW: self._load(SHADOW, shadow) if shadow not in (None, champion) else None,
            }
            # keep only what the new set serves: a retired version's booster is freed with the old set
            self._cache = {m.version: m for m in chosen.values() if m is not None}
        return ModelSet(chosen[CHAMPION], chosen[CHALLENGER], chosen[SHADOW], aliases, self.ab_share)

    def _load(self, variant: str, version: str | None) -> ServedModel | None:
        if version is None:
            return None
        cached = self._cache.get(version)
        if cached is not None:
            return ServedModel(variant, version, cached.model, cached.metadata)
        entry = self.registry.get(version)
        return ServedModel(variant, version, load_version(self.registry, version), entry.metadata)


def reloading_models(registry: Registry, ab_share: float, model: str) -> Reloading[ModelSet]:
    """The served model set of ``model``, rebuilt when its ``aliases.json`` changes."""
    loader = ModelLoader(registry, ab_share)
    return Reloading(f"{model} model set", loader.token, loader.build)
