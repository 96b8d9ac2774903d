"""The feedback loop's decisions on a real Dagster instance: the drift and performance sensors (run requests, cursors,
no duplicates), the automation conditions (``evaluate_automation_conditions``) and the one-writer guarantee."""

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import lightgbm as lgb
import numpy as np
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.landing import shift_month
from mlops_assets.core.records import DriftSummary, LiveSummary, RecordError, VariantLive
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import REPO_ROOT, Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.deploy import build_champion_asset
from mlops_assets.defs.evaluate import build_evaluation_asset
from mlops_assets.defs.features import build_freshness_check
from mlops_assets.defs.keys import MODEL_TAG, features_key, keys_of, retraining_job_name
from mlops_assets.defs.partitions import DUCKDB_POOL, MONTHS
from mlops_assets.defs.resources import MonitoringPolicy, PlatformStorage, build_resources
from mlops_assets.defs.sensors import (
    CHAMPION_TAG,
    MONTH_TAG,
    TRIGGER_TAG,
    build_drift_sensor,
    build_performance_sensor,
    retrain_tags,
)
from mlops_assets.defs.train import build_challenger_asset, build_training_set_asset
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets.models.flight_delay import FLIGHT_DELAY
from mlops_assets.ticks import evaluate_automation_conditions
from mlops_assets_tests.conftest import instance_for_test

MODEL = FLIGHT_DELAY
KEYS = keys_of(MODEL)
RETRAIN_JOB = retraining_job_name(MODEL)
FEATURES = features_key(MODEL.features)
PREDICTIONS_KEY, DRIFT_KEY, LIVE_KEY = KEYS.predictions, KEYS.drift, KEYS.live
TRAINING_SET_KEY, CHALLENGER_KEY, CHAMPION_KEY = KEYS.training_set, KEYS.challenger, KEYS.champion


def _register(registry: Registry) -> str:
    """A real (tiny) LightGBM model registered as a version; the sensors only read which version is champion."""
    rng = np.random.default_rng(0)
    booster = lgb.train(
        {"verbosity": -1, "num_threads": 1}, lgb.Dataset(rng.random((60, 2)), label=rng.integers(0, 2, 60)), 2
    )
    return registry.register(booster.model_to_string(), {"data": {"test_month": "2013-03"}}, {}, run_id=None).version


def _champion_of(settings: Settings, model: str) -> str:
    registry = Registry(settings.model(model).registry_dir)
    version = _register(registry)
    registry.set_alias(CHAMPION, version, "promoted", "test")
    return version


@pytest.fixture
def champion(settings: Settings) -> str:
    return _champion_of(settings, MODEL.name)


def _drift(month: str, champion: str, drifted: bool, reason: str) -> DriftSummary:
    return DriftSummary(
        month=month,
        champion_version=champion,
        drifted=drifted,
        drift_share=0.33 if drifted else 0.0,
        drifted_features=("temp",) if drifted else (),
        top_drifted="temp (0.31)",
        score_drift=0.05,
        label_rate=0.2,
        reason=reason,
    )


def _live(month: str, champion: str, auc: float, evaluated: float) -> LiveSummary:
    variant = VariantLive(
        version=champion,
        rows=5000,
        requests=5000,
        live_roc_auc=auc,
        live_log_loss=0.5,
        score_std=0.14,
        share_above_0_99=0.0,
        share_below_0_01=0.02,
        error_rate=0.0,
        evaluation_roc_auc=evaluated,
        auc_drop=round(evaluated - auc, 4),
    )
    return LiveSummary(month=month, rows=5000, batch={"champion": variant}, online={})


def _report(instance: dg.DagsterInstance, key: dg.AssetKey, record: DriftSummary | LiveSummary) -> None:
    """A materialization of a monitoring asset for the record's month with its record, as the asset writes it; the
    month before has its features (a retrain's training set needs them: without, the sensors wait)."""
    before = shift_month(record.month, -1)
    if before not in instance.get_materialized_partitions(FEATURES):
        _features_built(instance, before, None)
    _store(instance, key, record.month, record.to_json())


