"""Sensors: the landing sensor turns newly landed or changed months into runs; the drift and performance sensors
turn monitoring results into retraining runs; the rollback sensor takes a degraded champion out of production; the
automation sensor runs the assets' automation conditions."""

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_assets.core.landing import plan_refresh, scan_landing
from mlops_assets.core.monitoring import drift_retrain_reason, performance_retrain_reason
from mlops_assets.core.policy import rollback_reasons
from mlops_assets.core.registry import CHAMPION, Registry, gated_champions, rollback
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.evaluate import evaluated_roc_auc
from mlops_assets.defs.features import ONLINE_STORE_KEY, features_key
from mlops_assets.defs.ingest import ingested_version, raw_key
from mlops_assets.defs.jobs import RETRAIN_JOB
from mlops_assets.defs.monitor import DRIFT_KEY, LIVE_KEY, PREDICTIONS_KEY, new_month_summaries
from mlops_assets.defs.partitions import MONTHS
from mlops_assets.defs.resources import MonitoringPolicy, PlatformStorage
from mlops_assets.defs.validate import validated_key


def build_landing_sensor(model: ModelSpec, target: dg.AssetSelection) -> dg.SensorDefinition:
    tables = {t.name: t for t in model.tables}
    monthly = [t.name for t in model.monthly_tables]
    reference = [t.name for t in model.reference_tables]
    # a month's refresh, in one run: its tables, features, online store and monitoring; the reference tables only
    # when one of their files changed (re-ingesting unchanged ones cost a second a month)
    month_assets = [*(k for t in model.monthly_tables for k in (raw_key(t), validated_key(t))),
                    *(features_key(f) for f in model.feature_tables), ONLINE_STORE_KEY, PREDICTIONS_KEY, DRIFT_KEY, LIVE_KEY]  # fmt: skip
    reference_assets = [k for t in model.reference_tables for k in (raw_key(t), validated_key(t))]

    @dg.sensor(
        name="landing_sensor",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Watches $MLOPS_DATA_DIR/landing. A month whose files are new or changed (by sha256), or all months "
        "when a reference file changed, gets one run for that month: ingest -> validate -> features -> online store, "
        "batch scores, drift report and live performance (the reference tables too when their files changed); the "
        "month becomes a partition first. The cursor holds the file hashes, so the same file twice requests nothing; "
        "files that an earlier run already ingested (Dagster's observations of the landing sources) need no run either.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, storage: PlatformStorage) -> dg.SensorResult:
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        files = scan_landing(storage.landing_dir)
        # Files the cursor has not seen may already be in (e.g. `dagster job execute` ran before the first tick):
        # Dagster's record of what the ingest step read says so, and those files need no run.
        for landed in files:
            if landed.relative_name not in previous and landed.table in tables:
                if ingested_version(context.instance, tables[landed.table], landed.month) == landed.sha256:
                    previous[landed.relative_name] = landed.sha256
        plan = plan_refresh(files, monthly, reference, previous)
        known = set(context.instance.get_dynamic_partitions(MONTHS.name))
        new_months = [m for m in plan.months_to_run if m not in known]
        if plan.waiting:
            context.log.info(f"waiting for the rest of months {plan.waiting}")
        # changed reference tables are ingested once, by the first month's run (runs queue one at a time)
        requests = [
            dg.RunRequest(run_key=plan.run_keys[m], partition_key=m,
                          asset_selection=month_assets + (reference_assets if plan.reference_changed and i == 0 else []))
            for i, m in enumerate(plan.months_to_run)
        ]  # fmt: skip
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[MONTHS.build_add_request(new_months)] if new_months else [],
            cursor=json.dumps(plan.cursor, sort_keys=True),
        )

    return landing_sensor


TRIGGER_TAG, MONTH_TAG, CHAMPION_TAG, REASON_TAG = "mlops/trigger", "mlops/month", "mlops/champion", "mlops/reason"


