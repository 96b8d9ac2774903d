"""A failed training run resumes from its failed step: what had succeeded is not run again."""

import dagster as dg
import pytest

from mlops_assets.core.flights import replay_months
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import resume_run, training_pipeline_job
from mlops_assets.defs.partitions import range_tags, register_months

MONTHS = ["2013-01", "2013-02"]


def _succeeded(result: dg.JobExecutionResult) -> set[str]:
    return {e.step_key for e in result.all_events if e.is_step_success and e.step_key}


def test_resume_reruns_only_the_failed_step_and_what_follows(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=20)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.registry_dir.write_text("not a folder")  # injected failure: the registry cannot be written
    with dg.instance_for_test() as instance:
        register_months(instance, MONTHS)
        failed = dg.execute_job(dg.reconstructable(training_pipeline_job), instance=instance, tags=range_tags(MONTHS))
        assert not failed.success
        assert "models__challenger" not in _succeeded(failed) and "features__training_set" in _succeeded(failed)

        settings.registry_dir.unlink()  # the cause is fixed
        resumed = resume_run(failed.run_id, instance)
        with pytest.raises(ValueError, match="already resumed successfully"):
            resume_run(failed.run_id, instance)
    assert resumed.success
    rerun = _succeeded(resumed)
    assert {"models__challenger", "reports__evaluation", "models__champion"} <= rerun
    assert not any(step.startswith(("raw__", "validated__", "features__")) for step in rerun), rerun
    assert Registry(settings.registry_dir).alias(CHAMPION) == "v0001"


def test_only_a_failed_run_can_be_resumed(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS, every=20)
    with dg.instance_for_test() as instance:
        register_months(instance, MONTHS)
        ok = dg.execute_job(dg.reconstructable(training_pipeline_job), instance=instance, tags=range_tags(MONTHS))
        assert ok.success
        with pytest.raises(ValueError, match="not FAILURE"):
            resume_run(ok.run_id, instance)
        with pytest.raises(ValueError, match="no run"):
            resume_run("no-such-run", instance)
