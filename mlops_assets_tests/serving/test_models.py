"""Every registered model on one service: ``GET /models`` lists them all, each answers on its own route with its own
request schema, logs into its own folder, and a model without a champion answers 503 while the others keep answering.

Where a test needs two served models and the catalog registers fewer with a champion, it adds ``flight_delay_twin``:
``flight_delay``'s spec under another name, served from copies of ``flight_delay``'s registry and online store (a real
second model as far as serving can tell: its own folders, routes, reloads and log).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog
from mlops_assets.core.prediction_log import ONLINE_FOLDER, read_log
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import ModelSpec
from mlops_assets.serving import ServeConfig
from mlops_assets_tests.serving.conftest import (
    DELAY,
    FLIGHT,
    MODEL,
    SPEC,
    BuiltPlatform,
    Client,
    current_store,
    running,
)

TWIN = "flight_delay_twin"
CANCELLATION = "flight_cancellation"
SERVABLE = [m for m in CATALOG.models if m.features.online is not None]


def predict_path(name: str) -> str:
    return f"/models/{name}/predict"


def with_twin(settings: Settings) -> ModelSpec:
    """``flight_delay`` under another name, with copies of its registry and online store in ``settings``."""
    for folder in ("registry_dir", "online_store_dir"):
        shutil.copytree(getattr(settings.model(DELAY), folder), getattr(settings.model(TWIN), folder))
    return dataclasses.replace(MODEL, name=TWIN, description="flight_delay again, under another name (a test's twin)")


def models_with_champions(platform: BuiltPlatform, settings: Settings) -> Catalog:
    """The registered servable models that have a champion, plus the twin when that leaves fewer than two."""
    models = [m for m in SERVABLE if platform.champions[m.name] is not None]
    if len(models) < 2:
        models.append(with_twin(settings))
    return Catalog(models=tuple(models))


def wait_for(client: Client, done: Callable[[dict[str, Any]], bool], seconds: float = 10.0) -> dict[str, Any]:
    """``GET /health`` until ``done(body)`` (the service reloads on its own, within ``reload_seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        _, health = client.get("/health")
        if done(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_every_servable_model_has_a_champion_from_the_pipeline(platform: BuiltPlatform) -> None:
    """The fixture's real pipeline (every 20th flight of Jan-Mar 2013) promoted a first version for each model."""
    assert SERVABLE, "no registered model declares an online spec"
    assert {m.name: platform.champions[m.name] for m in SERVABLE} == {m.name: "v0001" for m in SERVABLE}


def test_models_lists_every_registered_model(served: Settings, platform: BuiltPlatform) -> None:
    with running(served) as server:
        status, listing = server.client.get("/models")
        assert status == 200 and listing["default"] == DELAY
        assert list(listing["models"]) == [m.name for m in CATALOG.models]
        for model in CATALOG.models:
            entry = listing["models"][model.name]
            about = {"feed": model.feed.name, "positive": model.positive, "description": model.description}
            assert entry == {**entry, **about, "served": model.features.online is not None}
            if entry["served"]:
                assert entry["predict"] == predict_path(model.name) and entry["entity_key"]
                assert (entry["champion"] or {}).get("version") == platform.champions[model.name]
            assert server.client.get(f"/models/{model.name}") == (200, entry)
        status, body = server.client.get("/models/no_such_model")
        assert status == 404 and all(m.name in body["detail"] for m in CATALOG.models), body


def test_an_unknown_or_unserved_model_is_a_404_naming_the_served_ones(served: Settings) -> None:
    # a registered model whose feature table declares no online spec: listed with the reason, never served
    offline = dataclasses.replace(
        MODEL, name="offline_only", features=dataclasses.replace(SPEC, name="offline_features", online=None)
    )
    catalog = Catalog(models=(*CATALOG.models, offline))
    served_names = [m.name for m in SERVABLE]
    with running(served, catalog=catalog) as server:
        refusals = (("no_such_model", "no model 'no_such_model'"), ("offline_only", "registered but not served"))
        for name, says in refusals:
            status, body = server.client.post(FLIGHT, predict_path(name))
            assert status == 404 and says in body["detail"], body
            assert all(n in body["detail"] for n in served_names), body
        _, listing = server.client.get("/models")
        assert listing["models"]["offline_only"]["served"] is False
        assert "declares no online spec" in listing["models"]["offline_only"]["reason"]
        status, health = server.client.get("/health")
        assert status == 200 and health["status"] == "ok"  # a model that is not served does not degrade the others
        assert health["models"]["offline_only"]["status"] == "not served"
        assert server.client.post(FLIGHT)[0] == 200


def test_the_model_route_answers_as_the_default_route(served: Settings) -> None:
    with running(served) as server:
        own = server.client.post(FLIGHT, predict_path(DELAY))
        default = server.client.post(FLIGHT)
        batch = [{**FLIGHT, "flight": n} for n in (1, 2, 3)]
        own_batch = server.client.post(batch, predict_path(DELAY))
        default_batch = server.client.post(batch)
    assert own[0] == default[0] == own_batch[0] == default_batch[0] == 200
    assert own[1]["prediction"]["request_id"] != default[1]["prediction"]["request_id"]  # two requests, two log rows

    def same(answer: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in answer.items() if k != "request_id"}

    assert same(own[1]["prediction"]) == same(default[1]["prediction"])
    assert [same(a) for a in own_batch[1]["predictions"]] == [same(a) for a in default_batch[1]["predictions"]]
    assert own[1]["prediction"]["model"] == DELAY


def test_without_a_default_model_post_predict_is_the_catalogs_first(served: Settings) -> None:
    with running(served, default_model=None) as server:
        _, listing = server.client.get("/models")
        status, body = server.client.post(FLIGHT)
    assert listing["default"] == CATALOG.default.name
    assert status == 200 and body["prediction"]["model"] == CATALOG.default.name


def test_each_model_route_documents_its_own_request_schema(served: Settings, platform: BuiltPlatform) -> None:
    catalog = models_with_champions(platform, served)
    with running(served, catalog=catalog) as server:
        status, openapi = server.client.get("/openapi.json")
    assert status == 200
    paths = openapi["paths"]
    assert predict_path("{model}") not in paths  # the 404 for unknown names is not an API of its own

    def body_schema(path: str) -> dict[str, Any]:
        return paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]

    for model in catalog.models:
        assert model.features.online is not None
        fields = model.features.online.request_fields
        one, many = body_schema(predict_path(model.name))["anyOf"]
        assert one["title"] == f"{model.name}_request" and many["items"] == one, model.name
        assert set(one["properties"]) == {*fields, "overrides"} and one["additionalProperties"] is False
        assert one["required"] == [name for name, (_, required, _) in fields.items() if required]
        assert many["maxItems"] == ServeConfig().max_batch
    assert body_schema("/predict") == body_schema(predict_path(DELAY))


def test_every_model_answers_a_real_flight_and_logs_it_in_its_own_folder(
    served: Settings, platform: BuiltPlatform
) -> None:
    catalog = models_with_champions(platform, served)
    answers: dict[str, dict[str, Any]] = {}
    with running(served, catalog=catalog) as server:
        for model in catalog.models:
            status, body = server.client.post(FLIGHT, predict_path(model.name))
            assert status == 200, (model.name, body)
            answers[model.name] = answer = body["prediction"]
            assert answer["model"] == model.name and 0.0 <= answer["probability"] <= 1.0
            assert answer["predicted"] == (answer["probability"] >= 0.5)
            assert answer["outcome"] == (model.positive if answer["predicted"] else f"not {model.positive}")
            assert answer["entity_key"] == "UA|1545|EWR|2013-03-02T09:00:00" and answer["features_stale"] is False
    for model in catalog.models:
        folder = served.model(model.name).predictions_dir
        assert list((folder / ONLINE_FOLDER).glob("*/*.parquet")), model.name
        log = read_log(folder)
        assert log["request_id"].to_list() == [answers[model.name]["request_id"]]  # its own rows only
        row = log.row(0, named=True)
        assert row["model"] == model.name and row["entity_key"] == answers[model.name]["entity_key"]
        assert row["score"] == answers[model.name]["probability"] and row["carrier"] == "UA" and row["flight"] == 1545


def test_a_model_without_a_champion_answers_503_while_the_others_keep_answering(
    served: Settings, platform: BuiltPlatform
) -> None:
    catalog = models_with_champions(platform, served)
    registries = {m.name: Registry(served.model(m.name).registry_dir) for m in catalog.models}
    with running(served, catalog=catalog) as server:
        for cleared in catalog.models:
            registry = registries[cleared.name]
            champion = registry.alias(CHAMPION)
            assert champion is not None
            registry.set_alias(CHAMPION, None, "cleared", "test: a model without a champion")
            wait_for(server.client, lambda h, name=cleared.name: h["models"][name]["champion"] is None)

            status, body = server.client.post(FLIGHT, predict_path(cleared.name))
            assert status == 503 and cleared.name in body["detail"] and "make pipeline" in body["detail"], body
            # /models says the same (it said mode "champion", no problem)
            _, described = server.client.get(f"/models/{cleared.name}")
            assert described["mode"] is None and described["champion"] is None
            assert f"no champion model for {cleared.name}: " in described["problems"][0], described
            for other in catalog.models:
                if other.name != cleared.name:
                    status, body = server.client.post(FLIGHT, predict_path(other.name))
                    assert status == 200 and body["prediction"]["model"] == other.name, (other.name, body)
            status, health = server.client.get("/health")
            assert health["status"] == "degraded" and health["models"][cleared.name]["status"] == "unavailable"
            assert status == (503 if cleared.name == DELAY else 200)  # 200 while the default model is ready
            assert all(health["models"][m.name]["status"] == "ok" for m in catalog.models if m.name != cleared.name)

            registry.set_alias(CHAMPION, champion, "promoted", "test: the champion is back")
            wait_for(server.client, lambda h: h["status"] == "ok")
            assert server.client.post(FLIGHT, predict_path(cleared.name))[0] == 200
    logs = {name: read_log(served.model(name).predictions_dir) for name in registries}
    assert all(set(log["model"]) == {name} for name, log in logs.items())
    assert all(log.filter(pl.col("status") != "ok").height == 0 for log in logs.values())


def test_flight_cancellation_answers_a_real_march_flight_on_its_own_route(
    served: Settings, platform: BuiltPlatform
) -> None:
    model = CATALOG.model(CANCELLATION)
    # the fixture's real pipeline (every 20th flight) promoted its first version past the first-model gates
    assert platform.champions[CANCELLATION] == "v0001"
    with running(served) as server:
        status, body = server.client.post(FLIGHT, predict_path(CANCELLATION))
        batch_status, batch = server.client.post([FLIGHT, {**FLIGHT, "flight": 1}], predict_path(CANCELLATION))
        _, delayed = server.client.post(FLIGHT)
    assert status == 200 and batch_status == 200, (body, batch)
    answer = body["prediction"]
    assert answer["model"] == CANCELLATION and answer["model_version"] == "v0001" and answer["variant"] == "champion"
    assert 0.0 <= answer["probability"] <= 1.0 and answer["predicted"] == (answer["probability"] >= 0.5)
    assert answer["outcome"] == (model.positive if answer["predicted"] else f"not {model.positive}")
    assert answer["entity_key"] == "UA|1545|EWR|2013-03-02T09:00:00" and answer["features_stale"] is False
    assert answer["online_store"] == current_store(served, CANCELLATION)
    assert batch["predictions"][0]["probability"] == answer["probability"]
    assert delayed["prediction"]["model"] == DELAY and delayed["prediction"]["outcome"].endswith("delayed")

    log = read_log(served.model(CANCELLATION).predictions_dir)
    row = log.filter(pl.col("request_id") == answer["request_id"]).row(0, named=True)
    assert row["model"] == CANCELLATION and row["score"] == answer["probability"]
    # its own feature table's prediction time: 2 h before the 09:00 EST departure (14:00 UTC)
    assert str(row["prediction_time"]) == "2013-03-02 12:00:00"


def test_the_reload_line_names_every_alias_so_each_move_reads_as_one() -> None:
    """With A/B off, a challenger moving from v0002 to v0003 logged the same "champion v0001" line three times."""
    from mlops_assets.serving.models import ModelSet

    def described(challenger: str | None) -> str:
        return ModelSet(None, None, None, {"champion": None, "challenger": challenger}, 0.0).describe()

    assert described("v0002") == "champion none, challenger v0002 not serving"
    assert described("v0003") == "champion none, challenger v0003 not serving"
    assert described(None) == "champion none"
    # the challenger a promotion made champion is the champion: not "not serving"
    promoted = ModelSet(None, None, None, {"champion": "v0002", "challenger": "v0002"}, 0.0)
    assert promoted.describe() == "champion none"
