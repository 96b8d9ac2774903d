"""Sensors: the landing sensor turns newly landed or changed months into runs."""

import json

import dagster as dg

from mlops_assets.core.landing import plan_refresh, scan_landing
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.ingest import ingested_version
from mlops_assets.defs.partitions import MONTHS
from mlops_assets.defs.resources import PlatformStorage


def build_landing_sensor(model: ModelSpec, target: dg.AssetSelection) -> dg.SensorDefinition:
    tables = {t.name: t for t in model.tables}
    monthly = [t.name for t in model.monthly_tables]
    reference = [t.name for t in model.reference_tables]

    @dg.sensor(
        name="landing_sensor",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Watches $MLOPS_DATA_DIR/landing. A month whose files are new or changed (by sha256), or all months "
        "when a reference file changed, gets a run of ingest -> validate -> features for that month; the month becomes "
        "a partition first. The cursor holds the file hashes, so the same file twice requests nothing; files that an "
        "earlier run already ingested (Dagster's observations of the landing sources) need no run either.",
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
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=plan.run_keys[m], partition_key=m) for m in plan.months_to_run],
            dynamic_partitions_requests=[MONTHS.build_add_request(new_months)] if new_months else [],
            cursor=json.dumps(plan.cursor, sort_keys=True),
        )

    return landing_sensor
