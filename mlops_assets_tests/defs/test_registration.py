"""Registering a model is all it takes: a throwaway third model on its own tiny feed (``toy_model/``: a spec and its
SQL, nothing else) is wired beside the shipped ones by the catalog alone, trained, judged and promoted into its own
registry, without touching the flight models."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import ModelSpec
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.keys import keys_of, retraining_job_name, sensor_name
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.resources import build_resources
from mlops_assets.defs.run_tags import range_tags
from mlops_assets_tests.conftest import instance_for_test
from mlops_assets_tests.toy_model import MONTHS, TOY_FEATURES, TOY_FEED, TOY_MODEL


def _train_on_the_toy_feed(defs: dg.Definitions, model: ModelSpec) -> None:
    """The toy feed's landed months through ``model``'s whole lifecycle, in one run."""
    feed_keys = [dg.AssetKey([stage, t.name]) for t in TOY_FEED.tables for stage in ("raw", "validated")]
    selection = [*feed_keys, dg.AssetKey(["features", model.features.name]), *keys_of(model).lifecycle]
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, tags=range_tags(MONTHS), asset_selection=selection)
        assert result.success


def test_a_registered_model_is_wired_trained_and_promoted_on_its_own(settings: Settings) -> None:
    catalog = Catalog((*CATALOG.models, TOY_MODEL))  # the one registration line
    defs = build_definitions(catalog, settings)
    dg.Definitions.validate_loadable(defs)
    keys = keys_of(TOY_MODEL)
    graph = defs.resolve_asset_graph()
    assert {keys.champion, keys.drift, keys.live} <= set(graph.get_all_asset_keys())
    assert keys.online_store not in graph.get_all_asset_keys()  # no request schema: not served, no online store
    assert {dg.AssetKey(["raw", "readings"]), dg.AssetKey(["features", "reading_features"])} <= set(
        graph.get_all_asset_keys()
    )
    assert defs.resolve_job_def(retraining_job_name(TOY_MODEL)) is not None
    for what in ("drift", "performance", "rollback"):
        assert defs.resolve_sensor_def(sensor_name(TOY_MODEL, what)).job_name == retraining_job_name(TOY_MODEL)

    assert TOY_FEED.replay is not None
    TOY_FEED.replay(settings.landing_dir, MONTHS, 1, None)
    storage = build_resources(settings)["storage"]
    with instance_for_test() as instance:  # the landing sensor refreshes the new feed's months for its model
        tick = defs.resolve_sensor_def("landing_sensor")(
            dg.build_sensor_context(instance=instance, resources={"storage": storage})
        )
        assert isinstance(tick, dg.SensorResult)
        [first, *_] = [r for r in tick.run_requests or [] if r.tags.get("mlops/feed") == TOY_FEED.name]
        assert {dg.AssetKey(["raw", "readings"]), keys.drift, keys.live} <= set(first.asset_selection or [])
    _train_on_the_toy_feed(defs, TOY_MODEL)
    registry = Registry(settings.model(TOY_MODEL.name).registry_dir)
    assert registry.alias(CHAMPION) == "v0001"
    evaluation = registry.evaluation("v0001")
    assert evaluation is not None and evaluation.test_month == MONTHS[-1] and evaluation.roc_auc("challenger") > 0.7
    assert registry.get("v0001").metadata["params"]["num_leaves"] == 7  # the spec's own training parameters
    # nothing of the flight models was built or touched
    for model in CATALOG.models:
        assert not settings.model(model.name).registry_dir.exists()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        schemas = {r[0] for r in conn.execute("SELECT DISTINCT table_schema FROM information_schema.tables").fetchall()}
    assert TOY_MODEL.name in schemas and not {m.name for m in CATALOG.models} & schemas


def test_a_model_whose_feature_leaks_the_label_is_trained_but_never_promoted(
    settings: Settings, tmp_path: Path
) -> None:
    """The toy model with one more feature, the outcome itself under another name (what a join to a later table or a
    column filled after the fact does): it trains to a test AUC of ~1.0, and the gate refuses it as a leak, no
    champion, the reason in the registry's event log."""
    sql = TOY_FEATURES.sql_path.read_text().replace("    r.failed,\n", "    r.failed,\n    r.failed AS failed_flag,\n")
    assert "failed_flag" in sql
    (tmp_path / "features.sql").write_text(sql)
    features = replace(TOY_FEATURES, sql_path=tmp_path / "features.sql", numeric=(*TOY_FEATURES.numeric, "failed_flag"))
    leaky = replace(TOY_MODEL, features=features)
    defs = build_definitions(Catalog((leaky,)), settings)
    assert TOY_FEED.replay is not None
    TOY_FEED.replay(settings.landing_dir, MONTHS, 1, None)
    _train_on_the_toy_feed(defs, leaky)
    registry = Registry(settings.model(leaky.name).registry_dir)
    evaluation = registry.evaluation("v0001")
    assert evaluation is not None and evaluation.roc_auc("challenger") > 0.99
    assert registry.alias(CHAMPION) is None
    [rejected] = [e for e in registry.events() if e.get("event") == "rejected"]
    assert "too good to believe" in rejected["reason"] and "leaks the label" in rejected["reason"], rejected
