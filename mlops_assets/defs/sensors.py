"""Sensors: the landing sensor turns newly landed or changed months into runs (for every feed, refreshing every model
over it); each model has its own drift, performance and rollback sensors, which read only that model's monitoring
records and registry and request only that model's retraining job; the automation sensor runs the assets'
automation conditions."""

import json
from collections.abc import Callable

import dagster as dg

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.features import feature_set_version, months_reading
from mlops_assets.core.landing import (
    LandedFile,
    file_version,
    misnamed_files,
    plan_refresh,
    scan_landing,
    shift_month,
)
from mlops_assets.core.monitoring import drift_retrain_reason, performance_retrain_reason
from mlops_assets.core.policy import RollbackPolicy, rollback_declined, rollback_reasons
from mlops_assets.core.records import DriftSummary, LiveSummary
from mlops_assets.core.registry import (
    CHAMPION,
    Registry,
    evaluated_roc_auc,
    gated_champions,
    rollback_candidate,
    rollback_targets,
    rollback_to_first_sound,
)
from mlops_assets.core.settings import DEFAULT_SENSOR_INTERVAL_S
from mlops_assets.core.specs import FeedSpec, ModelSpec, TableSpec
from mlops_assets.defs.ingest import MISNAMED_TAG, ingested_version, landed_observations
from mlops_assets.defs.jobs import RETRY_FROM_FAILURE, AssetJob, without_hourly_checks
from mlops_assets.defs.keys import (
    MODEL_TAG,
    features_key,
    keys_of,
    landing_key,
    month_refresh_keys,
    raw_key,
    retraining_job_name,
    sensor_name,
    validated_key,
)
from mlops_assets.defs.monitor import R, new_month_records
from mlops_assets.defs.partitions import MONTHS, calendar_order
from mlops_assets.defs.resources import MonitoringPolicy, PlatformStorage
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.recovery import HEARTBEAT_STALE_S, recover_dead_runs

TRIGGER_TAG, MONTH_TAG, CHAMPION_TAG, REASON_TAG = "mlops/trigger", "mlops/month", "mlops/champion", "mlops/reason"


def month_refresh_assets(catalog: Catalog, feed: FeedSpec) -> list[dg.AssetKey]:
    """What one landed month of ``feed`` refreshes, in one run: its monthly tables, the feature tables over it, and
    every model over it: online store, batch scores, drift and live quality."""
    models = catalog.models_of(feed)
    tables = [k for t in feed.monthly_tables for k in (raw_key(t), validated_key(t))]
    features = list(dict.fromkeys(features_key(m.features) for m in models))
    return [*tables, *features, *(k for m in models for k in month_refresh_keys(m))]


def reference_refresh_assets(feed: FeedSpec) -> list[dg.AssetKey]:
    """What a changed reference file of ``feed`` refreshes (with the first month's run): its raw and validated
    tables."""
    return [k for t in feed.reference_tables for k in (raw_key(t), validated_key(t))]


#: The landing sensor's job: its runs show under this name, and the UI shows the sensor's target by it.
LANDING_JOB = "landing_refresh"


def build_landing_job(catalog: Catalog) -> AssetJob:
    """``landing_refresh``: everything a landed month can refresh; each run of the landing sensor selects the part of
    it that one month of one feed needs."""
    keys = [
        k for feed in catalog.feeds for k in (*month_refresh_assets(catalog, feed), *reference_refresh_assets(feed))
    ]
    return dg.define_asset_job(
        name=LANDING_JOB,
        selection=without_hourly_checks(dg.AssetSelection.assets(*dict.fromkeys(keys)), catalog),
        tags=RETRY_FROM_FAILURE,
        description="The landing sensor's runs, one per newly landed month of a feed: ingest -> validate -> "
        "features -> for every model over the feed: online store, batch scores, drift report and live performance "
        "(and the feed's reference tables when their files changed). Launched by `landing_sensor`, not by hand.",
    )