def _store(instance: dg.DagsterInstance, key: dg.AssetKey, month: str, stored: dict[str, object]) -> None:
    if month not in instance.get_dynamic_partitions(MONTHS.name):
        instance.add_dynamic_partitions(MONTHS.name, [month])
    metadata = {"by_month": dg.MetadataValue.json({month: stored})}
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=month, metadata=metadata))


def _tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    settings: Settings,
    cursor: str | None,
    policy: MonitoringPolicy | None = None,
) -> dg.SensorResult:
    resources = {"storage": PlatformStorage(data_dir=str(settings.data_dir)), "policy": policy or MonitoringPolicy()}
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    assert isinstance(result, dg.SensorResult)
    return result


def test_drift_sensor_requests_one_retrain_per_drift_event(settings: Settings, champion: str) -> None:
    sensor = build_drift_sensor(MODEL)
    with instance_for_test() as instance:
        _report(instance, DRIFT_KEY, _drift("2013-04", champion, True, "9/27 features drifted"))
        first = _tick(sensor, instance, settings, None)
        [request] = first.run_requests or []
        assert request.run_key == f"drift:flight_delay:2013-04:{champion}"
        assert (
            request.tags[TRIGGER_TAG] == "drift"
            and request.tags[MONTH_TAG] == "2013-04"
            and request.tags[CHAMPION_TAG] == champion
        )
        assert request.tags[MODEL_TAG] == "flight_delay"
        assert "9/27 features drifted" in request.tags["mlops/reason"]

        # the cursor moved past the event: the next tick asks for nothing
        assert not _tick(sensor, instance, settings, first.cursor).run_requests

        # the same month drifting again for the same champion: its retrain run exists, so no second request
        instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=request.tags))
        _report(instance, DRIFT_KEY, _drift("2013-04", champion, True, "again"))
        again = _tick(sensor, instance, settings, first.cursor)
        assert not again.run_requests and again.cursor != first.cursor


def test_a_drifted_month_whose_month_before_has_no_features_waits_rather_than_fail_a_retrain(
    settings: Settings, champion: str
) -> None:
    """June landed before May and drifted: its retrain would fail at the training set (no validation weeks before
    June) and use up June's run key, so that June's record, recorded again once May's run rebuilt it, asked for
    nothing. The sensor waits, says why, and asks once May is built."""
    sensor = build_drift_sensor(MODEL)
    with instance_for_test() as instance:
        june = _drift("2013-06", champion, True, "9/27 features drifted")
        _store(instance, DRIFT_KEY, june.month, june.to_json())  # May never built
        waiting = _tick(sensor, instance, settings, None)
        assert not waiting.run_requests
        assert waiting.skip_reason is not None
        assert "2013-05, the month before it, has no features yet: waiting" in str(waiting.skip_reason.skip_message)
        _features_built(instance, "2013-05", True)  # May lands; its run rebuilds June and records it again
        _store(instance, DRIFT_KEY, june.month, june.to_json())
        [request] = _tick(sensor, instance, settings, waiting.cursor).run_requests or []
        assert request.run_key == f"drift:flight_delay:2013-06:{champion}"


def test_drift_sensor_ignores_stable_months_and_stale_champions(settings: Settings, champion: str) -> None:
    sensor = build_drift_sensor(MODEL)
    with instance_for_test() as instance:
        _report(instance, DRIFT_KEY, _drift("2013-04", champion, False, "no drift"))
        _report(instance, DRIFT_KEY, _drift("2013-05", "v0999", True, "drift vs an old champion"))
        # two reports of one drifted month in one tick: one request
        _report(instance, DRIFT_KEY, _drift("2013-06", champion, True, "drift"))
        _report(instance, DRIFT_KEY, _drift("2013-06", champion, True, "drift"))
        result = _tick(sensor, instance, settings, None)
        assert [r.run_key for r in result.run_requests or []] == [f"drift:flight_delay:2013-06:{champion}"]


