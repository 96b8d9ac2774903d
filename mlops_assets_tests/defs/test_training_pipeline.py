"""training_pipeline end to end on a real instance: a first champion, a kept champion, a refused tampered model."""

import json

import dagster as dg

from mlops_assets.core.flights import FLIGHTS, replay_months
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.deploy import build_champion_check
from mlops_assets.defs.partitions import range_tags, register_months
from mlops_assets.defs.resources import build_resources

MONTHS = ["2013-01", "2013-02"]


def _run(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    register_months(instance, MONTHS)
    job = build_definitions(FLIGHTS, settings).resolve_job_def("training_pipeline")
    return job.execute_in_process(instance=instance, tags=range_tags(MONTHS), raise_on_error=False)


def test_training_pipeline_promotes_a_first_champion_then_keeps_it(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = Registry(settings.registry_dir)
    with dg.instance_for_test() as instance:
        first = _run(settings, instance)
        assert first.success
        champion = registry.alias(CHAMPION)
        assert champion == "v0001"
        meta = registry.get(champion).metadata
        assert meta["metrics"]["valid"]["roc_auc"] > 0.6
        assert meta["training_set_hash"] and meta["feature_set_version"] and meta["dagster_run_id"] == first.run_id
        assert {"params", "code_version", "data", "encoder", "best_iteration"} <= set(meta)
        checks = {c.check_name: c.passed for c in first.get_asset_check_evaluations()}
        assert checks["champion_is_servable"]
        evaluation = instance.get_latest_materialization_event(dg.AssetKey(["reports", "evaluation"]))
        assert evaluation is not None and evaluation.asset_materialization is not None
        report = evaluation.asset_materialization.metadata["report"].value
        assert "data:image/png;base64," in str(report) and "| roc_auc |" in str(report)
        assert (settings.reports_dir / "evaluation" / champion / "roc.png").stat().st_size > 1000

        # the same data again: an identical challenger cannot beat the champion by the margin, so it stays
        second = _run(settings, instance)
        assert second.success
    assert registry.alias(CHAMPION) == "v0001" and registry.versions() == ["v0001", "v0002"]
    assert registry.model_text("v0001") == registry.model_text("v0002")  # deterministic training
    rejected = registry.events()[-1]
    assert rejected["event"] == "rejected" and "needs >= +0.002" in rejected["reason"]
    assert json.loads((settings.reports_dir / "evaluation" / "v0002" / "evaluation.json").read_text())["versions"] == {
        "challenger": "v0002", "champion": "v0001",
    }  # fmt: skip


def test_a_tampered_champion_fails_the_blocking_check(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = Registry(settings.registry_dir)
    with dg.instance_for_test() as instance:
        assert _run(settings, instance).success
        path = registry.get("v0001").model_path
        path.write_text(path.read_text().replace("num_leaves=", "num_leaves=9", 1))
    resources = build_resources(settings)
    evaluation = build_champion_check(FLIGHTS)(duckdb=resources["duckdb"], storage=resources["storage"])
    assert isinstance(evaluation, dg.AssetCheckResult)
    assert not evaluation.passed and "does not match its checksum" in (evaluation.description or "")


def test_promotion_refuses_an_evaluation_made_against_another_champion(settings: Settings) -> None:
    import pytest

    from mlops_assets.defs.deploy import PromotionConfig, build_champion_asset

    replay_months(settings.landing_dir, MONTHS, every=10)
    registry = Registry(settings.registry_dir)
    with dg.instance_for_test() as instance:
        assert _run(settings, instance).success  # v0001 champion
        assert _run(settings, instance).success  # v0002 evaluated against v0001, kept out
    registry.set_alias(CHAMPION, None, "cleared", "by hand, after the evaluation")
    storage = build_resources(settings)["storage"]
    with pytest.raises(dg.Failure, match="the champion changed since the evaluation"):
        build_champion_asset(FLIGHTS)(context=dg.build_asset_context(), config=PromotionConfig(), storage=storage)
