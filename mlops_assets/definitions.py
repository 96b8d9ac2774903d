"""Assembly only: the flights model's assets, checks, jobs, sensors and resources.

Loaded lazily by Dagster (``dagster dev -w workspace.yaml``, ``dagster job execute -m mlops_assets.definitions``): the
landed months are read when the code location loads, so ``feature_pipeline`` covers every landed month and each of
them is a partition, even before the landing sensor's first tick.
"""

import warnings

import dagster as dg

from mlops_assets.core.flights import FLIGHTS
from mlops_assets.core.landing import landed_months
from mlops_assets.core.settings import Settings, load_settings
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.features import build_features
from mlops_assets.defs.ingest import build_ingest
from mlops_assets.defs.deploy import build_champion_asset, build_champion_check
from mlops_assets.defs.evaluate import build_evaluation_asset
from mlops_assets.defs.jobs import LANDING_REFRESH_SELECTION, build_jobs
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.resources import build_resources, persistent_instance
from mlops_assets.defs.monitor import build_monitoring
from mlops_assets.defs.sensors import (
    build_automation_sensor,
    build_drift_sensor,
    build_landing_sensor,
    build_performance_sensor,
    build_rollback_sensor,
)
from mlops_assets.defs.train import build_challenger_asset, build_training_set_asset
from mlops_assets.defs.validate import build_validate


# The beta APIs used here (observable sources, single-run backfill policy) are the ones Dagster documents for this
# job; the warnings only repeat that on every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

def build_definitions(model: ModelSpec, settings: Settings) -> dg.Definitions:
    """Everything Dagster needs for one model, over the data directory in ``settings``."""
    ingest_assets, ingest_checks = build_ingest(model)
    validate_assets, validate_checks = build_validate(model)
    feature_assets, feature_checks = build_features(model)
    lifecycle_assets = [
        build_training_set_asset(model),
        build_challenger_asset(model),
        build_evaluation_asset(model),
        build_champion_asset(model),
    ]
    return dg.Definitions(
        assets=[*ingest_assets, *validate_assets, *feature_assets, *lifecycle_assets, *build_monitoring(model)],
        asset_checks=[*ingest_checks, *validate_checks, *feature_checks, build_champion_check(model)],
        jobs=build_jobs(model, settings.landing_dir),
        sensors=[
            build_landing_sensor(model, LANDING_REFRESH_SELECTION),
            build_rollback_sensor(),
            build_drift_sensor(),
            build_performance_sensor(),
            build_automation_sensor(),
        ],
        resources=build_resources(settings),
        # One process per run: a run never holds two DuckDB connections, and steps skip the ~1.5 s process start.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = load_settings()
    instance = persistent_instance()
    if instance is not None:
        register_months(instance, landed_months(settings.landing_dir, [t.name for t in FLIGHTS.monthly_tables]))
    return build_definitions(FLIGHTS, settings)


# Module-level job factories: Dagster re-executes a failed run from these (`mlops resume`), since a re-execution must be
# able to rebuild the job in a fresh process.
def feature_pipeline_job() -> dg.JobDefinition:
    return defs().resolve_job_def("feature_pipeline")


def training_pipeline_job() -> dg.JobDefinition:
    return defs().resolve_job_def("training_pipeline")


RESUMABLE_JOBS = {"feature_pipeline": feature_pipeline_job, "training_pipeline": training_pipeline_job}


def resume_run(run_id: str, instance: dg.DagsterInstance) -> dg.JobExecutionResult:
    """Re-execute a failed run from its failure: only the failed steps and what follows them run again, with the
    parent run's config and tags (so the same months)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in the Dagster instance at $DAGSTER_HOME")
    if run.status != dg.DagsterRunStatus.FAILURE:
        raise ValueError(f"run {run_id} is {run.status.value}, not FAILURE: nothing to resume")
    succeeded = instance.get_runs(filters=dg.RunsFilter(job_name=run.job_name, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=200)
    done = [r.run_id for r in succeeded if r.parent_run_id == run_id]
    if done:
        raise ValueError(f"run {run_id} was already resumed successfully by run {done[0]}")
    if run.job_name not in RESUMABLE_JOBS:
        raise ValueError(f"run {run_id} is of job {run.job_name!r}; resumable jobs: {', '.join(RESUMABLE_JOBS)}")
    return dg.execute_job(
        dg.reconstructable(RESUMABLE_JOBS[run.job_name]),
        instance=instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(run_id, instance),
    )
