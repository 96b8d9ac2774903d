"""Jobs: ``feature_pipeline`` runs ingest -> validate -> features for every landed month in one run."""

from pathlib import Path

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from mlops_assets.core.landing import landed_months
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.partitions import range_tags

FEATURE_PIPELINE_SELECTION = dg.AssetSelection.key_prefixes(["raw"], ["validated"], ["features"])


def build_feature_pipeline(model: ModelSpec, landing_dir: Path) -> UnresolvedAssetJobDefinition:
    """The job covers the months landed when the definitions were loaded, as one partition-range run, so
    ``dagster job execute -j feature_pipeline`` needs no partition argument. For one month, materialize the assets of
    that partition (the landing sensor does exactly that)."""
    months = landed_months(landing_dir, [t.name for t in model.monthly_tables])
    return dg.define_asset_job(
        name="feature_pipeline",
        selection=FEATURE_PIPELINE_SELECTION,
        tags=range_tags(months) if months else None,
        description="Ingest -> validate -> features for every landed month (one run, months as a partition range). "
        f"Months at load time: {', '.join(months) if months else 'none yet: run `mlops replay --through 2013-03`'}.",
    )
