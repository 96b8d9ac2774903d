"""``mlops simulate``: the replayed year of one model as a scenario, decided by the platform's own sensors and
automation.

From an empty data directory, with only that model registered: land the first three months of its feed, build them and
train the first model (the same `<model>_retraining` job its sensors request), freeze that model as the `shadow` so
every later month is also scored by it,
then land one month at a time and let the sensors and automation conditions act, tick by tick, on a real Dagster
instance (``ticks.Ticker``). What happened each month becomes ``monitoring.timeline`` and a plot.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.landing import month_range, write_atomic
from mlops_assets.core.records import DriftSummary, LiveSummary
from mlops_assets.core.registry import CHAMPION, SHADOW, Registry
from mlops_assets.core.settings import Settings, load_settings, prepare_dagster_home
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.store import connect_warehouse, ensure_table_like, replace_where
from mlops_assets.core.timeline import (
    TimelineRow,
    champion_vs_frozen,
    months_champion_wins,
    timeline_frame,
    timeline_markdown,
    timeline_plot,
)
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.keys import keys_of, retraining_job_name, sensor_name
from mlops_assets.defs.monitor import latest_month_record
from mlops_assets.defs.progress import root_cause
from mlops_assets.defs.sensors import REASON_TAG, TRIGGER_TAG
from mlops_assets.ticks import ExecutedRun, Ticker

MARKER = ".mlops-simulation"
BOOTSTRAP_MONTHS = 3


def compared_from(months: list[str]) -> str:
    """The first month the champion is compared with the frozen first model: the third month scored (the first two
    are scored by the first model itself, or by its first successor)."""
    return months[min(BOOTSTRAP_MONTHS + 2, len(months) - 1)]


def simulation_sensors(model: ModelSpec) -> tuple[str, ...]:
    """In the daemon's order of definition: a rollback is decided before drift and performance ask for a retrain."""
    return ("landing_sensor", *(sensor_name(model, what) for what in ("rollback", "drift", "performance")))


class SimulationError(RuntimeError):
    pass


def check_data_dir(data_dir: Path) -> None:
    """:class:`SimulationError` when ``data_dir`` cannot be a simulation's folder (a file, a folder of other things):
    said before anything is printed, cleared or landed."""
    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise SimulationError(f"{data_dir} is a file, not a folder: pick another --data-dir")
        if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
            raise SimulationError(
                f"{data_dir} is not empty and was not made by `mlops simulate`: pick another --data-dir"
            )
    except OSError as error:  # no permission to look
        raise SimulationError(f"cannot use {data_dir} ({error.strerror or error}): pick another --data-dir") from None


def reset_data_dir(data_dir: Path) -> None:
    """Start from empty: a folder an earlier simulation made is cleared; any other non-empty folder is refused."""
    check_data_dir(data_dir)
    try:
        if data_dir.exists() and any(data_dir.iterdir()):
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / MARKER).write_text("made by `mlops simulate`; cleared by the next simulation\n")
    except OSError as error:  # a parent that is a file, no permission, a read-only disk
        raise SimulationError(f"cannot use {data_dir} ({error.strerror or error}): pick another --data-dir") from None


def failed_runs(instance: dg.DagsterInstance, runs: list[ExecutedRun]) -> str:
    """The failed runs among ``runs``, each with its trigger, failed step and the first line of its error."""
    said = []
    for run in (r for r in runs if not r.success):
        failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        steps = [
            f"{f.step_key}: {_error_line(f.dagster_event.step_failure_data.error)}"
            for f in failures
            if f.dagster_event and f.dagster_event.step_failure_data and f.dagster_event.step_failure_data.error
        ]
        what = run.tags.get(TRIGGER_TAG) or run.requested_by
        said.append(f"run {run.run_id[:8]} ({what}) failed: " + ("; ".join(steps) or "see the run in the UI"))
    return " | ".join(said)


def _error_line(error: Any) -> str:
    """A step's error in one line, as the run's console says it (``defs.progress.root_cause``)."""
    return (root_cause(error) or error.cls_name)[:300]


