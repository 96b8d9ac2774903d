"""Assembly only: every registered feed's and model's assets, checks, jobs, sensors and resources.

Loaded by Dagster (``dagster dev -w workspace.yaml``, ``dagster job execute -m mlops_assets.definitions``). Loading
writes nothing to the instance and reads no data: the months are partitions added by the landing sensor and by
``mlops replay``, and the jobs get their month range when they are launched.
"""

import functools
import logging
import shlex
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog
from mlops_assets.core.settings import Settings, load_settings
from mlops_assets.defs.deploy import build_champion_asset, build_champion_check
from mlops_assets.defs.evaluate import build_evaluation_asset
from mlops_assets.defs.features import build_feature_table, build_online_store_asset
from mlops_assets.defs.ingest import build_ingest
from mlops_assets.defs.jobs import build_jobs
from mlops_assets.defs.keys import MODEL_TAG, retraining_job_name, served
from mlops_assets.defs.monitor import build_monitoring
from mlops_assets.defs.progress import progress_console, root_cause, step_label
from mlops_assets.defs.resources import build_resources
from mlops_assets.defs.run_tags import RANGE_END_TAG, RANGE_START_TAG
from mlops_assets.defs.sensors import (
    LANDING_JOB,
    build_automation_sensor,
    build_landing_job,
    build_landing_sensor,
    build_model_sensors,
    build_recovery_sensor,
)
from mlops_assets.defs.train import build_challenger_asset, build_training_set_asset
from mlops_assets.defs.validate import build_validate
from mlops_assets.recovery import (
    HOST_TAG,
    IN_PROGRESS,
    PID_TAG,
    PROCESS_TAG,
    RETRY_EXPECTED_S,
    LeftAlone,
    recover_dead_runs,
    retry_pending,
)
from mlops_assets.threaded_executor import threaded_executor

# The beta APIs used here (observable sources, single-run backfill policy) are the ones Dagster documents for this
# job; the warnings only repeat that on every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

logger = logging.getLogger(__name__)


def build_definitions(catalog: Catalog, settings: Settings) -> dg.Definitions:
    """Everything Dagster needs for the catalog's feeds and models, over the data directory in ``settings``."""
    assets: list[dg.AssetsDefinition | dg.SourceAsset] = []
    checks: list[dg.AssetChecksDefinition] = []
    for feed in catalog.feeds:  # built once, whatever the number of models reading them
        # every registered table is known, so one feed's folders are never reported as another's misnamed files
        known = [t.name for t in catalog.tables]
        for built_assets, built_checks in (build_ingest(feed, known_tables=known), build_validate(feed)):
            assets += built_assets
            checks += built_checks
    for spec in catalog.feature_tables:  # once, even when several models train on one
        feature_asset, feature_checks = build_feature_table(spec, catalog.feed_of_table(spec.inputs[0]))
        assets.append(feature_asset)
        checks += feature_checks
    landing_job = build_landing_job(catalog)
    sensors: list[dg.SensorDefinition] = [build_landing_sensor(catalog, landing_job, settings.sensor_interval_s)]
    for model in catalog.models:
        assets += [
            build_training_set_asset(model),
            build_challenger_asset(model),
            build_evaluation_asset(model),
            build_champion_asset(model),
            *([build_online_store_asset(model)] if served(model) else []),
            *build_monitoring(model),
        ]
        checks.append(build_champion_check(model))
        sensors += build_model_sensors(model, settings.sensor_interval_s)
    sensors += [build_automation_sensor(settings.sensor_interval_s), build_recovery_sensor(settings.sensor_interval_s)]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[*build_jobs(catalog), landing_job],
        sensors=sensors,
        resources=build_resources(settings, catalog),
        # One process per run (steps skip the ~1.5 s process start, one process writes DuckDB), its independent steps
        # at once on threads: both cores for DuckDB, polars and LightGBM, which release the GIL.
        executor=threaded_executor,
        # a job's console prints progress, not Dagster's DEBUG stream (defs/progress.py); the event log keeps all
        loggers={"console": progress_console},
    )


@functools.lru_cache(maxsize=4)
def definitions_for(settings: Settings) -> dg.Definitions:
    """The catalog's definitions over ``settings``, built once per process and settings: Dagster loads a code location
    several times in one process (``dagster job execute`` five times, ~0.15 s each)."""
    return build_definitions(CATALOG, settings)


@dg.definitions
def defs() -> dg.Definitions:
    return definitions_for(load_settings())


