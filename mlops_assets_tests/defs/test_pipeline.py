"""The Dagster wiring on a real (ephemeral) instance: asset graph, the feature_pipeline job over landed months, and a
bad batch stopped by a blocking check while the last good state stays."""

import io
import time

import dagster as dg
import duckdb
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.features import write_months
from mlops_assets.core.landing import find_landed, land_file
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs import features as features_defs
from mlops_assets.defs.features import one_row_result
from mlops_assets.defs.partitions import register_months
from mlops_assets.defs.run_tags import range_tags
from mlops_assets.feeds.nycflights13 import replay_months
from mlops_assets.models.flight_delay import FLIGHT_FEATURES
from mlops_assets_tests.conftest import EVERY, MONTHLY, instance_for_test, load_month

MONTHS_LANDED = ["2013-01", "2013-02"]


PER_MODEL = [
    "training_set",
    "challenger",
    "evaluation",
    "champion",
    "online_store",
    "batch_predictions",
    "drift_report",
    "live_performance",
]


def test_asset_graph_snapshot(settings: Settings) -> None:
    """The feed's tables once, each feature table once, and every model's own assets under its name."""
    defs = build_definitions(CATALOG, settings)
    keys = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    tables = ["airlines", "airports", "flights", "planes", "weather"]
    expected = [f"{stage}/{t}" for stage in ("landing", "raw", "validated") for t in tables]
    expected += [f"features/{f.name}" for f in CATALOG.feature_tables]
    expected += [f"{m.name}/{name}" for m in CATALOG.models for name in PER_MODEL]
    assert keys == sorted(expected)
    assert {"flight_delay/champion", "flight_cancellation/champion"} <= set(keys) or len(CATALOG.models) == 1
    checks = sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in defs.resolve_asset_graph().asset_check_keys)
    assert "raw/flights:schema_contract" in checks and "validated/flights:row_contract" in checks
    assert "features/flight_features:one_row_per_entity" in checks
    for model in CATALOG.models:
        assert f"{model.name}/champion:champion_is_servable" in checks
        assert defs.resolve_job_def(f"{model.name}_retraining") is not None
        for what in ("drift", "performance", "rollback"):
            assert (
                defs.resolve_sensor_def(f"{model.name}_{what}_sensor").default_status == dg.DefaultSensorStatus.RUNNING
            )
    for job in ("feature_pipeline", "training_pipeline"):
        assert defs.resolve_job_def(job) is not None
    for sensor in ("landing_sensor", "automation"):
        assert defs.resolve_sensor_def(sensor).default_status == dg.DefaultSensorStatus.RUNNING


def test_loading_the_code_location_writes_nothing(settings: Settings) -> None:
    """Partitions come from the landing sensor and `mlops replay`, month ranges from the launch: never from a load."""
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    with instance_for_test() as instance:
        defs = build_definitions(CATALOG, settings)
        dg.Definitions.validate_loadable(defs)
        for job in ("feature_pipeline", "training_pipeline"):
            assert not any(k.startswith("dagster/asset_partition_range") for k in defs.resolve_job_def(job).tags)
        assert instance.get_dynamic_partitions("months") == []
        assert not instance.get_runs()


def _run_pipeline(settings: Settings, instance: dg.DagsterInstance, months: list[str]) -> dg.ExecuteInProcessResult:
    register_months(instance, months)
    job = build_definitions(CATALOG, settings).resolve_job_def("feature_pipeline")
    return job.execute_in_process(instance=instance, tags=range_tags(months), raise_on_error=False)


def test_feature_pipeline_builds_every_landed_month(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    with instance_for_test() as instance:
        result = _run_pipeline(settings, instance, MONTHS_LANDED)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)
        features = dg.AssetKey(["features", "flight_features"])
        materialized = instance.get_materialized_partitions(features)
        assert materialized == set(MONTHS_LANDED)
        event = instance.get_latest_materialization_event(features)
        assert event is not None and event.asset_materialization is not None
        assert "feature_set_version" in event.asset_materialization.metadata
    frames = {m: pl.read_parquet(find_landed(settings.landing_dir, "flights", m).path) for m in MONTHS_LANDED}  # type: ignore[union-attr]
    landed = {m: f.height for m, f in frames.items()}
    with_tail = {m: f.filter(pl.col("tailnum").is_not_null()).height for m, f in frames.items()}  # entity_filter
    assert _rows_by_month(settings) == {
        "raw.flights": landed,
        "validated.flights": landed,
        "features.flight_features": with_tail,
    }


def test_the_one_row_check_reports_what_the_committed_months_hold(
    warehouse: duckdb.DuckDBPyConnection, settings: Settings
) -> None:
    """The feature step's check result is the rule evaluated on the committed months, not a constant: it passes on
    the build and fails, naming the month and the problem, once the table breaks the rule behind the build's back."""
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    for month in MONTHS_LANDED:
        load_month(warehouse, settings, month, MONTHLY)
    write_months(warehouse, FLIGHT_FEATURES, MONTHS_LANDED)
    clean = one_row_result(warehouse, FLIGHT_FEATURES, MONTHS_LANDED)
    assert clean.passed, clean.description
    table = f"features.{FLIGHT_FEATURES.name}"
    warehouse.execute(f"INSERT INTO {table} SELECT * FROM {table} WHERE _month = '2013-02' LIMIT 1")
    broken = one_row_result(warehouse, FLIGHT_FEATURES, MONTHS_LANDED)
    assert not broken.passed
    assert broken.description is not None and "2013-02: 1 duplicate keys" in broken.description
    assert "2013-01:" not in broken.description  # January is as built


