"""Jobs over every landed month, each one run over the month range:

* ``feature_pipeline``: ingest -> validate -> features;
* ``training_pipeline``: the same, then training set -> challenger -> evaluation -> promotion decision;
* ``retraining``: the retraining part of ``training_pipeline`` on the features already built (what the drift and
  performance sensors request).
"""

from pathlib import Path

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mlops_assets.core.landing import landed_months
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.partitions import range_tags

#: Ingest -> validate -> features (the landing sensor also refreshes the online store and monitoring in its run).
FEATURE_PIPELINE_SELECTION = dg.AssetSelection.key_prefixes(["raw"], ["validated"], ["features"]) - dg.AssetSelection.assets(
    ["features", "training_set"], ["features", "online_store"]
)
#: What the landing sensor may run for a month.
LANDING_REFRESH_SELECTION = FEATURE_PIPELINE_SELECTION | dg.AssetSelection.assets(
    ["features", "online_store"], ["predictions", "batch"], ["monitoring", "drift_report"], ["monitoring", "live_performance"]
)
TRAINING_PIPELINE_SELECTION = (
    dg.AssetSelection.key_prefixes(["raw"], ["validated"], ["features"], ["models"], ["reports"])
)
#: Requested by the drift and performance sensors.
RETRAIN_JOB = "retraining"
RETRAINING_SELECTION = dg.AssetSelection.assets(["features", "training_set"]) | dg.AssetSelection.key_prefixes(["models"], ["reports"])


def _months_job(name: str, selection: dg.AssetSelection, what: str, model: ModelSpec, landing_dir: Path) -> UnresolvedAssetJobDefinition:
    """A job over the months landed when the definitions were loaded, as one partition-range run, so
    ``dagster job execute -j <name>`` needs no partition argument. For one month, materialize the assets of that
    partition (the landing sensor does exactly that)."""
    months = landed_months(landing_dir, [t.name for t in model.monthly_tables])
    return dg.define_asset_job(
        name=name,
        selection=selection,
        tags=range_tags(months) if months else None,
        description=f"{what} for every landed month (one run, months as a partition range). Months at load time: "
        f"{', '.join(months) if months else 'none yet: run `mlops replay --through 2013-03`'}.",
    )


def build_jobs(model: ModelSpec, landing_dir: Path) -> list[UnresolvedAssetJobDefinition]:
    return [
        _months_job("feature_pipeline", FEATURE_PIPELINE_SELECTION, "Ingest -> validate -> features", model, landing_dir),
        _months_job(
            "training_pipeline",
            TRAINING_PIPELINE_SELECTION,
            "Ingest -> validate -> features -> training set -> challenger -> evaluation -> promotion decision",
            model,
            landing_dir,
        ),
        dg.define_asset_job(
            name=RETRAIN_JOB,
            selection=RETRAINING_SELECTION,
            description="The retraining part of training_pipeline, on the features already built: training set -> "
            "challenger -> evaluation -> promotion decision. Requested by the drift and performance sensors.",
        ),
    ]
