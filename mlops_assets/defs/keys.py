"""Asset keys: one helper per kind, and the one rule that turns a key into its DuckDB table.

A feed's tables keep their stage as the prefix (``raw/flights`` is ``raw.flights``) and are built once for all
models; feature tables are ``features/<name>``. Everything of one model is under its name (``flight_delay/champion``,
``flight_delay/drift_report`` is the DuckDB table ``flight_delay.drift_report``), so two models never share a key, a
table, a sensor's events or a run's tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from mlops_assets.core.specs import FeatureTableSpec, ModelSpec, TableSpec
from mlops_assets.core.store import qualified

#: Every run and sensor request about one model carries its name in this tag.
MODEL_TAG = "mlops/model"


def landing_key(table: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(["landing", table.name])


def raw_key(table: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(["raw", table.name])


def validated_key(table: TableSpec | str) -> dg.AssetKey:
    return dg.AssetKey(["validated", table if isinstance(table, str) else table.name])


def features_key(spec: FeatureTableSpec) -> dg.AssetKey:
    return dg.AssetKey(["features", spec.name])


def table_of(key: dg.AssetKey) -> str:
    """The DuckDB table an asset key names: its prefix is the schema, its last part the table."""
    schema, *_, table = key.path
    return qualified(schema, table)


@dataclass(frozen=True)
class ModelKeys:
    """The asset keys of one model's lifecycle and monitoring, all under the model's name."""

    model: str

    def _key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.model, name])

    @property
    def training_set(self) -> dg.AssetKey:
        return self._key("training_set")

    @property
    def challenger(self) -> dg.AssetKey:
        return self._key("challenger")

    @property
    def evaluation(self) -> dg.AssetKey:
        return self._key("evaluation")

    @property
    def champion(self) -> dg.AssetKey:
        return self._key("champion")

    @property
    def online_store(self) -> dg.AssetKey:
        return self._key("online_store")

    @property
    def predictions(self) -> dg.AssetKey:
        return self._key("batch_predictions")

    @property
    def drift(self) -> dg.AssetKey:
        return self._key("drift_report")

    @property
    def live(self) -> dg.AssetKey:
        return self._key("live_performance")

    @property
    def lifecycle(self) -> list[dg.AssetKey]:
        """What a retrain materializes: training set -> challenger -> evaluation -> promotion decision."""
        return [self.training_set, self.challenger, self.evaluation, self.champion]

    @property
    def monitoring(self) -> list[dg.AssetKey]:
        """What a landed month refreshes for the model besides its online store: batch scores, drift, live quality."""
        return [self.predictions, self.drift, self.live]


def served(model: ModelSpec) -> bool:
    """Whether the model has a request schema, and so an online store and a place in the prediction service."""
    return model.features.online is not None


def month_refresh_keys(model: ModelSpec) -> list[dg.AssetKey]:
    """What a landed month refreshes for ``model``: its online store (when served) and its monitoring."""
    keys = keys_of(model)
    return [*([keys.online_store] if served(model) else []), *keys.monitoring]


def keys_of(model: ModelSpec) -> ModelKeys:
    return ModelKeys(model.name)


def retraining_job_name(model: ModelSpec | str) -> str:
    return f"{model if isinstance(model, str) else model.name}_retraining"


def sensor_name(model: ModelSpec | str, what: str) -> str:
    """``flight_delay_drift_sensor``: a model's own sensor."""
    return f"{model if isinstance(model, str) else model.name}_{what}_sensor"
