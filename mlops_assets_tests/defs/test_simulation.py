"""The replayed months on a thin real slice (every 20th flight): the platform's own sensors and automation, evaluated
tick by tick on a real instance, retrain on drift and promote, and every score stays out of sample.

The test replays the first half of 2013 (three months after the first training), not the year `mlops simulate` replays
by default: spring's drift already gives a retrain and a promotion (April), every month after runs the same code, and
the year took twice as long. The later months' rollbacks are tested on their own (test_rollback.py)."""

import time
from dataclasses import replace
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import load_settings
from mlops_assets.core.status import store_status
from mlops_assets.core.timeline import champion_vs_frozen, months_champion_wins
from mlops_assets.models.flight_delay import FLIGHT_DELAY
from mlops_assets.simulation import MARKER, SimulationError, reset_data_dir, simulate


def test_the_replayed_months_retrain_on_drift_and_promote(tmp_path: Path) -> None:
    """Also: a retrain that fails (here in June: January's features marked as built by another feature set, as after
    a feature change without a rebuild) is recorded in the timeline and the simulation goes on."""
    data_dir = tmp_path / "simulation"
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.endswith("landing 2013-06"):
            with duckdb.connect(str(load_settings(data_dir).warehouse_path)) as conn:
                conn.execute("UPDATE features.flight_features SET feature_set_version = 'v0' WHERE _month = '2013-01'")

    timeline = simulate(data_dir, FLIGHT_DELAY, "2013-01", "2013-06", every=20, say=say)

    assert timeline["month"].to_list() == ["2013-04", "2013-05", "2013-06"]
    drift_retrains = timeline.filter(pl.col("retrained") & pl.col("retrain_trigger").str.contains("drift"))
    assert drift_retrains.height >= 1 and drift_retrains["retrain_reason"].str.contains("drift").all()
    assert timeline["promoted"].sum() >= 1
    june = timeline.row(2, named=True)
    assert june["retrained"] and not june["promoted"] and june["champion_after"] == june["champion_version"]
    assert (
        "flight_delay__training_set: features.flight_features of 2013-01 (by v0) were built by another"
        in (june["failed_runs"])
    )
    assert (timeline["failed_runs"][:2] == "").all()
    assert any("2013-06: run " in line and "failed" in line for line in lines)
    assert "failed runs in 2013-06 (the champion kept serving" in lines[-1]
    assert timeline["champion_live_auc"].is_not_null().all() and timeline["frozen_live_auc"].is_not_null().all()
    assert (timeline["frozen_version"] == "v0001").all()  # the first model, frozen as the shadow
    assert lines[-1].startswith("Done in") and "flight_delay.timeline" in lines[-1]

    settings = load_settings(data_dir)
    registry = Registry(settings.model("flight_delay").registry_dir)
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        stored = conn.sql("SELECT month, retrained, promoted FROM flight_delay.timeline ORDER BY month").pl()
        scored = conn.sql("SELECT DISTINCT _month, model_version FROM flight_delay.batch_predictions").pl()
    assert stored.equals(timeline.select("month", "retrained", "promoted"))
    # out of sample: no month was scored by a model whose training data reached into it
    for month, version in scored.iter_rows():
        assert month >= registry.get(version).metadata["data"]["test_month"], (month, version)
    reports = settings.model("flight_delay").reports_dir
    assert (reports / "timeline" / "timeline.png").stat().st_size > 10_000
    # `mlops status` shows the same story: every replayed month with its drift verdict and live AUC
    status = store_status(CATALOG, (FLIGHT_DELAY,), settings)
    monitored = {m["month"]: m for m in status["models"]["flight_delay"]["monitoring"]}
    assert all(monitored[m]["features"] == len(FLIGHT_DELAY.features.features) for m in timeline["month"])
    assert all(any(k.startswith("batch champion") for k in monitored[m]["live_roc_auc"]) for m in timeline["month"])
    assert (reports / "drift" / "2013-06" / "report.md").exists()


def test_a_data_dir_that_cannot_be_one_is_said_in_a_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SimulationError, match="is a file, not a folder: pick another --data-dir"):
        reset_data_dir(afile)
    with pytest.raises(SimulationError, match=r"cannot use .*afile/below \(Not a directory\): pick another"):
        reset_data_dir(afile / "below")


