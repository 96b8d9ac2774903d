"""The landing sensor evaluated on a real instance: run requests, new partitions and the cursor; how often the daemon
evaluates the sensors."""

import io
import json
from datetime import datetime

import dagster as dg
import duckdb
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.features import compute_features
from mlops_assets.core.ingest import record_misnamed
from mlops_assets.core.landing import checksum_path, find_landed, land_file, landed_months, misnamed_files
from mlops_assets.core.settings import DEFAULT_SENSOR_INTERVAL_S, SENSOR_INTERVAL_ENV, Settings, load_settings
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.features import freshness_check_keys
from mlops_assets.defs.ingest import MISNAMED_TAG
from mlops_assets.defs.keys import features_key, raw_key
from mlops_assets.defs.partitions import calendar_order, register_months
from mlops_assets.defs.progress import root_cause
from mlops_assets.defs.resources import PlatformStorage
from mlops_assets.defs.run_tags import RANGE_END_TAG, RANGE_START_TAG
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets.ticks import Ticker, apply_partition_requests
from mlops_assets_tests.conftest import instance_for_test


def _tick(settings: Settings, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = build_definitions(CATALOG, settings).resolve_sensor_def("landing_sensor")
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"storage": PlatformStorage(data_dir=str(settings.data_dir))}
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_new_file_one_request_same_file_none_changed_file_a_new_request(settings: Settings) -> None:
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    with instance_for_test() as instance:
        first = _tick(settings, instance, None)
        assert [(r.partition_key, r.run_key) for r in first.run_requests or []] == [
            ("2013-01", first.run_requests[0].run_key)  # type: ignore[index]
        ]
        assert [list(r.partition_keys) for r in first.dynamic_partitions_requests or []] == [["2013-01"]]
        cursor = json.loads(first.cursor or "{}")
        assert set(cursor) == {
            "flights/2013-01.parquet",
            "weather/2013-01.parquet",
            "reference/airlines.parquet",
            "reference/airports.parquet",
            "reference/planes.parquet",
        }
        instance.add_dynamic_partitions("months", ["2013-01"])  # what the daemon does with the request

        same = _tick(settings, instance, first.cursor)
        assert not same.run_requests and not same.dynamic_partitions_requests and same.cursor == first.cursor

        january = pl.read_parquet(find_landed(settings.landing_dir, "flights", "2013-01").path)  # type: ignore[union-attr]
        buffer = io.BytesIO()
        january.head(january.height - 1).write_parquet(buffer)  # a corrected re-delivery
        land_file(settings.landing_dir, "flights", "2013-01", buffer.getvalue())
        changed = _tick(settings, instance, same.cursor)
        [request] = changed.run_requests or []
        assert request.partition_key == "2013-01" and request.run_key != first.run_requests[0].run_key  # type: ignore[index]
        assert not changed.dynamic_partitions_requests  # the month is a partition already