def test_a_month_the_champion_saw_asks_no_retrain(settings: Settings, champion: str) -> None:
    """March re-landed (a correction) drifts against a champion tested on March: a retrain would train on nothing
    newer than the champion did (it was kept at the same AUC), so nothing is asked, and the tick says why."""
    sensor = build_drift_sensor(MODEL)
    with instance_for_test() as instance:
        _report(instance, DRIFT_KEY, _drift("2013-03", champion, True, "March corrected"))
        result = _tick(sensor, instance, settings, None)
        assert not result.run_requests
        assert result.skip_reason and "trained and tested on months through 2013-03" in result.skip_reason.skip_message


def test_a_retrain_covers_the_months_before_it_and_a_waiting_one_covers_all(settings: Settings, champion: str) -> None:
    """A retraining run trains on the newest months there are: months drifting together ask for one retrain (the
    newest), a month an earlier retrain covered asks nothing, and while a retrain waits to start nothing more is
    asked (with a retrain per month, a replay filled the queue with retrains of the same window)."""
    sensor = build_drift_sensor(MODEL)
    with instance_for_test() as instance:
        for month in ("2013-04", "2013-05", "2013-06"):
            _report(instance, DRIFT_KEY, _drift(month, champion, True, f"{month} drifted"))
        first = _tick(sensor, instance, settings, None)
        [request] = first.run_requests or []
        assert request.tags[MONTH_TAG] == "2013-06" and "2013-06 drifted" in request.tags["mlops/reason"]
        done = dg.DagsterRunStatus.SUCCESS
        instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=request.tags, status=done))

        _report(instance, DRIFT_KEY, _drift("2013-05", champion, True, "a late report of a covered month"))
        covered = _tick(sensor, instance, settings, first.cursor)
        assert not covered.run_requests

        _report(instance, DRIFT_KEY, _drift("2013-07", champion, True, "2013-07 drifted"))
        later = _tick(sensor, instance, settings, covered.cursor)
        [again] = later.run_requests or []
        assert again.tags[MONTH_TAG] == "2013-07"
        instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=again.tags))  # not started yet

        _report(instance, DRIFT_KEY, _drift("2013-08", champion, True, "2013-08 drifted"))
        waited = _tick(sensor, instance, settings, later.cursor)
        assert not waited.run_requests  # the waiting one will read it

        # that one failed, its automatic retry still to come: it will train, so July's live AUC falling asks nothing
        [waiting] = instance.get_runs(dg.RunsFilter(job_name=RETRAIN_JOB, statuses=[dg.DagsterRunStatus.NOT_STARTED]))
        instance.report_run_failed(waiting)
        instance.add_run_tags(waiting.run_id, {"dagster/will_retry": "true"})
        _report(instance, LIVE_KEY, _live("2013-07", champion, auc=0.60, evaluated=0.72))
        performance = _tick(build_performance_sensor(MODEL), instance, settings, None)
        assert not performance.run_requests
        # its retries spent (no retry coming): it trained nothing, so the next look asks again
        instance.add_run_tags(waiting.run_id, {"dagster/will_retry": "false"})
        _report(instance, LIVE_KEY, _live("2013-07", champion, auc=0.59, evaluated=0.72))
        [retried] = _tick(build_performance_sensor(MODEL), instance, settings, None).run_requests or []
        assert retried.tags[MONTH_TAG] == "2013-07" and retried.tags[TRIGGER_TAG] == "performance"


