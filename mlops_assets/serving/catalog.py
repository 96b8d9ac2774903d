"""Every registered model in one service: a :class:`PredictionService` per model of the catalog that can be served,
the reason for each one that cannot, and the service-wide health and model listing built from theirs.

Models are independent: each has its own registry, model set, online store, request schema and prediction log, so a
model without a champion answers 503 while the others keep answering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import ModelSpec
from mlops_assets.serving.config import ServeConfig
from mlops_assets.serving.service import PredictionService

OK, DEGRADED, UNAVAILABLE, NOT_SERVED = "ok", "degraded", "unavailable", "not served"
#: The default model's health fields that stay at the top of ``GET /health`` for clients of the one-model service.
DEFAULT_HEALTH_FIELDS = ("champion", "fallback", "online_store", "log", "problems", "uptime_seconds")


class UnknownModel(LookupError):
    """A request for a model the service does not serve (404); the message names the ones it does."""


def unserved_reason(model: ModelSpec) -> str | None:
    """Why ``model`` cannot be served, or None when it can."""
    if model.features.online is None:
        return f"its feature table {model.features.name} declares no online spec (no request schema, no online store)"
    return None


def predict_path(name: str) -> str:
    return f"/models/{name}/predict"


@dataclass
class ServedCatalog:
    """The catalog's models as served: ``services`` for those with an online spec (in catalog order), ``unserved``
    (name -> reason) for the others, and ``default``, the model of ``POST /predict``."""

    catalog: Catalog
    default: str
    services: dict[str, PredictionService]
    unserved: dict[str, str]

    @classmethod
    def build(
        cls, settings: Settings, catalog: Catalog, config: ServeConfig, default_model: str | None = None
    ) -> ServedCatalog:
        """One service per servable model. Raises ValueError (``CatalogError``) for an unknown default model, and
        when the default model (``default_model``, else the catalog's first) cannot be served."""
        default = catalog.model(default_model).name
        unserved = {m.name: reason for m in catalog.models if (reason := unserved_reason(m)) is not None}
        if default in unserved:
            raise ValueError(f"the default model {default} cannot be served: {unserved[default]}")
        services = {m.name: PredictionService(settings, m, config) for m in catalog.models if m.name not in unserved}
        return cls(catalog, default, services, unserved)

    @property
    def default_service(self) -> PredictionService:
        return self.services[self.default]

    def service(self, name: str) -> PredictionService:
        """The service of model ``name``; :class:`UnknownModel` naming the served models for any other name."""
        found = self.services.get(name)
        if found is not None:
            return found
        served = ", ".join(self.services)
        if name in self.unserved:
            raise UnknownModel(f"model {name!r} is registered but not served: {self.unserved[name]}; served: {served}")
        raise UnknownModel(f"no model {name!r}; served: {served}")

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def close(self) -> int:
        """Stop every model's watcher and flush every log (one failing never keeps the others from closing)."""
        written, failure = 0, None
        for service in self.services.values():
            try:
                written += service.close()
            # e.g. a full disk: still close the other models' logs, then report it
            except Exception as error:  # noqa: BLE001
                failure = failure or error
        if failure is not None:
            raise failure
        return written

    # --- introspection -------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(whether the default model is ready, body) for ``GET /health``.

        ``status`` is ``ok`` when every served model is ready and not degraded, ``unavailable`` when none is ready,
        else ``degraded``; ``models`` has each model's own health. The default model's fields (``champion``,
        ``fallback``, ``online_store``, ``log``, ``problems``) are repeated at the top level for clients of the
        one-model service.
        """
        checked = {name: service.health() for name, service in self.services.items()}
        if not any(ready for ready, _ in checked.values()):
            status = UNAVAILABLE
        elif all(body["status"] == OK for _, body in checked.values()):
            status = OK
        else:
            status = DEGRADED
        models: dict[str, Any] = {}
        for model in self.catalog.models:
            if model.name in checked:
                models[model.name] = checked[model.name][1]
            else:
                models[model.name] = {"status": NOT_SERVED, "problems": [self.unserved[model.name]]}
        default_ready, default_body = checked[self.default]
        top = {field: default_body[field] for field in DEFAULT_HEALTH_FIELDS}
        return default_ready, {"status": status, "default": self.default, **top, "models": models}

    def describe(self, name: str) -> dict[str, Any]:
        """For ``GET /models/{name}``: what the model predicts, whether it is served and, if so, its versions.
        :class:`UnknownModel` for a name the catalog does not register."""
        if name not in self.services and name not in self.unserved:
            raise UnknownModel(f"no model {name!r}; registered: {', '.join(m.name for m in self.catalog.models)}")
        model = self.catalog.model(name)
        about = {"feed": model.feed.name, "positive": model.positive, "description": model.description}
        service = self.services.get(name)
        if service is None:
            return {**about, "served": False, "reason": self.unserved[name]}
        assert model.features.online is not None
        return {
            **about,
            "served": True,
            "predict": predict_path(name),
            "entity_key": list(model.features.online.key_fields),
            **service.describe_models(),
        }

    def describe_all(self) -> dict[str, Any]:
        """For ``GET /models``: the default model and every registered model, served or not."""
        return {"default": self.default, "models": {m.name: self.describe(m.name) for m in self.catalog.models}}