def build_landing_sensor(
    catalog: Catalog, job: AssetJob, interval_s: int = DEFAULT_SENSOR_INTERVAL_S
) -> dg.SensorDefinition:
    """The landing sensor, requesting runs of ``job`` (:func:`build_landing_job`), evaluated every ``interval_s``."""
    tables = {t.name: t for t in catalog.tables}
    month_assets = {feed.name: month_refresh_assets(catalog, feed) for feed in catalog.feeds}
    feature_specs = {
        feed.name: list({m.features.name: m.features for m in catalog.models_of(feed)}.values())
        for feed in catalog.feeds
    }
    reference_assets = {feed.name: reference_refresh_assets(feed) for feed in catalog.feeds}

    @dg.sensor(
        name="landing_sensor",
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Watches $MLOPS_DATA_DIR/landing. A month of a feed whose files are new or changed (by sha256), "
        "or all its months when a reference file changed, gets one run for that month: ingest -> validate -> "
        "features -> for every model over the feed: online store, batch scores, drift report and live performance "
        "(the reference tables too when their files changed); the month becomes a partition first (in calendar "
        "order). A month that lands late or is corrected is run with the built months whose look-back reads it, "
        "through the last of them: their features were built without it. The cursor holds "
        "the file hashes, so the same file twice requests nothing; files that an earlier run already ingested "
        "(Dagster's observations of the landing sources) need no run either.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, storage: PlatformStorage) -> dg.SensorResult:
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        files = scan_landing(storage.landing_dir)
        # Files new or changed since the cursor may already be in (`dagster job execute` ran before the first tick; a
        # corrected month re-executed from its failed run): Dagster's record of what the ingest step read says so,
        # and those files need no run.
        for landed in files:
            if landed.table not in tables or previous.get(landed.relative_name) == landed.version:
                continue
            # a file seen before in another state counts as in only when its ingest accepted it: a batch rejected for
            # its checksum file changes state when only that file is fixed, and must be ingested again
            changed = landed.relative_name in previous
            ingested = ingested_version(context.instance, tables[landed.table], landed.month, accepted_only=changed)
            if ingested == landed.sha256:
                previous[landed.relative_name] = landed.version
        known_in_order = context.instance.get_dynamic_partitions(MONTHS.name)
        known = set(known_in_order)
        built: dict[str, set[str]] = {}  # per feed, the months every feature table over it has built (when asked)

        def built_months(feed_name: str) -> set[str]:
            """The months whose features every table over the feed built, or whose tables were all validated (a
            month whose features were refused for a gap in its look-back: the late month's run builds it)."""
            if feed_name not in built:
                specs = feature_specs[feed_name]
                partitions = [context.instance.get_materialized_partitions(features_key(spec)) for spec in specs]
                featured = set.intersection(*partitions) if partitions else set()
                feed = next(f for f in catalog.feeds if f.name == feed_name)
                validated = [
                    context.instance.get_materialized_partitions(validated_key(t)) for t in feed.monthly_tables
                ]
                built[feed_name] = featured | (set.intersection(*validated) if validated else set())
            return built[feed_name]

        requests: list[dg.RunRequest] = []
        new_months: list[str] = []
        cursor: dict[str, str] = {}
        waiting: list[str] = []  # what months wait for: the tick's skip reason in the UI when it asks for nothing
        for feed in catalog.feeds:
            feed_files = [f for f in files if f.table in {t.name for t in feed.tables}]
            plan = plan_refresh(
                feed_files,
                [t.name for t in feed.monthly_tables],
                [t.name for t in feed.reference_tables],
                {k: v for k, v in previous.items() if k in {f.relative_name for f in feed_files}},
            )
            cursor |= plan.cursor
            new_months += [m for m in plan.months_to_run if m not in known and m not in new_months]
            if plan.waiting:
                note = f"{feed.name}: {waiting_for(feed_files, feed, plan.waiting)}"
                context.log.info(note)
                waiting.append(note)
            # changed reference tables are ingested once, by the first month's run (runs queue one at a time)
            for i, month in enumerate(plan.months_to_run):
                selection = month_assets[feed.name] + (
                    reference_assets[feed.name] if plan.reference_changed and i == 0 else []
                )
                # a month that lands late or is corrected: the built months whose look-back reads it were built
                # without it (or with its old rows), so its run covers them too, through the last one (a month that
                # is itself to run gets its own run, after this one)
                readers = []
                for reader in months_reading(
                    month, [m for m in known_in_order if m not in plan.months_to_run], feature_specs[feed.name]
                ):
                    if reader not in built_months(feed.name):
                        break  # never validated (its batch rejected, or its run failed before): a range through it
                        # would stop at its rejection
                    readers.append(reader)
                span = range_tags([month, readers[-1]]) if readers else {}
                requests.append(
                    dg.RunRequest(
                        run_key=f"{feed.name}:{plan.run_keys[month]}",
                        partition_key=None if readers else month,
                        asset_selection=selection,
                        asset_check_keys=checks_to_run(context, catalog, selection),
                        tags={"mlops/feed": feed.name, **span, **RETRY_FROM_FAILURE},
                    )
                )
        observations = misnamed_observations(storage, tables, previous, cursor, context.log.warning)
        # new or changed files as the landing sources' data versions, before their run reads them (no "Unsynced")
        unseen = [f for f in files if previous.get(f.relative_name) != f.version]
        observations += landed_observations(context.instance, list(tables.values()), unseen)
        # new months in calendar order: the ones after them are deleted and added again (runs over a range of months
        # cover the partitions between its ends in the order they were added)
        delete, add = calendar_order(known_in_order, new_months)
        partition_requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
        if delete:
            partition_requests.append(MONTHS.build_delete_request(delete))
        if add:
            partition_requests.append(MONTHS.build_add_request(add))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=partition_requests,
            cursor=json.dumps(cursor, sort_keys=True),
            asset_events=observations,
            skip_reason=skip_reason_of(waiting) if waiting and not requests else None,
        )

    return landing_sensor


