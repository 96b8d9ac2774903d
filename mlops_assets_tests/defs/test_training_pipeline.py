"""training_pipeline end to end on a real instance: every registered model trained by one run, each judged by its own
gates into its own registry; a kept champion; a refused tampered model; promotion decided on the registry's record.

The two runs are made once for the module (``trained``): the first trains every model, the second, on the same data,
an identical challenger. Each test reads them, or writes in its own copy of the data directory as it was after the
first or the second run."""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import duckdb
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings, load_settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.deploy import build_champion_check
from mlops_assets.defs.keys import keys_of
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.resources import build_resources
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_DELAY
from mlops_assets_tests.conftest import instance_for_test

MONTHS = ["2013-01", "2013-02"]


def _run(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    register_months(instance, MONTHS)
    job = build_definitions(CATALOG, settings).resolve_job_def("training_pipeline")
    return job.execute_in_process(instance=instance, tags=range_tags(MONTHS), raise_on_error=False)


def _registry(settings: Settings, model: str) -> Registry:
    return Registry(settings.model(model).registry_dir)


@dataclass(frozen=True)
class Trained:
    """The module's two runs on one instance, and the data directory as each of them left it (read only)."""

    instance: dg.DagsterInstance
    first: dg.ExecuteInProcessResult
    #: flight_delay's latest evaluation materialization right after the first run
    first_evaluation: dg.EventLogEntry | None
    #: the champion right after the first run (read then: the second run may not move it)
    first_champion: str | None
    after_first: Settings
    second: dg.ExecuteInProcessResult
    after_second: Settings

    def copy(self, of: Settings, to: Settings) -> Settings:
        """A copy of ``of``'s data directory in ``to``'s (a test's own, to write in)."""
        shutil.copytree(of.data_dir, to.data_dir)
        return to


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    data_dir = tmp_path_factory.mktemp("trained") / "data"
    settings = load_settings(data_dir)
    replay_months(settings.landing_dir, MONTHS, every=10)
    after_first = load_settings(data_dir.parent / "after_first")
    with pytest.MonkeyPatch.context() as patch, instance_for_test() as instance:
        patch.setenv("MLOPS_DATA_DIR", str(data_dir))  # module scope: before the per-test isolation applies
        first = _run(settings, instance)
        evaluation = instance.get_latest_materialization_event(dg.AssetKey(["flight_delay", "evaluation"]))
        champion = _registry(settings, "flight_delay").alias(CHAMPION)
        shutil.copytree(data_dir, after_first.data_dir)
        # the same data again: an identical challenger
        second = _run(settings, instance)
        patch.undo()
        yield Trained(instance, first, evaluation, champion, after_first, second, settings)


def test_training_pipeline_promotes_a_first_champion_then_keeps_it(trained: Trained, settings: Settings) -> None:
    first = trained.first
    assert first.success
    champion = trained.first_champion
    assert champion == "v0001"
    registry = _registry(trained.after_first, "flight_delay")
    meta = registry.get(champion).metadata
    assert meta["model"] == "flight_delay" and meta["metrics"]["valid"]["roc_auc"] > 0.6
    assert meta["training_set_hash"] and meta["feature_set_version"] and meta["dagster_run_id"] == first.run_id
    # the model's record names the very training set the run materialized: its data version is the same hash
    (training_set,) = [
        event.step_materialization_data.materialization
        for event in first.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(["flight_delay", "training_set"])
    ]
    assert training_set.tags is not None and training_set.tags["dagster/data_version"] == meta["training_set_hash"]
    assert {"params", "code_version", "data", "encoder", "best_iteration"} <= set(meta)
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in first.get_asset_check_evaluations()}
    assert checks[("flight_delay/champion", "champion_is_servable")]
    evaluation = trained.first_evaluation
    assert evaluation is not None and evaluation.asset_materialization is not None
    assert evaluation.run_id == first.run_id
    report = evaluation.asset_materialization.metadata["report"].value
    assert "data:image/png;base64," in str(report) and "| roc_auc |" in str(report)
    assert "(held out from the model; no champion yet)" in str(report)  # one model judged, not "both"
    reports = trained.after_first.model("flight_delay").reports_dir
    assert (reports / "evaluation" / champion / "roc.png").stat().st_size > 1000

    # the same data again: an identical challenger cannot beat the champion by the margin, so it stays
    assert trained.second.success
    settings = trained.copy(trained.after_second, settings)  # this test deletes the reports
    registry = _registry(settings, "flight_delay")
    assert registry.alias(CHAMPION) == "v0001" and registry.versions() == ["v0001", "v0002"]
    assert registry.model_text("v0001") == registry.model_text("v0002")  # deterministic training
    rejected = registry.events()[-1]
    assert rejected["event"] == "rejected" and "needs >= +0.002) [FAILED]" in rejected["reason"]
    # the same decision taken again (a crashed run's retry beside the automation's run) is not logged twice
    job = build_definitions(CATALOG, settings).resolve_job_def("flight_delay_retraining")
    with instance_for_test() as instance:
        assert job.execute_in_process(instance=instance, asset_selection=[keys_of(FLIGHT_DELAY).champion]).success
    assert [e["event"] for e in registry.events()].count("rejected") == 1
    second_report = (settings.model("flight_delay").reports_dir / "evaluation" / "v0002" / "report.md").read_text()
    assert "(held out from both models)" in second_report
    # the champion asset's data version is the version serving: kept, it leaves what it scored up to date in the UI
    versions = [
        event.step_materialization_data.materialization.tags["dagster/data_version"]  # type: ignore[index]
        for run in (trained.first, trained.second)
        for event in run.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(["flight_delay", "champion"])
    ]
    assert versions == ["v0001", "v0001"]
    # the decision's input lives in the registry, not in reports/ (which is for people and may be deleted)
    result = registry.evaluation("v0002")
    assert result is not None and (result.challenger_version, result.champion_version) == ("v0002", "v0001")
    shutil.rmtree(settings.reports_dir)
    assert registry.evaluation("v0002") == result


