"""training_pipeline end to end on a real instance: every registered model trained by one run, each judged by its own
gates into its own registry; a kept champion; a refused tampered model; promotion decided on the registry's record."""

import shutil

import dagster as dg
import duckdb

from mlops_assets.catalog import CATALOG
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.deploy import build_champion_check
from mlops_assets.defs.partitions import range_tags, register_months
from mlops_assets.defs.resources import build_resources
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_DELAY

MONTHS = ["2013-01", "2013-02"]


def _run(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    register_months(instance, MONTHS)
    job = build_definitions(CATALOG, settings).resolve_job_def("training_pipeline")
    return job.execute_in_process(instance=instance, tags=range_tags(MONTHS), raise_on_error=False)


def _registry(settings: Settings, model: str) -> Registry:
    return Registry(settings.model(model).registry_dir)


def test_training_pipeline_promotes_a_first_champion_then_keeps_it(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = _registry(settings, "flight_delay")
    with dg.instance_for_test() as instance:
        first = _run(settings, instance)
        assert first.success
        champion = registry.alias(CHAMPION)
        assert champion == "v0001"
        meta = registry.get(champion).metadata
        assert meta["model"] == "flight_delay" and meta["metrics"]["valid"]["roc_auc"] > 0.6
        assert meta["training_set_hash"] and meta["feature_set_version"] and meta["dagster_run_id"] == first.run_id
        assert {"params", "code_version", "data", "encoder", "best_iteration"} <= set(meta)
        checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in first.get_asset_check_evaluations()}
        assert checks[("flight_delay/champion", "champion_is_servable")]
        evaluation = instance.get_latest_materialization_event(dg.AssetKey(["flight_delay", "evaluation"]))
        assert evaluation is not None and evaluation.asset_materialization is not None
        report = evaluation.asset_materialization.metadata["report"].value
        assert "data:image/png;base64," in str(report) and "| roc_auc |" in str(report)
        reports = settings.model("flight_delay").reports_dir
        assert (reports / "evaluation" / champion / "roc.png").stat().st_size > 1000

        # the same data again: an identical challenger cannot beat the champion by the margin, so it stays
        second = _run(settings, instance)
        assert second.success
    assert registry.alias(CHAMPION) == "v0001" and registry.versions() == ["v0001", "v0002"]
    assert registry.model_text("v0001") == registry.model_text("v0002")  # deterministic training
    rejected = registry.events()[-1]
    assert rejected["event"] == "rejected" and "needs >= +0.002" in rejected["reason"]
    # the decision's input lives in the registry, not in reports/ (which is for people and may be deleted)
    result = registry.evaluation("v0002")
    assert result is not None and (result.challenger_version, result.champion_version) == ("v0002", "v0001")
    shutil.rmtree(settings.reports_dir)
    assert registry.evaluation("v0002") == result


def test_one_run_trains_every_model_each_into_its_own_registry(settings: Settings) -> None:
    """One `training_pipeline` run: every registered model gets its own versions, evaluation and decision, judged by
    its own gates; no model's folder or table holds another's state."""
    replay_months(settings.landing_dir, MONTHS, every=10)
    with dg.instance_for_test() as instance:
        result = _run(settings, instance)
        assert result.success
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events() if e.asset_key}
        for model in CATALOG.models:
            assert {
                f"{model.name}/{a}" for a in ("training_set", "challenger", "evaluation", "champion", "online_store")
            } <= materialized
            run_tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
            assert "dagster/asset_partition_range_start" in run_tags
    for model in CATALOG.models:
        registry = _registry(settings, model.name)
        [version] = registry.versions()
        meta = registry.get(version).metadata
        assert meta["model"] == model.name and meta["feature_set_version"]
        evaluation = registry.evaluation(version)
        assert evaluation is not None and evaluation.model == model.name
        decision = [e for e in registry.events() if e["event"] in ("promoted", "rejected")]
        assert len(decision) == 1, f"{model.name}: one promotion decision, by its own gates"
        assert (settings.model(model.name).online_store_dir / "CURRENT").exists()
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        schemas = {
            row[0] for row in conn.execute("SELECT DISTINCT table_schema FROM information_schema.tables").fetchall()
        }
        for model in CATALOG.models:
            label = model.features.label
            columns = {r[0] for r in conn.execute(f"DESCRIBE {model.name}.training_set").fetchall()}
            assert label in columns and all(
                other.features.label not in columns for other in CATALOG.models if other.features.label != label
            )
    assert {m.name for m in CATALOG.models} <= schemas


def test_a_tampered_champion_fails_the_blocking_check(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = _registry(settings, "flight_delay")
    with dg.instance_for_test() as instance:
        assert _run(settings, instance).success
        path = registry.get("v0001").model_path
        path.write_text(path.read_text().replace("num_leaves=", "num_leaves=9", 1))
    resources = build_resources(settings)
    evaluation = build_champion_check(FLIGHT_DELAY)(duckdb=resources["duckdb"], storage=resources["storage"])
    assert isinstance(evaluation, dg.AssetCheckResult)
    assert not evaluation.passed and "does not match its checksum" in (evaluation.description or "")


def test_promotion_refuses_an_evaluation_made_against_another_champion(settings: Settings) -> None:
    import pytest

    from mlops_assets.defs.deploy import PromotionConfig, build_champion_asset

    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = _registry(settings, "flight_delay")
    with dg.instance_for_test() as instance:
        assert _run(settings, instance).success  # v0001 champion
        assert _run(settings, instance).success  # v0002 evaluated against v0001, kept out
    registry.set_alias(CHAMPION, None, "cleared", "by hand, after the evaluation")
    storage = build_resources(settings)["storage"]
    with pytest.raises(dg.Failure, match="the champion changed since the evaluation"):
        build_champion_asset(FLIGHT_DELAY)(context=dg.build_asset_context(), config=PromotionConfig(), storage=storage)