def waiting_for(files: list[LandedFile], feed: FeedSpec, months: list[str]) -> str:
    """What the feed's incomplete ``months`` wait for, per month: the tables not landed yet (a month runs once every
    monthly table and every reference table of its feed has landed)."""
    reference = sorted({t.name for t in feed.reference_tables} - {f.table for f in files if f.month is None})
    parts = []
    for month in months:
        have = {f.table for f in files if f.month == month}
        missing = [t.name for t in feed.monthly_tables if t.name not in have]
        parts.append(f"{month} waits for {', '.join(missing + reference)} (landed: {', '.join(sorted(have))})")
    return "; ".join(parts)


def checks_to_run(
    context: dg.SensorEvaluationContext, catalog: Catalog, selection: list[dg.AssetKey]
) -> list[dg.AssetCheckKey] | None:
    """The checks a landing run of ``selection`` runs: those of its assets but the hourly ones, as in the
    ``landing_refresh`` job (a request's asset selection alone would bring every check of its assets, the features'
    freshness included, which the automation sensor runs on its clock). None (every check) when the sensor is
    evaluated without its code location."""
    repository = context.repository_def
    if repository is None:
        return None
    wanted = without_hourly_checks(dg.AssetSelection.assets(*selection), catalog)
    return sorted(wanted.resolve_checks(repository.asset_graph), key=lambda key: key.to_user_string())


def misnamed_observations(
    storage: PlatformStorage,
    tables: dict[str, TableSpec],
    previous: dict[str, str],
    cursor: dict[str, str],
    warn: Callable[[str], None],
) -> list[dg.AssetObservation]:
    """Files of the landing zone whose names break the layout, each reported once per version as an observation of
    the landing source it was meant for (the UI shows it there) and as a warning; the cursor remembers what was said.
    They are never ingested (the ingest step also records them in ``quarantine.batches``)."""
    observations = []
    for item in misnamed_files(storage.landing_dir, set(tables)):
        version = file_version(item.path) or ("folder" if item.path.is_dir() else "unreadable")
        key = f"misnamed:{item.relative_name}"
        cursor[key] = version
        if previous.get(key) == version:
            continue  # reported on an earlier tick
        warn(
            f"{'unreadable' if item.unreadable else 'misnamed'} file, not ingested: {item.relative_name}: {item.reason}"
        )
        if item.table in tables:
            metadata = {"misnamed_file": item.relative_name, "reason": item.reason, "sha256": version}
            observation = dg.AssetObservation(
                asset_key=landing_key(tables[item.table]), tags={MISNAMED_TAG: "true"}, metadata=metadata
            )
            observations.append(observation)
    return observations