def month_row(
    model: ModelSpec,
    month: str,
    instance: dg.DagsterInstance,
    registry: Registry,
    runs: list[ExecutedRun],
    month_events: list[dict[str, Any]] | None = None,
) -> TimelineRow:
    """What the platform did about ``month``, from the monitoring records, the runs and the registry's events
    (``month_events``: those logged while the month was handled, where the rollback sensor's decision is: a sensor
    tick is no run)."""
    keys = keys_of(model)
    drift = latest_month_record(instance, keys.drift, DriftSummary, month) or DriftSummary.no_champion(month)
    live = latest_month_record(instance, keys.live, LiveSummary, month) or LiveSummary.empty(month)
    retrains = [r for r in runs if r.tags.get(TRIGGER_TAG) in ("drift", "performance", "rollback")]
    # the month's registrations and decisions, whichever run made them: a retrain's own, or an automation run's (a
    # challenger's promotion re-evaluated eagerly after the retrain run failed or was interrupted)
    month_runs = {r.run_id for r in runs}
    challenger = decision = ""
    promoted = False
    for event in registry.events():
        if event.get("run_id") in month_runs:
            if event["event"] == "registered":
                challenger = event["version"]
            elif event["event"] in ("promoted", "rejected"):
                promoted = promoted or event["event"] == "promoted"
                decision = event["reason"]
    champion, frozen = live.batch.get("champion"), live.batch.get(SHADOW)
    return TimelineRow(
        month=month,
        drifted=drift.drifted,
        drift_share=drift.drift_share,
        top_drifted=drift.top_drifted,
        score_drift=drift.score_drift,
        retrained=bool(retrains),
        retrain_trigger=", ".join(sorted({r.tags[TRIGGER_TAG] for r in retrains})),
        retrain_reason=" | ".join(r.tags.get(REASON_TAG, "") for r in retrains),
        champion_version=champion.version if champion else "",
        champion_live_auc=champion.live_roc_auc if champion else None,
        frozen_version=frozen.version if frozen else "",
        frozen_live_auc=frozen.live_roc_auc if frozen else None,
        challenger_version=challenger,
        promoted=promoted,
        decision=decision,
        champion_after=str(registry.alias(CHAMPION)),
        rolled_back_to=next(
            (str(e["version"]) for e in reversed(month_events or []) if e.get("event") == "rolled_back"), ""
        ),
        rollback_declined=any(e.get("event") == "rollback_declined" for e in month_events or []),
    )


def write_timeline(settings: Settings, model: ModelSpec, frame: pl.DataFrame, since: str) -> Path:
    """``<model>.timeline`` in the warehouse, and the report with its plot under reports/<model>/timeline/."""
    with connect_warehouse(settings.warehouse_path) as conn:
        name = ensure_table_like(conn, model.name, "timeline", frame)
        replace_where(conn, name, frame, "true", [])
    plot = timeline_plot(frame)
    out = settings.model(model.name).reports_dir / "timeline"
    write_atomic(out / "timeline.png", plot)
    write_atomic(out / "timeline.md", timeline_markdown(frame, plot, since, f"{model.name}.timeline").encode())
    write_atomic(out / "timeline.csv", frame.write_csv().encode())
    return out


def simulated_months(model: ModelSpec, first: str, through: str, every: int) -> list[str]:
    """The months a simulation of ``model`` over ``first..through`` replays, or :class:`SimulationError` saying what to
    give instead: checked before anything is cleared or landed."""
    feed = model.feed
    if feed.replay is None:
        raise SimulationError(f"feed {feed.name} has no replay: a simulation needs one")
    try:
        months = month_range(first, through)
    except ValueError as error:  # e.g. --from after --through
        raise SimulationError(f"{error}: give --from at or before --through") from None
    outside = feed.months_without_data(months)
    if outside:
        raise SimulationError(
            f"{feed.name} covers {feed.first_month}..{feed.last_month}; {', '.join(outside)} has no data: "
            "give --from and --through inside it"
        )
    if every < 1:
        raise SimulationError(f"--every must be 1 or more (every n-th row), not {every}")
    if len(months) <= BOOTSTRAP_MONTHS:
        raise SimulationError(
            f"simulate needs more than {BOOTSTRAP_MONTHS} months ({first}..{through} has {len(months)})"
        )
    return months