def _rows_by_month(settings: Settings) -> dict[str, dict[str, int]]:
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        return {
            table: dict(conn.execute(f"SELECT _month, count(*) FROM {table} GROUP BY 1").fetchall())  # type: ignore[misc]
            for table in ("raw.flights", "validated.flights", "features.flight_features")
        }


def test_the_freshness_check_tells_new_bytes_from_the_same_bytes_landed_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A month is stale when its data changed after its features were built. The same bytes landed again (a
    re-delivery: a newer file time, nothing new to ingest, and the landing sensor asks for no run) are no change and
    no false alarm; new bytes are a change until the features are built again."""
    monkeypatch.setattr(features_defs, "FEATURES_MAX_DELAY_S", 0)  # judged at once rather than a day later
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    defs = build_definitions(CATALOG, settings)
    check_step = f"features__{FLIGHT_FEATURES.name}_{features_defs.FRESHNESS_CHECK}"

    def freshness(instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
        job = defs.resolve_implicit_global_asset_job_def()
        [evaluation] = job.execute_in_process(
            instance=instance, op_selection=[check_step]
        ).get_asset_check_evaluations()
        return evaluation

    with instance_for_test() as instance:
        assert _run_pipeline(settings, instance, MONTHS_LANDED).success
        assert freshness(instance).passed
        landed = find_landed(settings.landing_dir, "flights", "2013-02")
        assert landed is not None
        time.sleep(0.01)
        landed.path.write_bytes(landed.path.read_bytes())  # the same bytes, written again
        assert (
            landed.path.stat().st_mtime
            > instance.get_latest_materialization_event(dg.AssetKey(["features", FLIGHT_FEATURES.name])).timestamp
        )  # type: ignore[union-attr]
        again = freshness(instance)
        assert again.passed, again.description
        frame = pl.read_parquet(landed.path)
        buffer = io.BytesIO()
        frame.head(frame.height - 1).write_parquet(buffer)
        land_file(settings.landing_dir, "flights", "2013-02", buffer.getvalue())  # new bytes
        stale = freshness(instance)
        assert not stale.passed and stale.description is not None
        assert "2013-02: landed" in stale.description and "built before its data last changed" in stale.description
        assert "2013-01" not in stale.description
        assert _run_pipeline(settings, instance, ["2013-02"]).success
        assert freshness(instance).passed


def test_rerunning_the_pipeline_replaces_partitions(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    with instance_for_test() as instance:
        assert _run_pipeline(settings, instance, MONTHS_LANDED).success
        first = _rows_by_month(settings)
        assert _run_pipeline(settings, instance, MONTHS_LANDED).success
    assert _rows_by_month(settings) == first


def test_a_reshaped_batch_is_stopped_by_the_blocking_check(settings: Settings) -> None:
    replay_months(settings.landing_dir, MONTHS_LANDED, every=EVERY)
    with instance_for_test() as instance:
        assert _run_pipeline(settings, instance, MONTHS_LANDED).success
        # February is re-delivered with a renamed column
        february = pl.read_parquet(find_landed(settings.landing_dir, "flights", "2013-02").path)  # type: ignore[union-attr]
        buffer = io.BytesIO()
        february.rename({"dep_delay": "departure_delay"}).write_parquet(buffer)
        land_file(settings.landing_dir, "flights", "2013-02", buffer.getvalue())

        result = _run_pipeline(settings, instance, ["2013-02"])
        assert not result.success
        failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
        assert [(c.asset_key.to_user_string(), c.check_name) for c in failed] == [("raw/flights", "schema_contract")]
        assert "column 'dep_delay' is missing (renamed to 'departure_delay'?)" in (failed[0].description or "")
        assert failed[0].metadata["rule"].value == "column_present"
        # nothing downstream of the rejected batch ran
        skipped = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events() if e.asset_key}
        assert "validated/flights" not in skipped and "features/flight_features" not in skipped
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        rows = conn.execute("SELECT count(*) FROM features.flight_features WHERE _month = '2013-02'").fetchone()
        kept = conn.execute("SELECT count(*) FROM validated.flights WHERE _month = '2013-02'").fetchone()
    # the last good February keeps serving (features: its flights with a tailnum, the table's entity_filter)
    assert kept == (february.height,) and rows == (february.filter(pl.col("tailnum").is_not_null()).height,)


def test_a_run_without_months_explains_what_to_do(settings: Settings) -> None:
    replay_months(settings.landing_dir, [], every=EVERY)  # the reference tables only
    job = build_definitions(CATALOG, settings).resolve_job_def("feature_pipeline")
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failures = [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]  # type: ignore[union-attr]
    assert failures and all("mlops replay --through 2013-03" in e and "mlops months --tags" in e for e in failures)


def test_landing_sources_report_the_file_hash_as_data_version(settings: Settings) -> None:
    replay_months(settings.landing_dir, ["2013-01"], every=EVERY)
    key = dg.AssetKey(["landing", "flights"])
    base = build_definitions(CATALOG, settings)
    # an observation job of the source: what the UI's "Observe sources" button launches
    defs = dg.Definitions.merge(base, dg.Definitions(jobs=[dg.define_asset_job("observe_landing", selection=[key])]))
    with instance_for_test() as instance:
        register_months(instance, ["2013-01"])
        assert defs.resolve_job_def("observe_landing").execute_in_process(instance=instance).success
        [record] = instance.fetch_observations(key, limit=1).records
    observation = record.asset_observation
    assert observation is not None and observation.partition == "2013-01"
    landed = find_landed(settings.landing_dir, "flights", "2013-01")
    assert landed is not None and observation.tags["dagster/data_version"] == landed.sha256