#: A retraining run in one of these states has not read its training months yet: it will train on the newest.
NOT_YET_TRAINING = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING)
NOT_TRAINED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def retrain_already_requested(instance: dg.DagsterInstance, model: ModelSpec, month: str, champion: str) -> bool:
    """Whether a retraining run of ``model`` against this champion (asked by any of its sensors) already covers
    ``month``: one asked for this month or a later one (a retrain trains on the newest months there are), or one that
    has not started yet (it will read ``month`` too). A retrain per month would train the same window again: with a
    few months landing at once (a replay, a feed catching up) the queue filled with identical retrains."""
    # one not started yet covers the month whatever champion it was asked against: a rollback's retrain is asked
    # against the version it took out, and the drift of the next month against the version it restored
    if retrain_waiting(instance, model):
        return True
    tags = {CHAMPION_TAG: champion, MODEL_TAG: model.name}
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=retraining_job_name(model), tags=tags), limit=100)
    # a retrain that failed for good (no retry coming) or was canceled trained nothing: it covers no month
    return any(run.tags.get(MONTH_TAG, "") >= month and _may_train(run) for run in runs)


def retrain_waiting(instance: dg.DagsterInstance, model: ModelSpec) -> bool:
    """Whether a retraining run of ``model`` waits to start (it will train on the newest months there are, and be
    judged against the champion of when it evaluates)."""
    waiting = dg.RunsFilter(
        job_name=retraining_job_name(model), tags={MODEL_TAG: model.name}, statuses=list(NOT_YET_TRAINING)
    )
    return bool(instance.get_runs(filters=waiting, limit=1))


def _may_train(run: dg.DagsterRun) -> bool:
    """Whether ``run`` trained, trains or will train (a failed run whose automatic retry is still to come will)."""
    return run.status not in NOT_TRAINED or run.is_complete_and_waiting_to_retry


def retrain_tags(model: ModelSpec, trigger: str, month: str, champion: str, reason: str) -> dict[str, str]:
    return {
        MODEL_TAG: model.name,
        TRIGGER_TAG: trigger,
        MONTH_TAG: month,
        CHAMPION_TAG: champion,
        REASON_TAG: reason[:900],
        **RETRY_FROM_FAILURE,
    }


def _retrain_sensor(
    model: ModelSpec,
    trigger: str,
    asset_key: dg.AssetKey,
    kind: type[R],
    decide: Callable[[R, MonitoringPolicy], str | None],
    description: str,
    interval_s: int,
) -> dg.SensorDefinition:
    """A sensor of ``model`` that reads the records of ``asset_key`` (one of the model's monitoring assets) after its
    cursor, never DuckDB, and requests the model's retraining run when ``decide`` gives a reason. At most one request
    per tick, for the newest month with a reason (the run key names the month and the champion); a month whose
    champion has been replaced since is stale, a month up to the champion's test month (re-landed) adds nothing it
    did not see, and a month already covered by a retrain of the same champion (asked
    by any of the model's sensors for it or a later month, or not started yet) is skipped."""

    @dg.sensor(
        name=sensor_name(model, trigger),
        job_name=retraining_job_name(model),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description=description,
    )
    def _sensor(
        context: dg.SensorEvaluationContext, storage: PlatformStorage, policy: MonitoringPolicy
    ) -> dg.SensorResult:
        records, cursor = new_month_records(context.instance, asset_key, kind, context.cursor)
        registry = storage.registry(model.name)
        champion = registry.alias(CHAMPION)
        # the newest month the champion saw (its test month): a month up to it, re-landed (a correction), asks for a
        # retrain that would see nothing newer than the champion did
        tested_on = champion_test_month(registry, champion)
        requests: list[dg.RunRequest] = []
        requested: str | None = None  # the month this tick asked to retrain for: it covers the earlier ones
        built = context.instance.get_materialized_partitions(features_key(model.features)) if records else set()
        skipped: list[str] = []  # why an event asked for nothing: shown as the tick's skip reason in the UI
        for record in sorted(records, key=lambda r: r.month, reverse=True):  # newest first
            reason = decide(record, policy)
            if reason is None:
                continue
            month, scored_by = record.month, record.champion_version
            if champion is None or scored_by != champion:
                skipped.append(f"{month}: {reason}, but the champion is now {champion} (was {scored_by}): stale")
                continue
            if tested_on is not None and month <= tested_on:
                skipped.append(
                    f"{month}: {reason}, but champion {champion} was trained and tested on months through {tested_on}: "
                    "a retrain would see nothing newer"
                )
                continue
            gap = shift_month(month, -1)
            if gap not in built:
                # its training set would fail (no validation weeks before the month): wait for that month, whose
                # landing run rebuilds this one and records it again
                skipped.append(f"{month}: {reason}, but {gap}, the month before it, has no features yet: waiting")
                continue
            if requested is not None or retrain_already_requested(context.instance, model, month, champion):
                skipped.append(
                    f"{month}: a retraining of {model.name} for champion {champion} that covers it is already requested"
                )
                continue
            requested = month
            run_key = f"{trigger}:{model.name}:{month}:{champion}"
            requests.append(dg.RunRequest(run_key=run_key, tags=retrain_tags(model, trigger, month, champion, reason)))
            context.log.info(f"requesting a retrain of {model.name}: {reason}")
        for note in skipped:
            context.log.info(note)
        skip_reason = skip_reason_of(skipped) if skipped and not requests else None
        return dg.SensorResult(run_requests=requests, cursor=cursor, skip_reason=skip_reason)

    return _sensor


