"""Training: the time-split training set and the challenger model, registered as a new immutable version."""

from datetime import timedelta
from importlib.metadata import version

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlops_assets.core import training as training_module
from mlops_assets.core.cores import all_cores
from mlops_assets.core.drift import reference_profile
from mlops_assets.core.evaluation import metrics
from mlops_assets.core.features import feature_set_version
from mlops_assets.core.landing import shift_month
from mlops_assets.core.lineage import code_version, source_version
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import TRAINING_WINDOW_ENV
from mlops_assets.core.specs import FeatureTableSpec, ModelSpec
from mlops_assets.core.store import (
    ensure_table_like,
    qualified,
    query_frame,
    quote_identifier,
    replace_where,
    table_exists,
    transaction,
)
from mlops_assets.core.training import TrainingSet, split_by_time, stored_training_set, train_model
from mlops_assets.defs.configs import with_model_defaults
from mlops_assets.defs.keys import MODEL_TAG, features_key, keys_of, table_of
from mlops_assets.defs.partitions import DUCKDB_POOL
from mlops_assets.defs.resources import PlatformStorage, TrainingPolicy

CHALLENGER_ALIAS = "challenger"
PROFILE_ROWS = 50_000
#: The challenger's code version: the training code and the LightGBM version. When it changes, automation retrains.
TRAINING_CODE_VERSION = source_version(training_module, extra=f"lightgbm {version('lightgbm')}")
#: How stale the champion may get: re-evaluated (retrained and judged) at least every 30 days, warned at 25.
CHAMPION_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=30), warn_window=timedelta(days=25))


def registered_challenger(registry: Registry, model: ModelSpec) -> str:
    """The version the ``challenger`` alias names, or a clear failure when training has not run yet."""
    challenger = registry.alias(CHALLENGER_ALIAS)
    if challenger is None:
        raise dg.Failure(
            description=f"no challenger registered for {model.name}: materialize {model.name}/challenger first"
        )
    return challenger


def _training_set_query(model: ModelSpec, where: str = "") -> str:
    order = ", ".join(quote_identifier(c) for c in (model.features.time_column, *model.features.key))
    return f"SELECT * FROM {table_of(keys_of(model).training_set)} {where} ORDER BY {order}"


def read_training_set(conn: duckdb.DuckDBPyConnection, model: ModelSpec) -> TrainingSet:
    """``<model>.training_set`` in its stored order, with the content hash every reader agrees on."""
    return stored_training_set(query_frame(conn, _training_set_query(model)))


def read_test_rows(conn: duckdb.DuckDBPyConnection, model: ModelSpec) -> pl.DataFrame:
    """Only the held-out rows of ``<model>.training_set`` (what evaluation and the canary score)."""
    return query_frame(conn, _training_set_query(model, "WHERE split = 'test'"))


class TrainingSetConfig(dg.Config):
    window_months: int | None = Field(
        default=None,
        ge=0,
        description="How many of the newest built months the training set spans (test month included); 0 = all; "
        "empty = the platform's setting (`MLOPS_TRAINING_WINDOW_MONTHS`).",
    )


class TrainingParams(dg.Config):
    """LightGBM hyperparameters (shown and editable in the Launchpad)."""

    learning_rate: float = Field(default=0.1, description="Shrinkage per boosting round.")
    num_leaves: int = Field(default=63, description="Maximum leaves per tree.")
    min_data_in_leaf: int = Field(default=100, description="Minimum rows in a leaf: larger is smoother.")
    feature_fraction: float = Field(default=0.9, description="Share of features tried per tree.")
    lambda_l2: float = Field(default=1.0, description="L2 regularisation of leaf values.")
    cat_smooth: float = Field(default=10.0, description="Smoothing of categorical splits (carrier, dest, ...).")
    max_bin: int = Field(default=63, description="Histogram bins per feature: fewer is faster (63 lost no AUC here).")
    num_boost_round: int = Field(default=1000, description="Upper bound on boosting rounds.")
    early_stopping_rounds: int = Field(
        default=20, description="Stop when the validation AUC or log loss has not improved for this many rounds."
    )
    num_threads: int = Field(default=2, description="Threads; results are identical for a fixed value.")

    def lightgbm(self) -> dict[str, float | int]:
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "cat_smooth": self.cat_smooth,
            "max_bin": self.max_bin,
            "num_threads": self.num_threads,
        }


def training_params_for(model: ModelSpec) -> type[TrainingParams]:
    """The Launchpad's hyperparameters of ``model``: the platform's defaults with the model's own overrides."""
    return with_model_defaults(TrainingParams, model.name, model.params)