def test_one_run_trains_every_model_each_into_its_own_registry(trained: Trained) -> None:
    """One `training_pipeline` run: every registered model gets its own versions, evaluation and decision, judged by
    its own gates; no model's folder or table holds another's state."""
    settings, result = trained.after_first, trained.first
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events() if e.asset_key}
    for model in CATALOG.models:
        assert {
            f"{model.name}/{a}" for a in ("training_set", "challenger", "evaluation", "champion", "online_store")
        } <= materialized
        run_tags = trained.instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
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
        if decision[0]["event"] == "promoted":  # with the evaluation it passed on (the AUC it must hold live)
            promoted_on = (decision[0]["roc_auc"], decision[0]["test_month"])
            assert promoted_on == (evaluation.metrics["challenger"]["roc_auc"], evaluation.test_month)
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


def test_a_tampered_champion_fails_the_blocking_check(trained: Trained, settings: Settings) -> None:
    assert trained.first.success
    settings = trained.copy(trained.after_first, settings)
    registry = _registry(settings, "flight_delay")
    path = registry.get("v0001").model_path
    assert path.is_relative_to(settings.data_dir)  # the copy's, not the module's
    sound_text = path.read_text()
    path.write_text(sound_text.replace("num_leaves=", "num_leaves=9", 1))
    resources = build_resources(settings)
    evaluation = build_champion_check(FLIGHT_DELAY)(duckdb=resources["duckdb"], storage=resources["storage"])
    assert isinstance(evaluation, dg.AssetCheckResult)
    assert not evaluation.passed and "does not match its checksum" in (evaluation.description or "")
    # a challenger cannot be judged against it: the evaluation says to roll back first, not to retrain (which fails
    # the same way), and records nothing
    from mlops_assets.defs.evaluate import build_evaluation_asset

    registry.register(sound_text + "\n", registry.get("v0001").metadata, {}, run_id=None)
    registry.set_alias("challenger", "v0002", "challenger", "test: a new challenger")
    with pytest.raises(dg.Failure, match=r"champion v0001: .*checksum.*: roll back first \(`mlops rollback --model"):
        asset = build_evaluation_asset(FLIGHT_DELAY)
        asset(context=dg.build_asset_context(), duckdb=resources["duckdb"], storage=resources["storage"])
    assert registry.evaluation("v0002") is None


def test_promotion_refuses_an_evaluation_made_against_another_champion(trained: Trained, settings: Settings) -> None:
    from mlops_assets.defs.deploy import PromotionConfig, build_champion_asset

    assert trained.first.success  # v0001 champion
    assert trained.second.success  # v0002 evaluated against v0001, kept out
    settings = trained.copy(trained.after_second, settings)
    registry = _registry(settings, "flight_delay")
    registry.set_alias(CHAMPION, None, "cleared", "by hand, after the evaluation")
    storage = build_resources(settings)["storage"]
    with pytest.raises(dg.Failure, match="the champion changed since the evaluation"):
        build_champion_asset(FLIGHT_DELAY)(context=dg.build_asset_context(), config=PromotionConfig(), storage=storage)