def job_by_name(name: str, data_dir: str) -> dg.JobDefinition:
    """A job of the code location over ``data_dir``, rebuilt in a fresh process (what a re-execution from failure
    needs). The data directory is an argument, not read again here: Dagster keeps rebuilt jobs by their arguments."""
    return definitions_for(load_settings(data_dir)).resolve_job_def(name)


def reconstructable_job(name: str, data_dir: str | None = None) -> Any:
    """A job Dagster can rebuild in another process or for a re-execution (``dg.execute_job`` takes it)."""
    directory = data_dir or str(load_settings().data_dir)
    return dg.build_reconstructable_job(
        "mlops_assets.definitions", "job_by_name", reconstructable_args=(name, directory)
    )


#: The shortest start of a run id taken for the run: the 8 characters the run's console prints and the UI shows.
RUN_ID_PREFIX = 8


def _run_by_prefix(instance: dg.DagsterInstance, prefix: str) -> dg.DagsterRun | None:
    """The run whose id starts with ``prefix`` (at least :data:`RUN_ID_PREFIX` characters), among the newest 1,000;
    None when none does, ValueError naming them when several do."""
    if len(prefix) < RUN_ID_PREFIX:
        return None
    found = [r for r in instance.get_runs(limit=1000) if r.run_id.startswith(prefix)]
    if len(found) > 1:
        raise ValueError(f"{prefix!r} starts {len(found)} run ids ({', '.join(r.run_id for r in found)}): give more")
    return found[0] if found else None


def held_by_training_pipeline() -> list[str]:
    """The jobs whose work ``training_pipeline`` holds: the feature build and every model's retraining."""
    return ["feature_pipeline", *(retraining_job_name(m) for m in CATALOG.models)]


def resumable_jobs() -> list[str]:
    """The jobs ``mlops resume`` re-executes: the platform's own, the landing sensor's ``landing_refresh`` included
    (each of its runs a selection of the job's assets: a re-execution keeps it). An asset selection launched from the
    UI is re-executed there."""
    return ["training_pipeline", *held_by_training_pipeline(), LANDING_JOB]


def _months_of(run: dg.DagsterRun) -> str | None:
    """The months a run covers, for people: ``2013-01..2013-12``, one month, or None."""
    span = _span(run)
    if span is None:
        return None
    return span[0] if span[0] == span[1] else f"{span[0]}..{span[1]}"


@dataclass(frozen=True)
class FailedRun:
    """A failed run that ``mlops resume`` can re-execute from its failure, and where and why it failed."""

    run_id: str
    job_name: str
    months: str | None
    model: str | None  # the run's ``mlops/model`` tag (None: a job of every model)
    failed_at: float | None  # when the run ended (seconds since the epoch)
    steps: tuple[str, ...]  # its failed steps, and steps started that never ended (a kill), as the UI names them
    cause: str | None  # the first failed step's own error, else the run's failure message
    retry_due: bool  # the daemon's run retries will re-execute it: resuming it too would run its steps twice

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}


@dataclass(frozen=True)
class FailedRuns:
    """What ``mlops resume`` without run ids lists: the failed runs left to resume (newest first), and how many
    failed runs need no resume (a re-execution of theirs, or a later run that did their work, succeeded)."""

    to_resume: tuple[FailedRun, ...]
    settled: int
    searched: int  # the newest runs looked through


def _where_it_failed(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[tuple[str, ...], str | None]:
    """A failed run's failed steps (and steps a kill left started) and its cause, from its event log."""
    kinds = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_SKIPPED,
        dg.DagsterEventType.RUN_FAILURE,
    }
    started: dict[str, None] = {}
    ended: set[str] = set()
    failed: dict[str, str | None] = {}
    run_failure: str | None = None
    for record in instance.get_records_for_run(run.run_id, of_type=kinds).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        key = record.event_log_entry.step_key
        if event.event_type == dg.DagsterEventType.STEP_START and key:
            started[key] = None
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE and key:
            failed[key] = root_cause(getattr(event.event_specific_data, "error", None))
            ended.add(key)
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE:
            error = getattr(event.event_specific_data, "error", None)
            # a run marked failed from outside (a kill found by recovery): its message's first sentence says why
            run_failure = root_cause(error) if error is not None else (event.message or "").split(". ")[0]
        elif key:
            ended.add(key)
    steps = [*failed, *(key for key in started if key not in ended)]
    cause = next((c for c in failed.values() if c), None) or run_failure
    return tuple(step_label(key) for key in steps), cause