def test_a_late_month_is_put_in_calendar_order_with_its_history(settings: Settings) -> None:
    """April lands after May: a run over a range of months covers the partitions between its ends in the order they
    were added, so April would be left out of `make pipeline`'s range. The sensor deletes May and adds April and May
    again; May keeps its materializations. The same through `mlops replay` (register_months), and for a month before
    every other (December 2012). A month that lands late or changes is run with the built months that read it."""
    replay_months(settings.landing_dir, ["2013-01", "2013-02", "2013-03", "2013-05"], every=50)
    features = features_key(CATALOG.models[0].features)

    def built(month: str) -> None:  # what a month's run leaves: every feature table of the month materialized
        for spec in CATALOG.feature_tables:
            instance.report_runless_asset_event(dg.AssetMaterialization(features_key(spec), partition=month))

    def changed(month: str) -> None:  # a corrected re-delivery: one row fewer
        frame = pl.read_parquet(find_landed(settings.landing_dir, "flights", month).path)  # type: ignore[union-attr]
        buffer = io.BytesIO()
        frame.head(frame.height - 1).write_parquet(buffer)
        land_file(settings.landing_dir, "flights", month, buffer.getvalue())

    with instance_for_test() as instance:
        first = _tick(settings, instance, None)
        apply_partition_requests(instance, first.dynamic_partitions_requests or [])  # as the daemon does
        assert instance.get_dynamic_partitions("months") == ["2013-01", "2013-02", "2013-03", "2013-05"]
        for month in ("2013-02", "2013-03"):  # January's and May's runs failed: never built
            built(month)
        replay_months(settings.landing_dir, ["2013-04"], every=50)
        second = _tick(settings, instance, first.cursor)
        # May reads April's end, but its features were never built: nothing stale, April's run is April's alone
        assert [r.partition_key for r in second.run_requests or []] == ["2013-04"]
        apply_partition_requests(instance, second.dynamic_partitions_requests or [])
        assert instance.get_dynamic_partitions("months") == ["2013-01", "2013-02", "2013-03", "2013-04", "2013-05"]
        built("2013-04")
        built("2013-05")
        # a corrected February: March reads its end, and so does April (35 days before April 1st is February 25th)
        changed("2013-02")
        third = _tick(settings, instance, second.cursor)
        [corrected] = third.run_requests or []
        assert corrected.partition_key is None, corrected.tags
        assert (corrected.tags[RANGE_START_TAG], corrected.tags[RANGE_END_TAG]) == ("2013-02", "2013-04")
        # a corrected April: May's features, built since, read it
        changed("2013-04")
        [april] = _tick(settings, instance, third.cursor).run_requests or []
        assert (april.tags[RANGE_START_TAG], april.tags[RANGE_END_TAG]) == ("2013-04", "2013-05")
        assert instance.get_materialized_partitions(features) == {"2013-02", "2013-03", "2013-04", "2013-05"}
        assert register_months(instance, ["2012-12", "2013-06"]) == ["2012-12", "2013-06"]
        assert instance.get_dynamic_partitions("months")[0] == "2012-12"
        assert instance.get_dynamic_partitions("months") == sorted(instance.get_dynamic_partitions("months"))
        assert instance.get_materialized_partitions(features) == {"2013-02", "2013-03", "2013-04", "2013-05"}


def test_a_late_month_leaves_the_months_after_it_as_a_full_rebuild_would_build_them(settings: Settings) -> None:
    """June landed before May: June's features were built without May (its route and carrier windows read the 35
    days before it) and stayed so, and the models evaluated, scored and retrained on them. With May's run covering
    June, June's stored features equal those of a build of June with every month there."""
    replay_months(settings.landing_dir, ["2013-04", "2013-06"], every=50)
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        ticker = Ticker(defs, instance, ("landing_sensor",), automation=False)
        ticker.settle()
        replay_months(settings.landing_dir, ["2013-05"], every=50)
        [late] = ticker.settle()
        assert late.success and late.partition is None  # a range: May through June
    spec = CATALOG.models[0].features
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        stored = conn.sql(f"SELECT * FROM features.{spec.name} WHERE _month = '2013-06'").pl()
        rebuilt = compute_features(conn, spec, "2013-06")
    order = [*spec.key]
    assert stored.height == rebuilt.height > 0
    assert stored.sort(order).equals(rebuilt.select(stored.columns).sort(order))