def simulate(
    data_dir: Path,
    model: ModelSpec,
    first: str = "2013-01",
    through: str = "2013-12",
    every: int = 1,
    say: Callable[[str], None] = print,
    stop_requested: Callable[[], bool] | None = None,
) -> pl.DataFrame:
    """Run the replayed year in ``data_dir`` (cleared first) and return the timeline. ``stop_requested`` is asked
    after each run (``ticks.StopSignals``): a stop asked for during a run ends the year after it."""
    months = simulated_months(model, first, through, every)
    replay = model.feed.replay
    assert replay is not None  # simulated_months checked it
    reset_data_dir(data_dir)
    settings = load_settings(data_dir)
    home = prepare_dagster_home(data_dir / "dagster_home")
    defs = build_definitions(Catalog((model,)), settings)
    registry = Registry(settings.model(model.name).registry_dir)
    retraining = retraining_job_name(model)
    started = time.perf_counter()

    def on_run(run: ExecutedRun) -> None:
        what = run.tags.get(TRIGGER_TAG) or run.requested_by
        status = "ok" if run.success else "FAILED"
        say(f"    {what:<11} run {run.run_id[:8]} {status:<6} {run.partition or '':<8} {', '.join(run.assets)}")

    # a persistent instance of its own (the repo's dagster.yaml), so the runs can be browsed afterwards with
    # `DAGSTER_HOME=<data dir>/dagster_home MLOPS_DATA_DIR=<data dir> dagster dev -w workspace.yaml`
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ticker = Ticker(defs, instance, simulation_sensors(model), on_run=on_run, stop_requested=stop_requested)
        boot, rest = months[:BOOTSTRAP_MONTHS], months[BOOTSTRAP_MONTHS:]
        say(
            f"[{time.perf_counter() - started:6.1f}s] landing {boot[0]}..{boot[-1]}"
            + (f" (every {every}th row)" if every > 1 else "")
        )
        replay(settings.landing_dir, boot, every, None)
        ticker.settle()
        say(f"[{time.perf_counter() - started:6.1f}s] first model: the `{retraining}` job on {boot[0]}..{boot[-1]}")
        first_run = ticker.execute_job(retraining, {TRIGGER_TAG: "bootstrap", REASON_TAG: "no model yet"})
        first_model = registry.alias(CHAMPION)
        if not first_run.success or first_model is None:
            raise SimulationError(
                "the first model was not trained or not promoted: see the run's logs in the Dagster UI"
            )
        registry.set_alias(
            SHADOW, first_model, "shadow", "simulation: the first model, frozen, scores every month beside the champion"
        )
        ticker.settle()

        rows = []
        for month in rest:
            say(f"[{time.perf_counter() - started:6.1f}s] landing {month}")
            if registry.alias(SHADOW) != first_model:
                # a rollback to the first model made it champion, which ends a shadow: frozen, it scores on
                registry.set_alias(
                    SHADOW, first_model, "shadow", "simulation: the first model, frozen, scores beside the champion"
                )
            logged = len(registry.events())
            replay(settings.landing_dir, [month], every, None)
            runs = ticker.settle()
            # a failed run is an outcome the platform lives with (the champion keeps serving): recorded in the
            # timeline and said, and the year goes on
            row = month_row(model, month, instance, registry, runs, registry.events()[logged:])
            row = replace(row, failed_runs=failed_runs(instance, runs))
            rows.append(row)
            if row.failed_runs:
                say(f"           {month}: {row.failed_runs}")
            say(f"           {month_line(row)}")
        frame = timeline_frame(rows)
        out = write_timeline(settings, model, frame, compared_from(months))
    wins, compared = months_champion_wins(frame, compared_from(months))
    failed = frame.filter(pl.col("failed_runs") != "")["month"].to_list()
    say(
        f"Done in {time.perf_counter() - started:.0f} s: {frame['retrained'].sum()} retrains, "
        f"{frame['promoted'].sum()} promotions, "
        f"{(frame['rolled_back_to'] != '').sum()} rollbacks"
        + (f" ({frame['rollback_declined'].sum()} declined)" if frame["rollback_declined"].any() else "")
        + (f", failed runs in {', '.join(failed)} (the champion kept serving; column failed_runs)" if failed else "")
        + f". {champion_vs_frozen(wins, compared, compared_from(months))}. Timeline: {out / 'timeline.md'} "
        f"(plot timeline.png), table {model.name}.timeline in {settings.warehouse_path}."
    )
    return frame


def month_line(row: TimelineRow) -> str:
    """The console's line for a month: drift, the champion's live AUC against the frozen model's, the rollback that
    took the champion out (the month's, before its retrain), then what came of the retrain."""
    drift = (
        f"drift={'yes' if row.drifted else 'no'} ({row.drift_share or 0:.0%} features; top {row.top_drifted or '-'})"
    )
    live = f"champion {row.champion_version} AUC {_fmt(row.champion_live_auc)} vs frozen {_fmt(row.frozen_live_auc)}"
    back = (
        f"{row.champion_version or 'the champion'} rolled back to {row.rolled_back_to}; " if row.rolled_back_to else ""
    )
    if row.rollback_declined and not row.rolled_back_to:
        back = "rollback declined (the version it would go to did no better on the month); "
    retrain = (
        f"retrained ({row.retrain_trigger}): {row.challenger_version or '-'} {_outcome(row)}"
        if row.retrained
        else f"no retrain, {row.champion_after} serves"
        if row.rolled_back_to
        else "no retrain"
    )
    return f"{row.month}: {drift}, {live}; {back}{retrain}"


def _outcome(row: TimelineRow) -> str:
    """What came of the month's retraining: promoted, kept out by the gates, or no decision (a run failed first)."""
    if row.promoted:
        return "PROMOTED"
    if not row.decision and row.failed_runs:
        return f"no decision (a run failed): {row.champion_after} serves on"
    return f"kept out, {row.champion_after} serves" if row.decision else f"{row.champion_after} serves"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