def test_a_drift_event_of_one_model_never_retrains_another(settings: Settings) -> None:
    """Each model's drift sensor reads only its own drift records and asks only for its own retraining job."""
    champions = {m.name: _champion_of(settings, m.name) for m in CATALOG.models}
    assert len(champions) >= 2
    drifting, *others = CATALOG.models
    with instance_for_test() as instance:
        _report(instance, keys_of(drifting).drift, _drift("2013-04", champions[drifting.name], True, "heat wave"))
        [request] = _tick(build_drift_sensor(drifting), instance, settings, None).run_requests or []
        assert request.tags[MODEL_TAG] == drifting.name
        assert build_drift_sensor(drifting).job_name == retraining_job_name(drifting)
        for other in others:
            sensor = build_drift_sensor(other)
            assert sensor.job_name == retraining_job_name(other) != retraining_job_name(drifting)
            assert not _tick(sensor, instance, settings, None).run_requests  # the other model's events are not its own


def test_a_renamed_field_in_a_stored_record_stops_the_sensor_loudly(settings: Settings, champion: str) -> None:
    """A record whose field was renamed must not read as 'no drift' (which would switch the rule off in silence)."""
    stored = _drift("2013-04", champion, True, "drift").to_json()
    stored["is_drifted"] = stored.pop("drifted")
    with instance_for_test() as instance:
        _store(instance, DRIFT_KEY, "2013-04", stored)
        with pytest.raises(RecordError, match="drifted"):
            _tick(build_drift_sensor(MODEL), instance, settings, None)


def test_performance_sensor_retrains_when_live_auc_falls_beyond_the_margin(settings: Settings, champion: str) -> None:
    sensor = build_performance_sensor(MODEL)
    with instance_for_test() as instance:
        _report(instance, LIVE_KEY, _live("2013-04", champion, 0.70, 0.75))
        _report(instance, LIVE_KEY, _live("2013-05", champion, 0.74, 0.75))
        result = _tick(sensor, instance, settings, None)
        [request] = result.run_requests or []
        assert (
            request.run_key == f"performance:flight_delay:2013-04:{champion}"
            and "0.0500 below" in request.tags["mlops/reason"]
        )
        # the margin is configurable
        assert not _tick(sensor, instance, settings, None, MonitoringPolicy(retrain_auc_margin=0.1)).run_requests
        # a month the drift sensor already sent to retraining is not retrained twice
        tags = {MONTH_TAG: "2013-04", CHAMPION_TAG: champion, TRIGGER_TAG: "drift", MODEL_TAG: MODEL.name}
        instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=tags))
        assert not _tick(sensor, instance, settings, None).run_requests


def _requested(result: object, key: dg.AssetKey) -> set[str | None]:
    return set(result.get_requested_partitions(key))  # type: ignore[attr-defined]


def _features_built(instance: dg.DagsterInstance, month: str, check_passed: bool | None) -> None:
    """A materialization of the month's features and, unless None, the result of its blocking check."""
    if month not in instance.get_dynamic_partitions(MONTHS.name):
        instance.add_dynamic_partitions(MONTHS.name, [month])
    instance.report_runless_asset_event(dg.AssetMaterialization(FEATURES, partition=month))
    if check_passed is not None:
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(FEATURES, "one_row_per_entity", passed=check_passed, blocking=True, partition=month)
        )


def test_monitoring_runs_after_a_month_of_features_and_only_then(settings: Settings) -> None:
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MONTHS.name, ["2013-04", "2013-05"])
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert start.total_requested == 0  # nothing built yet: nothing to run

        _features_built(instance, "2013-04", check_passed=True)
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        for key in (PREDICTIONS_KEY, DRIFT_KEY, LIVE_KEY):
            assert _requested(after, key) == {"2013-04"}, key
        for key in (TRAINING_SET_KEY, CHALLENGER_KEY, CHAMPION_KEY):
            assert not _requested(after, key)  # new data alone never retrains: the sensors decide that

        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
        assert settled.total_requested == 0  # requested once, not again every tick

        # Dagster judges the latest result of the features' blocking check: the next month failed it, so nothing
        # downstream uses that month
        _features_built(instance, "2013-05", check_passed=False)
        failed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert failed.total_requested == 0