def test_a_month_after_a_rejected_one_is_not_built_over_the_gap_until_it_is_corrected(settings: Settings) -> None:
    """February's flights are rejected: March's look-back reads February, so March built then counted nothing there
    (a carrier's 7-day flights ~40 instead of ~800) and was scored, monitored and trained on (a hunt found it). Its
    features are refused, saying why; the corrected February's run builds February and March."""
    replay_months(settings.landing_dir, ["2013-01", "2013-02", "2013-03"], every=50)
    good_february = find_landed(settings.landing_dir, "flights", "2013-02").path.read_bytes()  # type: ignore[union-attr]
    land_file(settings.landing_dir, "flights", "2013-02", good_february[: len(good_february) // 2])  # cut short
    defs = build_definitions(CATALOG, settings)
    features = {features_key(spec) for spec in CATALOG.feature_tables}
    with instance_for_test() as instance:
        ticker = Ticker(defs, instance, ("landing_sensor",), automation=False)
        runs = {run.partition: run for run in ticker.settle()}
        assert [runs[m].success for m in ("2013-01", "2013-02", "2013-03")] == [True, False, False]
        failures = instance.all_logs(runs["2013-03"].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        said = {root_cause(e.dagster_event.step_failure_data.error) for e in failures}  # type: ignore[union-attr]
        assert any(
            "look-back reads a month without validated rows (2013-03 reads flights of 2013-02" in str(line)
            and "Land that month: its run builds these too" in str(line)
            for line in said
        ), said
        assert all(instance.get_materialized_partitions(key) == {"2013-01"} for key in features)
        land_file(settings.landing_dir, "flights", "2013-02", good_february)  # the corrected delivery
        [corrected] = ticker.settle()
        assert corrected.success and (corrected.tags[RANGE_START_TAG], corrected.tags[RANGE_END_TAG]) == (
            "2013-02",
            "2013-03",
        )
        assert all(instance.get_materialized_partitions(key) == {"2013-01", "2013-02", "2013-03"} for key in features)
    spec = CATALOG.models[0].features
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:  # as a build with every month there
        stored = conn.sql(f"SELECT * FROM features.{spec.name} WHERE _month = '2013-03'").pl()
        rebuilt = compute_features(conn, spec, "2013-03")
    assert stored.sort([*spec.key]).equals(rebuilt.select(stored.columns).sort([*spec.key]))


def test_a_batch_rejected_for_its_checksum_file_runs_again_once_only_that_file_is_fixed(settings: Settings) -> None:
    """The same bytes, now vouched for: a new state of the file, though its bytes were read by the rejected run (the
    shortcut for files a run already ingested counts only an ingest that accepted them)."""
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    landed = find_landed(settings.landing_dir, "flights", "2013-01")
    assert landed is not None
    sidecar = checksum_path(landed.path)
    sidecar.write_text("0" * 64 + "  2013-01.parquet\n")  # damaged
    defs = build_definitions(CATALOG, settings)
    with instance_for_test() as instance:
        ticker = Ticker(defs, instance, ("landing_sensor",), automation=False)
        [rejected] = ticker.settle()
        assert not rejected.success
        sidecar.write_text(f"{landed.sha256}  2013-01.parquet\n")  # fixed, the batch untouched
        [again] = ticker.settle()
        assert again.success and again.partition == "2013-01"
        assert all(instance.get_materialized_partitions(features_key(s)) == {"2013-01"} for s in CATALOG.feature_tables)


def test_partitions_out_of_place_are_the_only_ones_moved() -> None:
    assert calendar_order(["01", "02", "03"], ["04"]) == ([], ["04"])
    assert calendar_order(["01", "02", "05"], ["04"]) == (["05"], ["04", "05"])
    assert calendar_order(["01", "02", "05", "04"], []) == (["05", "04"], ["04", "05"])  # an instance out of order
    assert calendar_order(["02", "03"], ["01", "03"]) == (["02", "03"], ["01", "02", "03"])
    assert calendar_order([], ["02", "01"]) == ([], ["01", "02"])
    assert calendar_order(["01"], []) == ([], [])


def test_a_new_month_adds_a_partition_and_requests_only_itself(settings: Settings) -> None:
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    with instance_for_test() as instance:
        first = _tick(settings, instance, None)
        instance.add_dynamic_partitions("months", ["2013-01"])
        replay_months(settings.landing_dir, ["2013-02"], every=50)
        second = _tick(settings, instance, first.cursor)
        assert [r.partition_key for r in second.run_requests or []] == ["2013-02"]
        assert [list(r.partition_keys) for r in second.dynamic_partitions_requests or []] == [["2013-02"]]
        # one run refreshes the month end to end; unchanged reference tables are not ingested again
        selected = {k.to_user_string() for k in first.run_requests[0].asset_selection or []}  # type: ignore[index]
        again = {k.to_user_string() for k in second.run_requests[0].asset_selection or []}  # type: ignore[index]
        month_part = {"raw/flights", "validated/weather", *(f"features/{f.name}" for f in CATALOG.feature_tables)}
        for model in CATALOG.models:  # every model over the feed is refreshed by the same run
            month_part |= {
                f"{model.name}/{a}" for a in ("online_store", "batch_predictions", "drift_report", "live_performance")
            }
        assert month_part <= selected and month_part <= again
        assert "raw/planes" in selected and "raw/planes" not in again


def test_a_month_waiting_for_a_table_says_which_in_the_ticks_skip_reason(settings: Settings) -> None:
    """A month whose flights landed but not its weather asks for nothing: the tick says which table it waits for (the
    UI showed "empty result", the month's wait said only in the daemon's log)."""
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    weather = find_landed(settings.landing_dir, "weather", "2013-01")
    assert weather is not None
    later = [settings.data_dir / "weather.parquet", settings.data_dir / "weather.parquet.sha256"]
    for landed_file, aside in zip((weather.path, checksum_path(weather.path)), later, strict=True):
        landed_file.rename(aside)  # the weather of the month (and its checksum file) lands later
    with instance_for_test() as instance:
        waiting = _tick(settings, instance, None)
        assert not waiting.run_requests and not waiting.dynamic_partitions_requests
        assert waiting.skip_reason is not None
        assert waiting.skip_reason.skip_message == "nycflights13: 2013-01 waits for weather (landed: flights)"
        for landed_file, aside in zip((weather.path, checksum_path(weather.path)), later, strict=True):
            aside.rename(landed_file)
        landed = _tick(settings, instance, waiting.cursor)
        assert [r.partition_key for r in landed.run_requests or []] == ["2013-01"] and landed.skip_reason is None


def test_months_already_ingested_by_a_job_are_not_requested_again(settings: Settings) -> None:
    from mlops_assets.defs.partitions import register_months
    from mlops_assets.defs.run_tags import range_tags

    replay_months(settings.landing_dir, ["2013-01"], every=50)
    with instance_for_test() as instance:
        register_months(instance, ["2013-01"])
        job = build_definitions(CATALOG, settings).resolve_job_def("feature_pipeline")
        assert job.execute_in_process(instance=instance, tags=range_tags(["2013-01"])).success
        first = _tick(settings, instance, None)  # the sensor's first tick, after the job built January
        assert not first.run_requests
        assert "flights/2013-01.parquet" in json.loads(first.cursor or "{}")
        replay_months(settings.landing_dir, ["2013-01"], every=40)  # January re-delivered with other bytes
        assert [r.partition_key for r in _tick(settings, instance, first.cursor).run_requests or []] == ["2013-01"]
        # ingested before the sensor's next tick (a failed run re-executed after the file was corrected): the run
        # already read those bytes, and another would only refresh the month again
        assert job.execute_in_process(instance=instance, tags=range_tags(["2013-01"])).success
        assert not _tick(settings, instance, first.cursor).run_requests


def test_a_misnamed_file_is_reported_once_as_an_observation_and_never_run(settings: Settings) -> None:
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    january = find_landed(settings.landing_dir, "flights", "2013-01")
    assert january is not None
    (settings.landing_dir / "flights" / "2013-05.PARQUET").write_bytes(january.path.read_bytes())
    with instance_for_test() as instance:
        first = _tick(settings, instance, None)
        assert [r.partition_key for r in first.run_requests or []] == ["2013-01"]  # the misnamed file asks for no run
        misnamed = [e for e in first.asset_events or [] if e.tags.get(MISNAMED_TAG) == "true"]
        landed = {str(e.metadata["source_file"].value) for e in first.asset_events or [] if e not in misnamed}
        # the landed files are recorded as the landing sources' versions before their run (never the misnamed one)
        assert "flights/2013-01.parquet" in landed and "flights/2013-05.PARQUET" not in landed
        [observation] = misnamed
        assert isinstance(observation, dg.AssetObservation)
        assert observation.asset_key == dg.AssetKey(["landing", "flights"])
        assert observation.metadata["misnamed_file"].value == "flights/2013-05.PARQUET"
        assert "parquet" in str(observation.metadata["reason"].value).lower()
        again = _tick(settings, instance, first.cursor)
        assert not again.asset_events  # said once per version of the file


def test_an_unreadable_file_is_reported_and_every_other_month_still_runs(settings: Settings) -> None:
    """A broken link (or a file the daemon's user may not read) named as a batch: it failed every tick of the landing
    sensor, so no month was ingested. Now it is reported once, like a misnamed file, and the good months run."""
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    broken = settings.landing_dir / "flights" / "2013-02.parquet"
    broken.symlink_to(settings.landing_dir / "nowhere.parquet")
    assert landed_months(settings.landing_dir) == ["2013-01"]  # not a landed month (`mlops months` leaves it out)
    with instance_for_test() as instance:
        first = _tick(settings, instance, None)
        assert [r.partition_key for r in first.run_requests or []] == ["2013-01"]
        [observation] = [e for e in first.asset_events or [] if e.tags.get(MISNAMED_TAG) == "true"]
        assert observation.metadata["misnamed_file"].value == "flights/2013-02.parquet"
        assert "unreadable (a link to nothing)" in str(observation.metadata["reason"].value)
        assert not _tick(settings, instance, first.cursor).asset_events  # said once
        conn = duckdb.connect()
        logged = record_misnamed(conn, misnamed_files(settings.landing_dir), "run", datetime(2013, 2, 1))
        assert [(m.relative_name, m.unreadable) for m in logged] == [("flights/2013-02.parquet", True)]
        assert conn.execute("SELECT rule, sha256 FROM quarantine.batches").fetchall() == [("unreadable_file", None)]


def test_how_often_the_daemon_evaluates_every_sensor_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$MLOPS_SENSOR_INTERVAL_S`` reaches every sensor of the code location (landing, each model's, automation,
    run recovery)."""
    intervals = {s.name: s.minimum_interval_seconds for s in build_definitions(CATALOG, load_settings()).sensors or []}
    assert len(intervals) == 3 + 3 * len(CATALOG.models)
    assert set(intervals.values()) == {DEFAULT_SENSOR_INTERVAL_S}
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, "5")
    intervals = {s.name: s.minimum_interval_seconds for s in build_definitions(CATALOG, load_settings()).sensors or []}
    assert set(intervals.values()) == {5} and "landing_sensor" in intervals and "automation" in intervals
    for wrong in ("0", "-5", "soon"):
        monkeypatch.setenv(SENSOR_INTERVAL_ENV, wrong)
        with pytest.raises(ValueError, match=SENSOR_INTERVAL_ENV):
            load_settings()


def test_a_landing_run_runs_the_checks_of_its_assets_but_not_the_hourly_freshness(settings: Settings) -> None:
    """The run a landing request starts evaluates the blocking checks of what it writes; the features' freshness is
    left to the automation sensor's clock, as in the ``landing_refresh`` job."""
    replay_months(settings.landing_dir, ["2013-01"], every=50)
    defs = build_definitions(CATALOG, settings)
    freshness = set(freshness_check_keys(list(CATALOG.feature_tables)))
    with instance_for_test() as instance:
        [run] = Ticker(defs, instance, ("landing_sensor",), automation=False).tick()
        assert run.success and run.partition == "2013-01"
        stored = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        evaluated = {r.event_log_entry.dagster_event.event_specific_data.asset_check_key for r in stored}  # type: ignore[union-attr]
    assert dg.AssetCheckKey(raw_key(NYCFLIGHTS13.table("flights")), "schema_contract") in evaluated
    assert {key.asset_key for key in evaluated} >= {features_key(spec) for spec in CATALOG.feature_tables}
    assert not evaluated & freshness


def test_a_long_skip_reason_keeps_whole_notes_and_says_how_many_more() -> None:
    """Cut at 1000 characters, the last note ended mid-word ("a retrain would see nothing newe")."""
    from mlops_assets.defs.sensors import skip_reason_of

    notes = [f"2013-{m:02d}: " + "x" * 180 for m in range(1, 13)]
    reason = skip_reason_of(notes)
    assert len(reason) <= 1000 and reason.endswith("more (the tick's log has each)")
    shown = reason.split("; and ")[0].split("; ")
    assert all(note in notes for note in shown)
    assert reason.split("; and ")[1].startswith(f"{len(notes) - len(shown)} more")
    assert skip_reason_of(notes[:2]) == "; ".join(notes[:2])
    assert skip_reason_of(["y" * 2000]) == "y" * 997 + "..."