def skip_reason_of(notes: list[str], limit: int = 1000) -> str:
    """The notes of a tick that asked for nothing, whole ones up to ``limit`` characters (the UI's skip reason): a
    note cut in the middle of a word read as another reason."""
    shown: list[str] = []
    for note in notes:
        rest = len(notes) - len(shown) - 1
        tail = f"; and {rest} more (the tick's log has each)" if rest else ""
        if len("; ".join([*shown, note]) + tail) > limit:
            break
        shown.append(note)
    hidden = len(notes) - len(shown)
    if not shown:
        return notes[0][: limit - 3] + "..."
    return "; ".join(shown) + (f"; and {hidden} more (the tick's log has each)" if hidden else "")


def build_drift_sensor(model: ModelSpec, interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    keys = keys_of(model)
    return _retrain_sensor(
        model,
        "drift",
        keys.drift,
        DriftSummary,
        lambda summary, policy: drift_retrain_reason(summary),
        f"Reads each new `{keys.drift.to_user_string()}` record (materialization metadata, never DuckDB): when the "
        f"month drifted against the {model.name} champion that scored it, requests `{retraining_job_name(model)}` "
        f"(training set -> challenger -> evaluation -> promotion decision). Run key `drift:{model.name}:<month>:"
        "<champion>`: one request for the newest drifted month; a month a retrain of the same champion already "
        "covers (asked for it or a later month, or still queued) asks nothing.",
        interval_s,
    )


def build_performance_sensor(model: ModelSpec, interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    keys = keys_of(model)
    return _retrain_sensor(
        model,
        "performance",
        keys.live,
        LiveSummary,
        lambda summary, policy: performance_retrain_reason(
            summary, policy.retrain_auc_margin, policy.rollback().min_rows
        ),
        f"Reads each new `{keys.live.to_user_string()}` record: when the {model.name} champion's live AUC on a month "
        f"(on at least {RollbackPolicy.min_rows} labelled rows) fell more than `$MLOPS_RETRAIN_AUC_MARGIN` below its "
        "evaluation AUC, requests "
        f"`{retraining_job_name(model)}`. Run key `performance:{model.name}:<month>:<champion>`; skipped when a "
        "retrain of the same champion already covers the month (asked by either sensor for it or a later month, or "
        "still queued).",
        interval_s,
    )


def build_automation_sensor(interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description="Evaluates every asset's automation condition: monitoring assets run after a month's features "
        "(eager, once the blocking checks passed), the lifecycle follows a new training set, a changed training code "
        "version retrains, a champion past its freshness policy is retrained and re-evaluated.",
    )


def build_recovery_sensor(interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    """Runs whose process died are marked failed and their ``duckdb`` slot freed, with nobody at the keyboard."""

    @dg.sensor(
        name="run_recovery",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks failed the runs whose process is gone (killed, crashed, or in a code-server container that "
        f"restarted: silent for {HEARTBEAT_STALE_S:.0f} s) and frees their `duckdb` slot, so the run queue moves on "
        "and the run retries re-execute it from its failure (`mlops_assets/recovery.py`). Starts no run itself.",
    )
    def run_recovery(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        report = recover_dead_runs(context.instance)
        for line in report.messages():
            context.log.warning(f"mlops recovery: {line}")
        recovered = len(report.recovered)
        return dg.SkipReason(f"recovered {recovered} run(s)" if recovered else "no run whose process died")

    return run_recovery


def champion_test_month(registry: Registry, champion: str | None) -> str | None:
    """The champion's test month from its registry record; None when there is none or it cannot be read (the
    champion's checks say why: a sensor keeps running)."""
    if champion is None:
        return None
    try:
        return (registry.get(champion).metadata.get("data") or {}).get("test_month")
    except (OSError, ValueError, LookupError):
        return None


def required_auc(registry: Registry, version: str) -> float | None:
    """The AUC a champion must hold live: its own evaluation AUC when it came in through the gates, else (forced in
    by hand) the evaluation AUC of the last champion that passed them and was not rolled back since (the last one
    that passed them, when every one was)."""
    gated = gated_champions(registry)
    standing = rollback_targets(registry)
    bar = version if version in gated else next(iter(standing or gated), None)
    return evaluated_roc_auc(registry, bar) if bar else None


def _decision_recorded(registry: Registry, decision: str, champion: str, month: str) -> bool:
    """Whether the registry already says that ``champion`` was not rolled back after ``month`` for this reason
    (``rollback_impossible``: no version to go to; ``rollback_declined``: going back would not help)."""
    return any(
        (event.get("event"), event.get("version"), event.get("month")) == (decision, champion, month)
        for event in registry.events()
    )


def _roll_back(
    context: dg.SensorEvaluationContext,
    model: ModelSpec,
    registry: Registry,
    champion: str,
    month: str,
    why: str,
    feature_set: str,
) -> dict[str, str] | None:
    """Move ``champion`` back to the first sound version trained on today's features (a version trained on others
    would be fed features it never learnt), or log that none is left; the decision, or None when that was said for
    the month already."""
    safe = [v for v in rollback_targets(registry) if v != champion]
    target, passed_over = rollback_to_first_sound(registry, why, safe, feature_set=feature_set)
    if passed_over:
        context.log.error(f"{model.name}: rollback passed over version(s): {'; '.join(passed_over)}")
    if target is not None:
        context.log.warning(f"{model.name}: rolled back {champion} -> {target}: {why}")
        return {"decision": "rolled_back", "from_version": champion, "champion_version": target}
    if _decision_recorded(registry, "rollback_impossible", champion, month):
        return None
    left = "no gated champion left that was never rolled back" + (
        f", passes its checksum and was trained on today's features (passed over: {'; '.join(passed_over)})"
        if passed_over
        else ""
    )
    registry.log_event("rollback_impossible", version=champion, reason=f"{why}; {left}", month=month)
    context.log.error(f"{model.name} {champion} should be rolled back but {left}: {why}")
    return {"decision": "rollback_impossible", "from_version": champion, "champion_version": champion}


def build_rollback_sensor(model: ModelSpec, interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> dg.SensorDefinition:
    keys = keys_of(model)

    @dg.sensor(
        name=sensor_name(model, "rollback"),
        job_name=retraining_job_name(model),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_s,
        description=f"Reads each new `{keys.live.to_user_string()}` record: when the {model.name} champion that scored "
        "the month lost more AUC than the rollback policy allows against the AUC it must hold, its scores collapsed or "
        "went extreme against its reference profile, or too many of its online predictions failed, the `champion` "
        "alias moves back to the last version that passed the promotion gates and was never rolled back itself "
        "(recorded as an observation of "
        f"`{keys.champion.to_user_string()}` and in the registry's event log; the service picks it up within "
        "seconds) and a retraining run is requested. When that version did no better on the same labelled rows of "
        "the month (scored by `live_performance`: an AUC as low, scores as extreme or as narrow), the month is the "
        "cause, not the champion: it stays (`rollback_declined`) and a retrain is requested, unless one against it "
        "already covers the month (the drift sensor's). Failed "
        f"predictions always roll back. Run key `rollback:{model.name}:<month>:<champion>`.",
    )
    def rollback_sensor(
        context: dg.SensorEvaluationContext, storage: PlatformStorage, policy: MonitoringPolicy
    ) -> dg.SensorResult:
        records, cursor = new_month_records(context.instance, keys.live, LiveSummary, context.cursor)
        registry = storage.registry(model.name)
        features_now = feature_set_version(model.features)
        requests: list[dg.RunRequest] = []
        observations: list[dg.AssetObservation] = []
        for record in records:
            champion = registry.alias(CHAMPION)
            if champion is None or record.champion_version != champion:
                continue  # nothing judged, or judged a model that no longer serves
            reference = registry.profile(champion).get("scores", {})
            required = required_auc(registry, champion)
            reasons = rollback_reasons(record, required, reference, policy.rollback())
            if not reasons:
                continue
            why = f"automatic rollback after {record.month}: " + "; ".join(reasons)
            target_now = rollback_candidate(registry, champion, features_now)
            declined = rollback_declined(record, required, reference, policy.rollback(), target_now)
            if declined is not None:
                # a month the version it would go to finds as hard: the champion stays, a fresh model is the way out
                if _decision_recorded(registry, "rollback_declined", champion, record.month):
                    continue  # the month's record materialized again: said once, its retrain already asked
                why = f"rollback declined after {record.month}: " + "; ".join(reasons) + f"; {declined}"
                registry.log_event("rollback_declined", version=champion, reason=why, month=record.month)
                context.log.warning(f"{model.name}: no rollback of {champion}: {why}")
                decision = {"decision": "rollback_declined", "from_version": champion, "champion_version": champion}
            else:
                decision = _roll_back(context, model, registry, champion, record.month, why, features_now)
                if decision is None:
                    continue  # the month's record materialized again: said once, its retrain already asked
            # the decision where Dagster shows it: an observation of the champion asset, with its reasons
            observations.append(
                dg.AssetObservation(
                    asset_key=keys.champion, metadata={**decision, "reason": why, "month": record.month}
                )
            )
            # the alias moves whatever else is asked; the retrain only when none waits to start (the daemon judges
            # the sensors in no fixed order: a drift or performance retrain may be asked first). After a rollback,
            # one already started was judged against the version taken out: it does not count. A declined rollback
            # keeps the champion: a retrain against it that covers the month (the drift sensor's, run or running)
            # is the fresh model already, and another would train the same data again (a byte-identical version)
            if declined is not None:
                covered = retrain_already_requested(context.instance, model, record.month, champion)
            else:
                covered = retrain_waiting(context.instance, model)
            if not covered:
                requests.append(
                    dg.RunRequest(
                        run_key=f"rollback:{model.name}:{record.month}:{champion}",
                        tags=retrain_tags(model, "rollback", record.month, champion, why),
                    )
                )
        return dg.SensorResult(run_requests=requests, cursor=cursor, asset_events=observations)

    return rollback_sensor


def build_model_sensors(model: ModelSpec, interval_s: int = DEFAULT_SENSOR_INTERVAL_S) -> list[dg.SensorDefinition]:
    """A model's own sensors, rollback first (the simulation's ticker judges them in this order; Dagster's daemon in
    no fixed order, so each asks for a retrain only when none covers the month yet); each evaluated every
    ``interval_s`` (``$MLOPS_SENSOR_INTERVAL_S``)."""
    return [
        build_rollback_sensor(model, interval_s),
        build_drift_sensor(model, interval_s),
        build_performance_sensor(model, interval_s),
    ]
