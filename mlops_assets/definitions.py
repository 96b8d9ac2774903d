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
from mlops_assets.defs.jobs import FEATURE_PIPELINE_SELECTION, build_jobs
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.resources import build_resources, persistent_instance
from mlops_assets.defs.sensors import build_landing_sensor
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
        assets=[*ingest_assets, *validate_assets, *feature_assets, *lifecycle_assets],
        asset_checks=[*ingest_checks, *validate_checks, *feature_checks, build_champion_check(model)],
        jobs=build_jobs(model, settings.landing_dir),
        sensors=[build_landing_sensor(model, FEATURE_PIPELINE_SELECTION)],
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