def retrain_when_champion_stale(model: ModelSpec) -> dg.AutomationCondition:
    """A new training set (and so the whole retraining chain) when the champion's freshness policy fails."""
    champion = keys_of(model).champion
    stale = dg.AutomationCondition.asset_matches(champion, dg.AutomationCondition.freshness_failed()).newly_true()
    return (stale & ~dg.AutomationCondition.in_progress()).with_label("champion past its freshness policy")


def retrain_on_new_data_or_code() -> dg.AutomationCondition:
    """Eager after a new training set; also when the training code version changed (the training set exists)."""
    changed = (
        dg.AutomationCondition.code_version_changed()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.in_progress()
    )
    return (dg.AutomationCondition.eager() | changed.with_label("training code changed")).with_label(
        "eager, or training code changed"
    )


def _refuse_an_unfit_window(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, months: list[str]) -> None:
    """Fail, saying what to do, when the window's months cannot make a sound training set: a month built by another
    feature set than today's (the model would learn from other features than it is tested and served on, and its
    record would name today's), or no month before the test month (its last two weeks validate early stopping)."""
    today = feature_set_version(spec)
    built_by = conn.execute(
        f"SELECT _month, string_agg(DISTINCT feature_set_version, ', ' ORDER BY feature_set_version) "
        f"FROM {qualified('features', spec.name)} WHERE _month BETWEEN ? AND ? GROUP BY 1 ORDER BY 1",
        [months[0], months[-1]],
    ).fetchall()
    stale = [(month, versions) for month, versions in built_by if versions != today]
    if stale:
        listed = ", ".join(f"{month} (by {versions})" for month, versions in stale)
        raise dg.Failure(
            description=f"features.{spec.name} of {listed} were built by another feature set than today's {today}: "
            f"rebuild those months first (materialize features/{spec.name} for them in the UI, or run "
            "feature_pipeline over them), then run this again"
        )
    before_test = shift_month(months[-1], -1)
    if before_test not in months:
        raise dg.Failure(
            description=f"no features for {before_test}, the month before the test month {months[-1]} (never "
            f"built, or its batch was rejected): its last two weeks validate early stopping. Land and build it "
            f"(`mlops replay --month {before_test}`, or land a corrected file), then run this again"
        )


def build_training_set_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)

    @dg.asset(
        key=keys.training_set,
        deps=[features_key(spec)],
        automation_condition=retrain_when_champion_stale(model),
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"duckdb"},
        pool=DUCKDB_POOL,
        description=f"`{model.name}.training_set`: the newest built months of `features.{spec.name}` (a window: "
        "`MLOPS_TRAINING_WINDOW_MONTHS`, so a retrain costs the same however many months have landed), split by "
        "time: the newest month is the test set (no model trains on it), the two weeks before it validate early stopping, the rest trains; "
        "rows whose label became known after the next split began (at its boundary, or at its first prediction if a "
        "model predicts ahead of it) are purged. Its content hash (sha256 over every "
        "value) is this asset's data version.",
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, duckdb: DuckDBResource, training: TrainingPolicy
    ) -> dg.MaterializeResult:
        window = training.window_months if config.window_months is None else config.window_months
        with duckdb.get_connection() as conn:
            if not table_exists(conn, "features", spec.name):
                raise dg.Failure(description=f"features.{spec.name} is empty: run feature_pipeline first.")
            months = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT _month FROM {qualified('features', spec.name)} ORDER BY 1"
                ).fetchall()
            ]
            built_months = len(months)
            if window:
                months = months[-window:]
            if len(months) < 2:
                fixes = []
                if built_months < 2:
                    fixes.append("land another month (`mlops replay --month YYYY-MM`) and build its features")
                if window == 1:  # a window of two or more months always holds two once two are built
                    fixes.append(f"widen the training window (window_months, {TRAINING_WINDOW_ENV}: now 1)")
                raise dg.Failure(
                    description=f"training needs at least two months (the newest is the test month), and it has "
                    f"{months} of the {built_months} built: {' and '.join(fixes)}, then run it again."
                )
            _refuse_an_unfit_window(conn, spec, months)
            rows = query_frame(
                conn,
                f"SELECT * FROM {qualified('features', spec.name)} WHERE _month BETWEEN ? AND ?",
                [months[0], months[-1]],
            )
            split = split_by_time(rows, spec, months[-1])
            del rows  # one copy of the months at a time: the split, then what the store gives back
            with transaction(conn):  # the table's shape and its rows change together, or not at all
                name = ensure_table_like(conn, *keys.training_set.path, split.frame)
                replace_where(conn, name, split.frame, "true", [])
            del split
            built = read_training_set(conn, model)
        summary = built.summary(spec.time_column)
        context.log.info(
            f"training set {built.content_hash[:12]}, test month {built.test_month}: "
            + ", ".join(f"{summary[f'{part}_rows']:,} {part}" for part in ("train", "valid", "test"))
            + " rows"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(built.content_hash),
            metadata={
                **{k: v for k, v in summary.items() if isinstance(v, int)},
                **{k: dg.MetadataValue.text(str(v)) for k, v in summary.items() if not isinstance(v, int)},
                "months": dg.MetadataValue.text(", ".join(months)),
                "window_months": window,
                "months_left_out": built_months - len(months),
            },
        )

    return training_set


