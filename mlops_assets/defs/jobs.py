"""Jobs:

* ``feature_pipeline``: every feed's ingest -> validate -> the feature tables;
* ``training_pipeline``: the same, then for every model: training set -> challenger -> evaluation -> promotion
  decision, and its online store;
* ``<model>_retraining`` (one per model): that model's retraining part on the features already built (what its
  drift, performance and rollback sensors request).

``feature_pipeline`` and ``training_pipeline`` run over a month range given at launch (the partition-range tags;
``mlops months --tags`` prints them for every landed month), never one baked in when the code loads.
"""

from typing import Any

import dagster as dg

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.specs import ModelSpec
from mlops_assets.defs.features import freshness_check_keys
from mlops_assets.defs.keys import MODEL_TAG, features_key, keys_of, raw_key, retraining_job_name, served, validated_key

#: A run that crashed is retried by the daemon (dagster.yaml `run_retries`) from its failure: only the steps that had
#: not succeeded run again, never a second copy of what was written.
RETRY_FROM_FAILURE = {"dagster/retry_strategy": "FROM_FAILURE"}

#: What ``dg.define_asset_job`` returns (its class is not part of Dagster's public API).
AssetJob = Any


def without_hourly_checks(selection: dg.AssetSelection, catalog: Catalog) -> dg.AssetSelection:
    """``selection`` without the checks the automation sensor runs on a clock (the features' freshness)."""
    return selection - dg.AssetSelection.checks(*freshness_check_keys(list(catalog.feature_tables)))


def feature_pipeline_selection(catalog: Catalog) -> dg.AssetSelection:
    """Every feed's raw and validated tables and every feature table."""
    tables = [k for t in catalog.tables for k in (raw_key(t), validated_key(t))]
    return dg.AssetSelection.assets(*tables, *(features_key(f) for f in catalog.feature_tables))


def training_pipeline_selection(catalog: Catalog) -> dg.AssetSelection:
    models = [
        k for m in catalog.models for k in (*keys_of(m).lifecycle, *([keys_of(m).online_store] if served(m) else []))
    ]
    return feature_pipeline_selection(catalog) | dg.AssetSelection.assets(*models)


def build_retraining_job(model: ModelSpec) -> AssetJob:
    return dg.define_asset_job(
        name=retraining_job_name(model),
        selection=dg.AssetSelection.assets(*keys_of(model).lifecycle),
        tags={MODEL_TAG: model.name, **RETRY_FROM_FAILURE},
        description=f"The retraining part of training_pipeline for {model.name}, on the features already built: "
        "training set -> challenger -> evaluation -> promotion decision. Requested by the model's drift, "
        "performance and rollback sensors.",
    )


def build_jobs(catalog: Catalog) -> list[AssetJob]:
    models = ", ".join(m.name for m in catalog.models)
    range_hint = (
        'Runs over a month range: add `--tags "$(mlops months --tags)"` to `dagster job execute` (the landed months, '
        "as `make pipeline` and `make train` do), or launch a backfill of the months from the UI."
    )
    return [
        dg.define_asset_job(
            name="feature_pipeline",
            selection=without_hourly_checks(feature_pipeline_selection(catalog), catalog),
            tags=RETRY_FROM_FAILURE,
            description=f"Ingest -> validate -> features, for every feed and feature table. {range_hint}",
        ),
        dg.define_asset_job(
            name="training_pipeline",
            selection=without_hourly_checks(training_pipeline_selection(catalog), catalog),
            tags=RETRY_FROM_FAILURE,
            description="Ingest -> validate -> features, then for every model "
            f"({models}): training set -> challenger -> evaluation -> promotion decision, and its online store. "
            f"{range_hint}",
        ),
        *(build_retraining_job(m) for m in catalog.models),
    ]
