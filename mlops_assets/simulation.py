"""``mlops simulate``: the replayed year as a scenario, decided by the platform's own sensors and automation.

From an empty data directory: land the first three months, build them and train the first model (the same
`retraining` job the sensors request), freeze that model as the `shadow` so every later month is also scored by it,
then land one month at a time and let the sensors and automation conditions act, tick by tick, on a real Dagster
instance (``ticks.Ticker``). What happened each month becomes ``monitoring.timeline`` and a plot.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from mlops_assets.core.flights import FLIGHTS, replay_months
from mlops_assets.core.landing import month_range, write_atomic
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.settings import Settings, load_settings, prepare_dagster_home
from mlops_assets.core.store import ensure_table_like, replace_where
from mlops_assets.core.timeline import TimelineRow, months_champion_wins, timeline_frame, timeline_markdown, timeline_plot
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.jobs import RETRAIN_JOB
from mlops_assets.defs.monitor import DRIFT_KEY, LIVE_KEY, SHADOW, latest_month_summary
from mlops_assets.defs.sensors import REASON_TAG, TRIGGER_TAG
from mlops_assets.ticks import ExecutedRun, Ticker

MARKER = ".mlops-simulation"
TIMELINE_TABLE = ("monitoring", "timeline")
BOOTSTRAP_MONTHS = 3
#: In the daemon's order of definition: a rollback is decided before drift and performance ask for a retrain
SENSORS = ("landing_sensor", "rollback_sensor", "drift_sensor", "performance_sensor")


class SimulationError(RuntimeError):
    pass


def reset_data_dir(data_dir: Path) -> None:
    """Start from empty: a folder an earlier simulation made is cleared; any other non-empty folder is refused."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise SimulationError(f"{data_dir} is not empty and was not made by `mlops simulate`: pick another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by `mlops simulate`; cleared by the next simulation\n")


def month_row(month: str, instance: dg.DagsterInstance, registry: Registry, runs: list[ExecutedRun]) -> TimelineRow:
    """What the platform did about ``month``, from the monitoring metadata, the runs and the registry's events."""
    drift = latest_month_summary(instance, DRIFT_KEY, month)
    live = latest_month_summary(instance, LIVE_KEY, month)
    retrains = [r for r in runs if r.tags.get(TRIGGER_TAG) in ("drift", "performance", "rollback")]
    events = registry.events()
    challenger = decision = ""
    promoted = False
    for run in retrains:
        for event in events:
            if event.get("run_id") != run.run_id:
                continue
            if event["event"] == "registered":
                challenger = event["version"]
            elif event["event"] in ("promoted", "rejected"):
                promoted = promoted or event["event"] == "promoted"
                decision = event["reason"]
    return TimelineRow(
        month=month,
        drifted=drift.get("drifted"),
        drift_share=drift.get("drift_share"),
        top_drifted=str(drift.get("top_drifted", "")),
        score_drift=drift.get("score_drift"),
        retrained=bool(retrains),
        retrain_trigger=", ".join(sorted({r.tags[TRIGGER_TAG] for r in retrains})),
        retrain_reason=" | ".join(r.tags.get(REASON_TAG, "") for r in retrains),
        champion_version=str(live.get("champion_version", "")),
        champion_live_auc=live.get("champion_live_roc_auc"),
        frozen_version=str(live.get("shadow_version", "")),
        frozen_live_auc=live.get("shadow_live_roc_auc"),
        challenger_version=challenger,
        promoted=promoted,
        decision=decision,
        champion_after=str(registry.alias(CHAMPION)),
    )


def write_timeline(settings: Settings, frame: pl.DataFrame) -> Path:
    """``monitoring.timeline`` in the warehouse, and the report with its plot under reports/timeline/."""
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        name = ensure_table_like(conn, *TIMELINE_TABLE, frame)
        replace_where(conn, name, frame, "true", [])
    plot = timeline_plot(frame)
    out = settings.reports_dir / "timeline"
    write_atomic(out / "timeline.png", plot)
    write_atomic(out / "timeline.md", timeline_markdown(frame, plot).encode())
    write_atomic(out / "timeline.csv", frame.write_csv().encode())
    return out