def test_a_month_never_built_does_not_stop_the_online_store_refreshing(settings: Settings) -> None:
    """May's batch was rejected, so its features were never built; June's are built later (a backfill, a re-run):
    the online store (one export of the newest month) is refreshed all the same. Eager's "no dependency missing"
    held it back for good, since every month is a partition of the features."""
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MONTHS.name, ["2013-04", "2013-05", "2013-06"])
        _features_built(instance, "2013-04", check_passed=True)
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(dg.AssetMaterialization(KEYS.online_store))  # April's landing run
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        assert not _requested(settled, KEYS.online_store)
        _features_built(instance, "2013-06", check_passed=True)
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert _requested(after, KEYS.online_store) == {None}


def test_a_rollback_and_a_retrain_sensor_ask_for_one_retrain_in_either_order(settings: Settings) -> None:
    """The daemon judges the sensors in no fixed order. April's drift asked for a retrain first: the rollback still
    moves the alias but asks for none. The other way round, the rollback's retrain waits (asked against the version
    it took out); May, scored by the restored version, drifts: the waiting retrain covers it."""
    from mlops_assets.defs.sensors import build_rollback_sensor

    registry = Registry(settings.model(MODEL.name).registry_dir)
    good, bad = _register(registry), _register(registry)
    registry.set_alias(CHAMPION, good, "promoted", "gates passed", roc_auc=0.72, test_month="2013-03")
    registry.set_alias(CHAMPION, bad, "forced", "by hand")
    queued, started = dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED
    for drift_first, drift_run in ((True, queued), (True, started), (False, None)):
        registry.set_alias(CHAMPION, bad, "forced", "by hand again")
        with instance_for_test() as instance:
            _report(instance, LIVE_KEY, _live("2013-04", bad, auc=0.50, evaluated=0.72))
            asked = []
            if drift_first:
                _report(instance, DRIFT_KEY, _drift("2013-04", bad, True, "9/27 features drifted"))
                asked += _tick(build_drift_sensor(MODEL), instance, settings, None).run_requests or []
                for request in asked:  # queued (as the daemon does with a request), or already training
                    instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=request.tags, status=drift_run))
            rolled = _tick(build_rollback_sensor(MODEL), instance, settings, None)
            assert registry.alias(CHAMPION) == good  # the alias moves either way
            asked += rolled.run_requests or []
            for request in rolled.run_requests or []:
                instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=request.tags))
            if not drift_first:
                _report(instance, DRIFT_KEY, _drift("2013-05", good, True, "May drifted"))
                asked += _tick(build_drift_sensor(MODEL), instance, settings, None).run_requests or []
            # a retrain already training was judged against the version taken out: the rollback asks its own
            assert len(asked) == (2 if drift_run == started else 1), [r.run_key for r in asked]


def test_a_rollback_with_nowhere_to_go_is_said_once_per_month(settings: Settings) -> None:
    """The only gated champion loses its live AUC: there is no version to go back to. The registry, Dagster and the
    retraining job hear it once for April, however often April's live record is materialized again; May's decline
    is news again."""
    from mlops_assets.defs.sensors import build_rollback_sensor

    registry = Registry(settings.model(MODEL.name).registry_dir)
    only = _register(registry)
    registry.set_alias(CHAMPION, only, "promoted", "gates passed", roc_auc=0.72, test_month="2013-03")
    with instance_for_test() as instance:
        cursor, said = None, []
        for month in ("2013-04", "2013-04", "2013-05"):
            _report(instance, LIVE_KEY, _live(month, only, auc=0.50, evaluated=0.72))
            result = _tick(build_rollback_sensor(MODEL), instance, settings, cursor)
            cursor = result.cursor
            said.append((len(result.asset_events), len(result.run_requests or [])))
    assert registry.alias(CHAMPION) == only
    impossible = [e for e in registry.events() if e["event"] == "rollback_impossible"]
    assert [e["month"] for e in impossible] == ["2013-04", "2013-05"]
    assert "no gated champion left" in impossible[0]["reason"]
    assert said == [(1, 1), (0, 0), (1, 1)]