def retrain_already_requested(instance: dg.DagsterInstance, month: str, champion: str) -> bool:
    """Whether a retraining run was already requested for this month and champion (by either sensor)."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=RETRAIN_JOB, tags={MONTH_TAG: month, CHAMPION_TAG: champion}), limit=1)
    return bool(runs)


def _retrain_sensor(
    name: str,
    trigger: str,
    asset_key: dg.AssetKey,
    decide: Callable[[Mapping[str, Any], MonitoringPolicy], str | None],
    description: str,
) -> dg.SensorDefinition:
    """A sensor that reads the materializations of ``asset_key`` after its cursor (their metadata only, never
    DuckDB) and requests a retraining run when ``decide`` gives a reason. One request per month and champion: the
    run key names both, a month whose champion has been replaced since is stale, and a month another sensor already
    asked to retrain is skipped."""

    @dg.sensor(name=name, job_name=RETRAIN_JOB, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
               description=description)  # fmt: skip
    def _sensor(context: dg.SensorEvaluationContext, storage: PlatformStorage, policy: MonitoringPolicy) -> dg.SensorResult:
        summaries, cursor = new_month_summaries(context.instance, asset_key, context.cursor)
        champion = Registry(storage.registry_dir).alias(CHAMPION)
        requests: list[dg.RunRequest] = []
        seen: set[str] = set()
        for month, summary in summaries:
            reason = decide(summary, policy)
            scored_by = summary.get("champion_version")
            if reason is None:
                continue
            if scored_by != champion:
                context.log.info(f"{month}: {reason}, but the champion is now {champion} (was {scored_by}): stale, no retrain")
                continue
            run_key = f"{trigger}:{month}:{champion}"
            if run_key in seen or retrain_already_requested(context.instance, month, champion):
                context.log.info(f"{month}: retraining for champion {champion} already requested")
                continue
            seen.add(run_key)
            tags = {TRIGGER_TAG: trigger, MONTH_TAG: month, CHAMPION_TAG: champion, REASON_TAG: reason[:900]}
            requests.append(dg.RunRequest(run_key=run_key, tags=tags))
            context.log.info(f"requesting a retrain: {reason}")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return _sensor


def build_drift_sensor() -> dg.SensorDefinition:
    return _retrain_sensor(
        "drift_sensor",
        "drift",
        DRIFT_KEY,
        lambda summary, policy: drift_retrain_reason(summary),
        "Reads each new `monitoring/drift_report` materialization's metadata (never DuckDB): when the month drifted "
        "against the champion that scored it, requests the `retraining` job (training set -> challenger -> evaluation "
        "-> promotion decision). Run key `drift:<month>:<champion>`: one request per drift event.",
    )


def build_performance_sensor() -> dg.SensorDefinition:
    return _retrain_sensor(
        "performance_sensor",
        "performance",
        LIVE_KEY,
        lambda summary, policy: performance_retrain_reason(summary, policy.retrain_auc_margin),
        "Reads each new `monitoring/live_performance` materialization's metadata: when the champion's live AUC on a "
        "month fell more than `$MLOPS_RETRAIN_AUC_MARGIN` (0.02) below its evaluation AUC, requests the `retraining` "
        "job. Run key `performance:<month>:<champion>`; skipped when the drift sensor already asked for that month.",
    )


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Evaluates every asset's automation condition: monitoring assets run after a month's features "
        "(eager, once the blocking checks passed), the lifecycle follows a new training set, a changed training code "
        "version retrains, a champion past its freshness policy is retrained and re-evaluated.",
    )


def required_auc(registry: Registry, reports_dir: Path, version: str) -> float | None:
    """The AUC a champion must hold live: its own evaluation AUC when it came in through the gates, else (forced in
    by hand) the evaluation AUC of the last champion that passed them."""
    gated = gated_champions(registry)
    bar = version if version in gated else (gated[0] if gated else None)
    return evaluated_roc_auc(reports_dir, bar) if bar else None


def build_rollback_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="rollback_sensor",
        job_name=RETRAIN_JOB,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Reads each new `monitoring/live_performance` materialization's metadata: when the champion that "
        "scored the month lost more than 0.05 AUC against the AUC it must hold, its scores collapsed or went extreme "
        "against its reference profile, or more than 1% of its online predictions failed, the `champion` alias moves "
        "back to the last version that passed the promotion gates (the reason goes to the registry's event log; the "
        "service picks it up within seconds) and a retraining run is requested. Run key `rollback:<month>:<champion>`.",
    )
    def rollback_sensor(context: dg.SensorEvaluationContext, storage: PlatformStorage, policy: MonitoringPolicy) -> dg.SensorResult:
        summaries, cursor = new_month_summaries(context.instance, LIVE_KEY, context.cursor)
        registry = Registry(storage.registry_dir)
        requests: list[dg.RunRequest] = []
        for month, summary in summaries:
            champion = registry.alias(CHAMPION)
            if champion is None or summary.get("champion_version") != champion:
                continue  # nothing judged, or judged a model that no longer serves
            reasons = rollback_reasons(summary, required_auc(registry, storage.reports_dir, champion),
                                       registry.profile(champion).get("scores", {}), policy.rollback())  # fmt: skip
            if not reasons:
                continue
            why = f"automatic rollback after {month}: " + "; ".join(reasons)
            safe = [v for v in gated_champions(registry) if v != champion]
            if safe:
                rollback(registry, why, to=safe[0], run_id=None)
                context.log.warning(f"rolled back {champion} -> {safe[0]}: {why}")
            else:
                registry.log_event("rollback_impossible", version=champion, reason=f"{why}; no earlier gated champion")
                context.log.error(f"{champion} should be rolled back but no earlier champion passed the gates: {why}")
            tags = {TRIGGER_TAG: "rollback", MONTH_TAG: month, CHAMPION_TAG: champion, REASON_TAG: why[:900]}
            requests.append(dg.RunRequest(run_key=f"rollback:{month}:{champion}", tags=tags))
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return rollback_sensor