def simulate(
    data_dir: Path,
    first: str = "2013-01",
    through: str = "2013-12",
    every: int = 1,
    say: Callable[[str], None] = print,
) -> pl.DataFrame:
    """Run the replayed year in ``data_dir`` (cleared first) and return the timeline."""
    months = month_range(first, through)
    if len(months) <= BOOTSTRAP_MONTHS:
        raise SimulationError(f"simulate needs more than {BOOTSTRAP_MONTHS} months ({first}..{through} has {len(months)})")
    reset_data_dir(data_dir)
    settings = load_settings(data_dir)
    home = prepare_dagster_home(data_dir / "dagster_home")
    defs = build_definitions(FLIGHTS, settings)
    registry = Registry(settings.registry_dir)
    started = time.perf_counter()

    def on_run(run: ExecutedRun) -> None:
        what = run.tags.get(TRIGGER_TAG) or run.requested_by
        status = "ok" if run.success else "FAILED"
        say(f"    {what:<11} run {run.run_id[:8]} {status:<6} {run.partition or '':<8} {', '.join(run.assets)}")

    # a persistent instance of its own (the repo's dagster.yaml), so the runs can be browsed afterwards with
    # `DAGSTER_HOME=<data dir>/dagster_home MLOPS_DATA_DIR=<data dir> dagster dev -w workspace.yaml`
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ticker = Ticker(defs, instance, SENSORS, on_run=on_run)
        boot, rest = months[:BOOTSTRAP_MONTHS], months[BOOTSTRAP_MONTHS:]
        say(f"[{time.perf_counter() - started:6.1f}s] landing {boot[0]}..{boot[-1]}" + (f" (every {every}th flight)" if every > 1 else ""))
        replay_months(settings.landing_dir, boot, every=every)
        ticker.settle()
        say(f"[{time.perf_counter() - started:6.1f}s] first model: the `{RETRAIN_JOB}` job on {boot[0]}..{boot[-1]}")
        first_run = ticker.execute_job(RETRAIN_JOB, {TRIGGER_TAG: "bootstrap", REASON_TAG: "no model yet"})
        first_model = registry.alias(CHAMPION)
        if not first_run.success or first_model is None:
            raise SimulationError("the first model was not trained or not promoted: see the run's logs in the Dagster UI")
        registry.set_alias(SHADOW, first_model, "shadow", "simulation: the first model, frozen, scores every month beside the champion")
        ticker.settle()

        rows = []
        for month in rest:
            say(f"[{time.perf_counter() - started:6.1f}s] landing {month}")
            replay_months(settings.landing_dir, [month], every=every)
            runs = ticker.settle()
            failed = [r for r in runs if not r.success]
            if failed:
                raise SimulationError(f"{len(failed)} run(s) failed in {month} (first: {failed[0].run_id}); see `dagster dev` or the logs")
            row = month_row(month, instance, registry, runs)
            rows.append(row)
            say(
                f"           {month}: drift={'yes' if row.drifted else 'no'} ({row.drift_share or 0:.0%} features; top {row.top_drifted or '-'}), "
                f"champion {row.champion_version} AUC {_fmt(row.champion_live_auc)} vs frozen {_fmt(row.frozen_live_auc)}; "
                + (f"retrained ({row.retrain_trigger}): {row.challenger_version} {'PROMOTED' if row.promoted else 'kept ' + row.champion_after}"
                   if row.retrained else "no retrain")  # fmt: skip
            )
        frame = timeline_frame(rows)
        out = write_timeline(settings, frame)
    wins, compared = months_champion_wins(frame, "2013-06")
    say(
        f"Done in {time.perf_counter() - started:.0f} s: {frame['retrained'].sum()} retrains, {frame['promoted'].sum()} promotions, "
        f"champion beat the frozen first model in {wins}/{compared} months from 2013-06. Timeline: {out / 'timeline.md'} "
        f"(plot timeline.png), table monitoring.timeline in {settings.warehouse_path}."
    )
    return frame


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