def test_a_new_champion_does_not_rescore_old_months(settings: Settings) -> None:
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MONTHS.name, ["2013-04"])
        _features_built(instance, "2013-04", check_passed=True)
        for key in (PREDICTIONS_KEY, DRIFT_KEY, LIVE_KEY):
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="2013-04"))
        start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        instance.report_runless_asset_event(dg.AssetMaterialization(CHAMPION_KEY))
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
        assert not _requested(after, PREDICTIONS_KEY)  # scores of a month a new champion may have trained on: never


def _lifecycle(settings: Settings, code_version: str) -> dg.Definitions:
    """The lifecycle assets alone, with a chosen training code version."""
    assets = [
        build_training_set_asset(MODEL),
        build_challenger_asset(MODEL, code_version),
        build_evaluation_asset(MODEL),
        build_champion_asset(MODEL),
    ]
    return dg.Definitions(assets=assets, resources=build_resources(settings))


def test_a_new_training_code_version_retrains_and_re_evaluates(settings: Settings) -> None:
    with instance_for_test() as instance:
        for key in (TRAINING_SET_KEY, CHALLENGER_KEY):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        before = dg.evaluate_automation_conditions(defs=_lifecycle(settings, "training-a"), instance=instance)
        unchanged = dg.evaluate_automation_conditions(
            defs=_lifecycle(settings, "training-a"), instance=instance, cursor=before.cursor
        )
        assert not _requested(unchanged, CHALLENGER_KEY)
        changed = dg.evaluate_automation_conditions(
            defs=_lifecycle(settings, "training-b"), instance=instance, cursor=unchanged.cursor
        )
        assert _requested(changed, CHALLENGER_KEY) == {None}
        # the rest of the chain follows in the same tick, and the training set is not rebuilt for it
        assert _requested(changed, KEYS.evaluation) == {None} and _requested(changed, CHAMPION_KEY) == {None}
        assert not _requested(changed, TRAINING_SET_KEY)


def test_the_champion_must_be_re_evaluated_every_30_days(settings: Settings) -> None:
    defs = build_definitions(CATALOG, settings)
    spec = defs.resolve_asset_graph().get(CHAMPION_KEY)
    policy = spec.freshness_policy
    assert policy is not None
    assert policy.fail_window.to_timedelta().days == 30 and policy.warn_window.to_timedelta().days == 25  # type: ignore[union-attr]
    condition = defs.resolve_asset_graph().get(TRAINING_SET_KEY).automation_condition
    assert condition is not None and "freshness" in str(condition.get_label())