def _span(run: dg.DagsterRun) -> tuple[str, str] | None:
    """The first and last month a run covers (None: no months, e.g. a retraining job on the features built)."""
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if start and end:
        return start, end
    month = run.tags.get("dagster/partition")
    return (month, month) if month else None


def _settles(later: dg.DagsterRun, failed: dg.DagsterRun) -> bool:
    """Whether ``later`` succeeding leaves nothing of ``failed`` to resume: it did that work or more. The same job
    (over the failed run's assets or more: each ``landing_refresh`` run selects its own), or ``training_pipeline``
    (which holds ``feature_pipeline`` and every model's retraining, not the landing's monitoring); the same model, or
    every model; the failed run's months or more (a month landed since widens the next run's range)."""
    if later.job_name == failed.job_name:
        wanted_assets, done_assets = failed.asset_selection, later.asset_selection
        if done_assets is not None and (wanted_assets is None or not wanted_assets <= done_assets):
            return False
    elif not (later.job_name == "training_pipeline" and failed.job_name in held_by_training_pipeline()):
        return False
    if later.tags.get(MODEL_TAG) not in (None, failed.tags.get(MODEL_TAG)):
        return False
    wanted, done = _span(failed), _span(later)
    return wanted is None or (done is not None and done[0] <= wanted[0] and wanted[1] <= done[1])