def build_challenger_asset(model: ModelSpec, training_code_version: str = TRAINING_CODE_VERSION) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)
    params_class = training_params_for(model)

    @dg.asset(
        key=keys.challenger,
        deps=[keys.training_set],
        code_version=training_code_version,
        automation_condition=retrain_on_new_data_or_code(),
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"lightgbm"},
        pool=DUCKDB_POOL,
        description="The challenger: LightGBM (`lgb.train`, native categoricals, early stopping on the validation "
        f"weeks) trained on `{model.name}.training_set`, registered as a new immutable registry version with its lineage "
        "(code version, training-set hash, feature-set version, params, metrics, rows, time range, run id) and a "
        "reference profile of its features and scores. Same data, params and code give a byte-identical model.",
    )
    def challenger(
        context: dg.AssetExecutionContext,
        config: params_class,  # type: ignore[valid-type]
        duckdb: DuckDBResource,
        storage: PlatformStorage,
    ) -> dg.MaterializeResult:
        # the training set is read when the cores are ours, not held while another step's build or training runs
        with all_cores():
            with duckdb.get_connection() as conn:
                built = read_training_set(conn, model)
            trained = train_model(built, spec, config.lightgbm(), config.num_boost_round, config.early_stopping_rounds)
        valid = built.part("valid")
        valid_scores = trained.predict(valid)
        valid_metrics = metrics(valid[spec.label].to_numpy(), valid_scores)
        train = built.part("train")
        metadata = {
            "model": model.name,
            "code_version": code_version(),
            "training_set_hash": built.content_hash,
            "feature_set_version": feature_set_version(spec),
            "params": trained.params,
            "num_boost_round": config.num_boost_round,
            "best_iteration": trained.best_iteration,
            "metrics": {"valid": valid_metrics},
            "data": built.summary(spec.time_column),
            "encoder": trained.encoder.to_json(),
            "dagster_run_id": context.run.run_id,
        }
        # the reference profile needs distributions, not every row: an evenly spaced sample of at most 50k rows
        sample = train.gather_every(max(1, train.height // PROFILE_ROWS))
        profile = reference_profile(sample, spec.numeric, spec.categorical, trained.predict(sample), spec.label)
        registry = storage.registry(model.name)
        # a re-execution of this run (`mlops resume`, a retry) gets back the version an attempt stored before it
        # stopped, rather than a copy of it under the next id
        root_run_id = context.run.root_run_id or context.run.run_id
        version = registry.register(trained.text, metadata, profile, run_id=context.run.run_id, root_run_id=root_run_id)
        if registry.alias(CHALLENGER_ALIAS) != version.version:
            registry.set_alias(
                CHALLENGER_ALIAS, version.version, "challenger", "latest trained model", run_id=context.run.run_id
            )
        context.log.info(
            f"registered {version.version}: validation-weeks AUC {valid_metrics['roc_auc']:.4f}, {trained.best_iteration} trees"
        )
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version.metadata["model_sha256"]),
            metadata={
                "model_version": version.version,
                "model_sha256": dg.MetadataValue.text(version.metadata["model_sha256"]),
                "valid_roc_auc": valid_metrics["roc_auc"],
                "valid_log_loss": valid_metrics["log_loss"],
                "best_iteration": trained.best_iteration,
                "train_rows": train.height,
                "valid_rows": valid.height,
                "training_set_hash": dg.MetadataValue.text(built.content_hash),
                "feature_set_version": dg.MetadataValue.text(metadata["feature_set_version"]),
                "git_commit": dg.MetadataValue.text(str(metadata["code_version"]["git_commit"])),
                "params": dg.MetadataValue.json(trained.params),
            },
        )

    return challenger