def test_one_writer_at_a_time(settings: Settings, tmp_path: Path) -> None:
    """The instance the platform runs on (the repo's dagster.yaml) runs one run at a time and gives the `duckdb` pool
    one slot; every step and check that opens the warehouse is in that pool. So sensors and automation can request as
    many runs as they like: DuckDB never sees two writers."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        config = instance.get_concurrency_config()
        assert config.run_queue_config is not None and config.run_queue_config.max_concurrent_runs == 1
        assert config.pool_config.default_pool_limit == 1
        # a launch that finds the code server away (a restart) requeues the run for 3 minutes: by default it failed,
        # its retry too, and a sensor's run key never asked again (a deployment hunt lost a retrain so)
        queue = config.run_queue_config
        assert queue.max_user_code_failure_retries * queue.user_code_failure_retry_delay >= 180
    defs = build_definitions(CATALOG, settings)
    users = [a for a in defs.resolve_asset_graph().assets_defs if "duckdb" in a.required_resource_keys]
    assert len(users) > 20  # assets and checks alike
    assert all(a.op.pool == DUCKDB_POOL for a in users), [
        a.keys or a.check_keys for a in users if a.op.pool != DUCKDB_POOL
    ]


def test_features_must_follow_their_landing_within_a_day(settings: Settings) -> None:
    replay_months(settings.landing_dir, ["2013-01", "2013-02"], every=50)
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in settings.landing_dir.glob("*/2013-01.parquet"):
        os.utime(path, (two_days_ago, two_days_ago))
    check = build_freshness_check(FLIGHT_DELAY.features, NYCFLIGHTS13)
    resources = {"storage": PlatformStorage(data_dir=str(settings.data_dir))}
    with instance_for_test() as instance:
        stale = check(dg.build_asset_check_context(instance=instance, resources=resources))
        # January landed two days ago and was never built; February landed just now and still has time
        assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
        assert (
            stale.description.startswith("2013-01: landed 48.0 h ago, never built")
            and "2013-02" not in stale.description
        )

        instance.add_dynamic_partitions(MONTHS.name, ["2013-01"])
        instance.report_runless_asset_event(dg.AssetMaterialization(FEATURES, partition="2013-01"))
        assert check(dg.build_asset_check_context(instance=instance, resources=resources)).passed


def test_the_tickers_evaluation_decides_as_dagsters_own(settings: Settings) -> None:
    """``ticks.evaluate_automation_conditions`` (the cursor built with cached partitions, as the daemon builds it)
    requests exactly what Dagster's testing API requests, tick after tick, each carrying its own cursor."""
    defs = build_definitions(CATALOG, settings)
    graph = defs.resolve_asset_graph()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MONTHS.name, ["2013-04", "2013-05"])
        theirs, ours, asked = None, None, []
        for change in (None, ("2013-04", True), None, ("2013-05", False)):
            if change is not None:
                _features_built(instance, *change)
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=theirs)
            theirs = result.cursor
            ours, requested = evaluate_automation_conditions(defs, instance, ours)
            expected = {
                key: set(result.get_requested_partitions(key))
                for key in graph.get_all_asset_keys()
                if result.get_requested_partitions(key)
            }
            assert requested == expected, change
            asked.append(sorted(key.to_user_string() for key in requested))
            assert ours.evaluation_id == theirs.evaluation_id  # type: ignore[attr-defined]
    # April's monitoring was asked for once, when its features were built; nothing before or after
    assert asked[0] == asked[2] == asked[3] == [] and KEYS.drift.to_user_string() in asked[1], asked