def test_a_month_whose_champion_is_the_frozen_model_compares_nothing() -> None:
    """The frozen first model still serving (a short simulation, or no promotion yet) is not a month the champion
    beat or lost to it."""
    frame = pl.DataFrame(
        {
            "month": ["2013-04", "2013-05", "2013-06"],
            "champion_version": ["v0001", "v0002", "v0002"],
            "frozen_version": ["v0001", "v0001", "v0001"],
            "champion_live_auc": [0.70, 0.74, 0.71],
            "frozen_live_auc": [0.70, 0.72, 0.73],
        }
    )
    assert months_champion_wins(frame, "2013-04") == (1, 2)
    assert months_champion_wins(frame.head(1), "2013-04") == (0, 0)
    assert champion_vs_frozen(0, 0, "2013-04").startswith("No month from 2013-04 on had a champion other than")


def test_a_simulation_never_clears_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SimulationError, match="not made by `mlops simulate`"):
        reset_data_dir(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    reset_data_dir(tmp_path / "fresh")
    assert (tmp_path / "fresh" / MARKER).exists()


def test_a_promotion_an_automation_run_made_counts_for_its_month(tmp_path: Path) -> None:
    """The retrain run failed (or was interrupted) after its evaluation, and automation promoted the challenger
    eagerly: the timeline said promoted=False, no decision, and "v0005 serves on" while v0006 served."""
    import dagster as dg

    from mlops_assets.core.registry import CHAMPION
    from mlops_assets.simulation import month_row
    from mlops_assets.ticks import ExecutedRun
    from mlops_assets_tests.conftest import instance_for_test

    registry = Registry(tmp_path / "registry")
    first = registry.register("tree\n", {"model": "flight_delay"}, {}, run_id="bootstrap").version
    registry.set_alias(CHAMPION, first, "promoted", "first model", run_id="bootstrap")
    retrain = ExecutedRun("drift_sensor", "run-retrain", False, (), None, {"mlops/trigger": "drift"})
    automation = ExecutedRun("automation", "run-automation", True, (), None, {"mlops/trigger": "automation"})
    second = registry.register("tree\n\n", {"model": "flight_delay"}, {}, run_id=retrain.run_id).version
    registry.set_alias(CHAMPION, second, "promoted", "AUC 0.74 vs 0.72", run_id=automation.run_id)
    with instance_for_test() as instance:
        assert isinstance(instance, dg.DagsterInstance)
        row = month_row(FLIGHT_DELAY, "2013-08", instance, registry, [retrain, automation])
    assert (row.retrained, row.challenger_version, row.promoted) == (True, second, True)
    assert (row.decision, row.champion_after) == ("AUC 0.74 vs 0.72", second)


def test_an_interrupted_run_stops_the_ticker_where_a_failed_run_does_not(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM during a run: Dagster ends the run (marked failed) and forgets the signal, so `mlops
    simulate` went on to the next month as if a run had merely failed."""
    import os
    import signal

    import dagster as dg

    from mlops_assets.defs.progress import root_cause
    from mlops_assets.threaded_executor import threaded_executor
    from mlops_assets.ticks import RunInterrupted, Ticker
    from mlops_assets_tests.conftest import instance_for_test

    @dg.asset
    def stopped() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # as a person pressing Ctrl-C while the step runs
        time.sleep(1.0)  # the run's loop sees the request while the step still runs

    @dg.asset
    def broken() -> None:
        raise ValueError("a failed run is an outcome, not a stop")

    jobs = [
        dg.define_asset_job(name, selection=[name], executor_def=threaded_executor) for name in ("stopped", "broken")
    ]
    defs = dg.Definitions(assets=[stopped, broken], jobs=jobs)
    with instance_for_test() as instance:
        ticker = Ticker(defs, instance, sensors=())
        assert not ticker.execute_job("broken", {}).success  # no exception: the caller goes on
        with pytest.raises(RunInterrupted) as stop:
            ticker.execute_job("stopped", {})
        run = instance.get_run_by_id(stop.value.run.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        error = failure.event_log_entry.dagster_event.event_specific_data.error  # type: ignore[union-attr]
        # the run's console line: said in words (Dagster's error has no message: the line read its class path)
        assert root_cause(error).startswith("interrupted (Ctrl-C, SIGTERM, or the run terminated from the UI)")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Dagster's handler is gone again


def test_a_rollback_of_the_month_shows_in_the_timeline_its_report_and_the_console(tmp_path: Path) -> None:
    """The rollback sensor's decision is no run: the timeline had no trace of it but a champion_after that differed,
    and the console called the restored version "kept"."""
    from mlops_assets.core.registry import CHAMPION, rollback
    from mlops_assets.core.timeline import timeline_frame, timeline_markdown
    from mlops_assets.simulation import month_line, month_row
    from mlops_assets.ticks import ExecutedRun
    from mlops_assets_tests.conftest import instance_for_test

    registry = Registry(tmp_path / "registry")
    first = registry.register("tree\n", {"model": "flight_delay"}, {}, run_id="bootstrap").version
    second = registry.register("tree\n\n", {"model": "flight_delay"}, {}, run_id="retrain-1").version
    registry.set_alias(CHAMPION, first, "promoted", "first model")
    registry.set_alias(CHAMPION, second, "promoted", "better AUC")
    logged = len(registry.events())
    rollback(registry, f"{second}'s live AUC fell by 0.08", to=first)
    retrain = ExecutedRun("rollback_sensor", "retrain-2", True, (), None, {"mlops/trigger": "rollback"})
    third = registry.register("tree\n\n\n", {"model": "flight_delay"}, {}, run_id=retrain.run_id).version
    registry.log_event("rejected", version=third, reason="AUC -0.01", run_id=retrain.run_id)
    with instance_for_test() as instance:
        row = month_row(FLIGHT_DELAY, "2013-09", instance, registry, [retrain], registry.events()[logged:])
    assert (row.rolled_back_to, row.champion_after, row.challenger_version, row.promoted) == (
        first,
        first,
        third,
        False,
    )
    # the version taken out, then the retrain's challenger (it said "v0003 rolled back to v0001, kept out")
    assert month_line(replace(row, champion_version=second)).endswith(
        f"champion {second} AUC - vs frozen -; {second} rolled back to {first}; retrained (rollback): {third} kept "
        f"out, {first} serves"
    )
    # a declined rollback shows as well (it was in the event log and the retrain's reason only)
    registry.log_event("rollback_declined", version=first, reason="rollback declined after 2013-10", month="2013-10")
    with instance_for_test() as instance:
        declined = month_row(FLIGHT_DELAY, "2013-10", instance, registry, [], registry.events()[-1:])
    assert declined.rollback_declined and not declined.rolled_back_to
    assert "; rollback declined (the version it would go to did no better on the month); no retrain" in month_line(
        declined
    )
    assert "rollback_declined" in timeline_markdown(timeline_frame([declined]), b"png", "2013-10", "t")
    frame = timeline_frame([row])
    assert frame["rolled_back_to"].to_list() == [first]
    assert "rolled_back_to" in timeline_markdown(frame, b"png", "2013-09", "flight_delay.timeline")


def test_a_stop_signal_a_handler_swallowed_still_stops_the_ticker_after_its_run() -> None:
    """A SIGTERM after a run's last check for one: Dagster's handler took it and forgot it when the run ended, and the
    simulation ran the whole year and exited 0. The wakeup fd hears every signal, whoever handles it."""
    import os
    import signal

    import dagster as dg

    from mlops_assets.threaded_executor import threaded_executor
    from mlops_assets.ticks import RunInterrupted, StopSignals, Ticker
    from mlops_assets_tests.conftest import instance_for_test

    @dg.asset
    def fine() -> None:
        """Runs to its end."""

    defs = dg.Definitions(
        assets=[fine], jobs=[dg.define_asset_job("fine", selection=[fine], executor_def=threaded_executor)]
    )
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    with StopSignals() as stop, instance_for_test() as instance:
        ticker = Ticker(defs, instance, sensors=(), stop_requested=stop.received)
        assert ticker.execute_job("fine", {}).success  # no signal: it goes on
        previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as Dagster's handler in a run: taken, forgotten
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        finally:
            signal.signal(signal.SIGTERM, previous)
        with pytest.raises(RunInterrupted) as stopped:
            ticker.execute_job("fine", {})
        assert stopped.value.run.success  # the run in progress ended well; none starts after it
    assert signal.set_wakeup_fd(before) == before  # the wakeup fd given back