def failed_runs(instance: dg.DagsterInstance, model: str | None = None, limit: int = 1000) -> FailedRuns:
    """The failed runs of :func:`resumable_jobs` among the newest ``limit`` that are left to resume, newest first:
    per chain of re-executions (a run, its retries and resumes) only its newest failure, and none whose chain ended
    in a success or runs now, nor one whose work a later run completed (:func:`_settles`). ``model``: only that
    model's runs and the jobs of every model."""
    records = instance.get_run_records(limit=limit)
    successes = [r for r in records if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
    jobs = set(resumable_jobs())
    chains: dict[str, list[dg.RunRecord]] = {}
    for record in records:  # newest first
        run = record.dagster_run
        chains.setdefault(run.root_run_id or run.run_id, []).append(record)

    to_resume, settled = [], 0
    for chain in chains.values():
        newest = chain[0].dagster_run
        if newest.job_name not in jobs or not any(r.dagster_run.status == dg.DagsterRunStatus.FAILURE for r in chain):
            continue
        owner = newest.tags.get(MODEL_TAG)
        if model is not None and owner is not None and owner != model:
            continue
        statuses = {r.dagster_run.status for r in chain}
        if statuses & {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, *IN_PROGRESS}:
            continue  # a retry or a resume of it runs now
        failure = next(r for r in chain if r.dagster_run.status == dg.DagsterRunStatus.FAILURE)
        later_success = any(
            other.create_timestamp > failure.create_timestamp and _settles(other.dagster_run, failure.dagster_run)
            for other in successes
        )
        if later_success:  # a retry or resume of it, or a fresh run of the same work
            settled += 1
            continue
        run = failure.dagster_run
        steps, cause = _where_it_failed(instance, run)
        to_resume.append(
            FailedRun(
                run_id=run.run_id,
                job_name=run.job_name,
                months=_months_of(run),
                model=owner,
                failed_at=failure.end_time,
                steps=steps,
                cause=cause,
                retry_due=retry_pending(instance, run),
            )
        )
    to_resume.sort(key=lambda f: f.failed_at or 0.0, reverse=True)
    return FailedRuns(tuple(to_resume), settled, len(records))


def resume_run(run_id: str, instance: dg.DagsterInstance, model: str | None = None) -> dg.JobExecutionResult:
    """Re-execute a failed run from its failure: only the failed steps and what follows them run again, with the
    parent run's config and tags (so the same months: :func:`reexecution_tags`).

    A run still STARTING/STARTED (or CANCELING) whose process is gone on this host (``kill -9``, a crash) is first
    marked failed and its pool slots freed (``recovery.recover_dead_runs``), then resumed; one whose process runs, or
    that is on another host, is refused.

    Args:
        model: when given, the run must be that model's (its ``mlops/model`` tag) or one that covers every model
            (``training_pipeline``, ``feature_pipeline``).
    """
    run = instance.get_run_by_id(run_id) or _run_by_prefix(instance, run_id)
    if run is None:
        if instance.is_persistent:
            home = instance.root_directory
            listing = f"`DAGSTER_HOME={shlex.quote(home)} dagster run list`"  # as given: this instance's runs
        else:
            home, listing = "(an ephemeral instance)", "`dagster run list`"
        short = (
            f" (a run id's start names a run from {RUN_ID_PREFIX} characters on)" if len(run_id) < RUN_ID_PREFIX else ""
        )
        raise ValueError(
            f"no run {run_id!r} in the Dagster instance at {home}{short}: `mlops resume` alone lists the failed runs "
            f"left to resume; every run is in {listing} and the UI's Runs page"
        )
    run_id = run.run_id  # the whole id, when given its first characters
    owner = run.tags.get(MODEL_TAG)
    if model is not None and owner is not None and owner != model:
        raise ValueError(
            f"run {run_id} is a run of model {owner!r}, not {model!r}: `mlops resume --model {owner} {run_id}`"
        )
    children = [  # earlier re-executions of this run (by `mlops resume`, the UI, or the daemon's retries)
        r
        for r in instance.get_runs(filters=dg.RunsFilter(job_name=run.job_name), limit=200)
        if r.parent_run_id == run_id
    ]
    busy = [r.run_id for r in children if r.status in (dg.DagsterRunStatus.QUEUED, *IN_PROGRESS)]
    if run.status in IN_PROGRESS or busy:  # a process may be dead (kill -9): then its run is marked failed here
        recovery = recover_dead_runs(instance, run_ids=[run_id, *busy])
        for recovered in recovery.recovered:
            logger.warning(recovered.message())
        run = instance.get_run_by_id(run_id) or run
        if run.status in IN_PROGRESS:
            found = recovery.of(run_id)
            why = f": {found.reason}" if isinstance(found, LeftAlone) else ""
            raise ValueError(
                f"run {run_id} is {run.status.value}, not FAILURE{why}. It may still be running: wait for it to end "
                "(or terminate it), then resume it if it failed"
            )
        children = [instance.get_run_by_id(r.run_id) or r for r in children]
    if run.status != dg.DagsterRunStatus.FAILURE:
        raise ValueError(f"run {run_id} is {run.status.value}, not FAILURE: nothing to resume")
    done = [r.run_id for r in children if r.status == dg.DagsterRunStatus.SUCCESS]
    if done:
        raise ValueError(f"run {run_id} was already resumed successfully by run {done[0]}")
    busy = [r.run_id for r in children if r.status in (dg.DagsterRunStatus.QUEUED, *IN_PROGRESS)]
    if busy:
        raise ValueError(
            f"run {run_id} is being re-executed by run {busy[0]} (e.g. a retry the daemon launched): wait for that run"
        )
    if not children and retry_pending(instance, run):  # its retry is about to start: a resume would run it twice
        raise ValueError(
            f"run {run_id} is retried by the daemon (Dagster's run retries, tag dagster/will_retry): wait for its "
            f"retry run (`dagster run list`, or the UI's Runs page); if none starts within {RETRY_EXPECTED_S:.0f} s "
            "of the failure, resume it then"
        )
    resumable = resumable_jobs()
    if run.job_name not in resumable:
        raise ValueError(f"run {run_id} is of job {run.job_name!r}; resumable jobs: {', '.join(resumable)}")
    return dg.execute_job(
        reconstructable_job(run.job_name),
        instance=instance,
        run_config=run.run_config,
        tags=reexecution_tags(run),
        reexecution_options=dg.ReexecutionOptions.from_failure(run_id, instance),
    )


#: Dagster's tags a re-execution keeps: the months the run covers (a partitioned step re-run needs them).
_KEPT_SYSTEM_TAGS = ("dagster/partition", "dagster/partition_set", RANGE_START_TAG, RANGE_END_TAG)


def reexecution_tags(run: dg.DagsterRun) -> dict[str, str]:
    """The tags of a re-execution of ``run``, as Dagster's own re-execution sets them: the parent's own tags (the
    months, ``mlops/model``, the trigger...) without Dagster's bookkeeping of the parent (its failure reason, retries,
    metrics) or the process that executed it (the new run records its own), marked as resumed from failure."""
    kept = {
        key: value
        for key, value in run.tags.items()
        if key in _KEPT_SYSTEM_TAGS
        or not (key.startswith(("dagster/", ".dagster/")) or key in (PROCESS_TAG, PID_TAG, HOST_TAG))
    }
    return {
        **kept,
        "dagster/parent_run_id": run.run_id,
        "dagster/root_run_id": run.root_run_id or run.run_id,
        "dagster/is_resume_retry": "true",
    }