def test_a_rollback_that_would_not_help_on_the_month_is_declined_and_the_retrain_asked(settings: Settings) -> None:
    """Only the AUC fell, and the version a rollback would go to did no better on the same rows of the month (a month
    every model finds harder): the champion stays, `rollback_declined` is logged and observed once, and a retrain is
    asked. Before, it rolled back to that version all the same. Where the earlier version does better, or the
    champion's outputs broke beside it, it rolls back; outputs as extreme as that version's on the month stay."""
    from mlops_assets.core.records import FallbackLive
    from mlops_assets.defs.sensors import build_rollback_sensor

    registry = Registry(settings.model(MODEL.name).registry_dir)
    earlier, newer = _register(registry), _register(registry)
    registry.set_alias(CHAMPION, earlier, "promoted", "gates passed", roc_auc=0.72, test_month="2013-03")
    registry.set_alias(CHAMPION, newer, "promoted", "gates passed", roc_auc=0.74, test_month="2013-03")
    sensor = build_rollback_sensor(MODEL)

    def fallen(month: str, fallback_auc: float, extreme: float = 0.0, fallback_extreme: float = 0.0) -> LiveSummary:
        live = _live(month, newer, auc=0.66, evaluated=0.74)  # 0.08 below its bar: the AUC rule calls for a rollback
        variant = replace(live.batch["champion"], share_above_0_99=extreme)
        # the earlier version's scores on the same rows: as spread as the champion's, as extreme as given
        fallback = FallbackLive(earlier, 5000, fallback_auc, 0.14, fallback_extreme, 0.02)
        return replace(live, batch={"champion": variant}, fallback=fallback)

    with instance_for_test() as instance:
        said, cursor = [], None
        for month in ("2013-04", "2013-04"):  # the month's live record materialized twice: said once
            _report(instance, LIVE_KEY, fallen(month, fallback_auc=0.64))
            result = _tick(sensor, instance, settings, cursor)
            cursor = result.cursor
            said.append(([e.metadata["decision"].value for e in result.asset_events], result.run_requests or []))
        assert registry.alias(CHAMPION) == newer
        assert said[1] == ([], [])
        decisions, [request] = said[0]
        assert decisions == ["rollback_declined"] and request.run_key == f"rollback:flight_delay:2013-04:{newer}"
        [declined] = [e for e in registry.events() if e["event"] == "rollback_declined"]
        assert declined["version"] == newer and declined["month"] == "2013-04"
        assert declined["reason"].startswith(
            "rollback declined after 2013-04: live AUC 0.6600"
        )  # not "automatic rollback"
        assert f"{earlier}, the version it would go to, did no better" in declined["reason"]
        assert "AUC 0.6400 vs the champion's 0.6600" in declined["reason"]

        # May: the earlier version does better on the month's rows: rolled back to it
        _report(instance, LIVE_KEY, fallen("2013-05", fallback_auc=0.70))
        rolled = _tick(sensor, instance, settings, cursor)
        assert [e.metadata["decision"].value for e in rolled.asset_events] == ["rolled_back"]
        assert registry.alias(CHAMPION) == earlier

        # June, the newer version back by hand: its outputs went extreme, so it goes, whatever the AUCs say
        registry.set_alias(CHAMPION, newer, "promoted", "gates passed", roc_auc=0.74, test_month="2013-03")
        _report(instance, LIVE_KEY, fallen("2013-06", fallback_auc=0.60, extreme=0.5))
        broken = _tick(sensor, instance, settings, rolled.cursor)
        assert [e.metadata["decision"].value for e in broken.asset_events] == ["rolled_back"]
        assert registry.alias(CHAMPION) == earlier

        # July, back by hand again: as extreme as the earlier version on the month's rows (the month's doing, a rare
        # label's quiet month), and no worse in AUC: a rollback would change nothing, so the champion stays
        registry.set_alias(CHAMPION, newer, "promoted", "gates passed", roc_auc=0.74, test_month="2013-03")
        _report(instance, LIVE_KEY, fallen("2013-07", fallback_auc=0.60, extreme=0.5, fallback_extreme=0.45))
        month_moved = _tick(sensor, instance, settings, broken.cursor)
        assert [e.metadata["decision"].value for e in month_moved.asset_events] == ["rollback_declined"]
        assert registry.alias(CHAMPION) == newer
        [july] = [e for e in registry.events() if e["event"] == "rollback_declined" and e["month"] == "2013-07"]
        assert "52.0% of scores are extreme" in july["reason"] and "47.0% extreme scores" in july["reason"]
        assert [r.run_key for r in month_moved.run_requests or []] == [f"rollback:flight_delay:2013-07:{newer}"]

        # August: the drift sensor's retrain against the same champion already ran for the month: a declined
        # rollback asks for no second one (it trained the same data again: a byte-identical version)
        drift_tags = retrain_tags(MODEL, "drift", "2013-08", newer, "drift in 2013-08")
        instance.add_run(dg.DagsterRun(job_name=RETRAIN_JOB, tags=drift_tags, status=dg.DagsterRunStatus.SUCCESS))
        _report(instance, LIVE_KEY, fallen("2013-08", fallback_auc=0.60, extreme=0.5, fallback_extreme=0.45))
        august = _tick(sensor, instance, settings, month_moved.cursor)
        assert [e.metadata["decision"].value for e in august.asset_events] == ["rollback_declined"]
        assert not august.run_requests