def test_a_champion_is_never_judged_on_rows_it_learnt_from(trained: Trained, settings: Settings) -> None:
    """A champion trained on newer data than the test month (a rerun over an older range, a month rebuilt) would be
    compared on rows it learnt from: the evaluation refuses and says what to do."""
    import json

    from mlops_assets.defs.evaluate import build_evaluation_asset

    assert trained.second.success  # v0001 champion, v0002 the challenger (both tested on February)
    settings = trained.copy(trained.after_second, settings)
    registry = _registry(settings, "flight_delay")
    # the champion's record as if it had learnt from February (its model file, checksummed, is untouched)
    metadata_path = registry.get("v0001").path / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["data"]["valid_to"] = "2013-02-10 12:00:00"
    metadata_path.write_text(json.dumps(metadata))
    resources = build_resources(settings)
    asset = build_evaluation_asset(FLIGHT_DELAY)
    with pytest.raises(dg.Failure, match=r"champion v0001 learnt from rows up to 2013-02-10 12:00:00, inside the test"):
        asset(context=dg.build_asset_context(), duckdb=resources["duckdb"], storage=resources["storage"])
    # the champion evaluated again as the challenger (the alias names it): its own record is not overwritten by a
    # judgement on rows it learnt from
    registry.set_alias("challenger", "v0001", "challenger", "test: the champion evaluated again")
    before = registry.evaluation("v0001")
    with pytest.raises(dg.Failure, match=r"challenger v0001 learnt from rows up to 2013-02-10 12:00:00"):
        asset(context=dg.build_asset_context(), duckdb=resources["duckdb"], storage=resources["storage"])
    assert registry.evaluation("v0001") == before


def test_a_month_the_champion_learnt_from_is_not_judged_for_drift(trained: Trained, settings: Settings) -> None:
    """With the daemon running, automation monitors the months `make pipeline` trained on. Nobody scores them (the
    champion learnt from them), yet each was compared with the champion's own training rows: January "7/27 features
    drifted" in `mlops status`, under "drift against the champion that scored it". Now they are not compared; the
    test month, which the champion scored, is."""
    from mlops_assets.core.records import DriftSummary
    from mlops_assets.defs.monitor import build_monitoring, latest_month_record

    settings = trained.copy(trained.after_first, settings)
    resources = build_resources(settings)
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        for month in MONTHS:
            assets = build_monitoring(FLIGHT_DELAY)
            assert dg.materialize(assets, partition_key=month, instance=instance, resources=resources).success
        january, february = (
            latest_month_record(instance, keys_of(FLIGHT_DELAY).drift, DriftSummary, month) for month in MONTHS
        )
    assert january is not None and february is not None
    # a run of one month gives Dagster its row count; the range run of `make pipeline` gave each month the total
    one_month = trained.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["features", "flight_features"]), asset_partitions=["2013-01"]),
        limit=1,
    ).records[0]
    ranged = one_month.asset_materialization
    assert ranged is not None and "dagster/row_count" not in ranged.metadata and "rows_in_run" in ranged.metadata
    assert january.champion_version is None and january.reason == "v0001 trained on 2013-01: nothing compared"
    assert february.champion_version == "v0001" and february.drift_share is not None
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        compared = conn.execute("SELECT DISTINCT _month FROM flight_delay.drift_report").fetchall()
    assert compared == [("2013-02",)]


def test_a_champion_trained_on_another_feature_set_is_replaced_not_compared(
    trained: Trained, settings: Settings
) -> None:
    """The feature SQL changed since the champion was trained: it cannot score today's rows (a column gone), and
    every evaluation failed on the missing column until a rollback by hand. Now the challenger is judged against the
    base rate, and promoted over it."""
    import json

    from mlops_assets.defs.deploy import build_champion_asset
    from mlops_assets.defs.evaluate import build_evaluation_asset

    assert trained.second.success  # v0001 champion, v0002 the challenger
    settings = trained.copy(trained.after_second, settings)
    registry = _registry(settings, "flight_delay")
    metadata_path = registry.get("v0001").path / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["feature_set_version"] = "features-before-the-sql-changed"  # its record, not its checksummed model
    metadata_path.write_text(json.dumps(metadata))
    assets = [build_evaluation_asset(FLIGHT_DELAY), build_champion_asset(FLIGHT_DELAY)]
    with instance_for_test() as instance:
        result = dg.materialize(assets, instance=instance, resources=build_resources(settings))
        said = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    evaluated = registry.evaluation("v0002")
    assert evaluated is not None and evaluated.champion_version is None  # judged against the base rate
    assert registry.alias(CHAMPION) == "v0002"
    assert any(
        "champion v0001 is not compared: v0001 was trained on feature set features-before-the-sql-changed" in m
        for m in said
    )
