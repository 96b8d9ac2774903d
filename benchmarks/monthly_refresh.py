"""Benchmark of the monthly refresh: one newly landed month, refreshed by a cold process, as the history grows.

Run from the repository root::

    python benchmarks/monthly_refresh.py                  # 3 repeats on the full feed, rewrites its README section
    python benchmarks/monthly_refresh.py --repeats 1 --every 10 --no-readme

The refresh is what the platform does when a month's files land (``replay_months(landing, [month])``) for the
``flight_delay`` model (the only model registered in the definitions the worker builds, as ``mlops simulate`` does:
the benchmark measures the delay model, as before there were several): the ``landing_sensor`` requests one run for
that month: ingest -> validate -> features -> ``flight_delay/online_store``, ``flight_delay/batch_predictions``,
``flight_delay/drift_report``, ``flight_delay/live_performance``; the automation conditions are evaluated too, and
would request anything left (the report lists what ran). The model's rollback, drift and performance sensors (rollback
and retraining) are not part of it: a ``Ticker`` with ``sensors=("landing_sensor",)`` and the automation conditions
on, settled until a tick requests nothing, in a fresh ``python`` process (interpreter start, imports, loading the
definitions, the refresh runs, exit). The sensor and automation cursors are kept between processes in a JSON file of
the data directory, as the daemon keeps them in its instance (the automation cursor written with Dagster's public
``dagster.serialize_value``).

Each repeat uses a fresh temporary data directory (``MLOPS_DATA_DIR``, ``DAGSTER_HOME`` below it with the repo's
dagster.yaml) and two sequences:

* **history** (the year as it lands): 2013-01 landed and refreshed (untimed); 2013-02 and 2013-03 refreshed cold with
  no champion yet (scoring and drift find no model: less work); the first model trained by ``flight_delay_retraining``
  (untimed, as ``mlops simulate`` bootstraps); then 2013-04 .. 2013-12 refreshed cold, each scored and checked for
  drift by that champion (retraining is excluded, so the champion stays the same).
* **short history** (the "month 2" of the flatness target with a champion): a second data directory with only
  2013-10 and 2013-11 landed, refreshed and a model trained on them (untimed), then 2013-12 refreshed cold. Month 2
  itself cannot have a champion (training needs two built months, the newest being the test month), so the history
  growth is measured on the same month with the same work: 2013-12 after 11 months / 2013-12 after 2 months.

Timing: the parent measures the wall time of each cold process; the process stamps (epoch clock) when its script
starts, when the imports are done, when the definitions are loaded and when the refresh is done, and times each
sensor tick, automation evaluation and run. After the process exits (untimed), the parent reads the runs' step
durations from the Dagster instance and the monitoring results of the month (rows scored, drift verdict) from its
materialization metadata. Landing the month (writing its parquet files) is not timed. The platform's code
(``mlops_assets/``, ``dagster.yaml``) is copied into the temporary directory at the start and every process imports
that copy (``PYTHONPATH``), so edits to the working tree during the run change nothing measured. Everything is written
under a temporary directory, except this script's section of ``benchmarks/README.md`` and ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from machine import cpu_and_ram, replace_readme_section  # benchmarks/machine.py (this folder is on sys.path when run as a script)

#: A worker process's first clock reading: before it, only interpreter start and the standard-library imports above.
_T0 = time.time()

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "monthly_refresh.json"
SECTION_TITLE = "## `monthly_refresh.py`: one newly landed month, refreshed by a cold process"
#: Ends this script's README section, so that sections added after it are kept when it is rewritten.
SECTION_END = "<!-- end of the monthly_refresh.py section: everything above, from its title, is rewritten by it -->"
GIB = 1024**3

TARGETS = {"cold_wall_s": 3.0, "flat_ratio": 1.2}
#: The model measured: the worker's definitions register it alone (as ``mlops simulate`` does).
MODEL = "flight_delay"
SENSORS = ("landing_sensor",)
#: The Ticker's cursors, kept between processes (the daemon keeps them in its instance; the Ticker in memory only).
CURSOR_FILE = "bench-ticker-cursors.json"
FIRST, NO_CHAMPION, LAST = "2013-01", ("2013-02", "2013-03"), "2013-12"
WITH_CHAMPION = [f"2013-{m:02d}" for m in range(4, 13)]
SHORT_HISTORY = ("2013-10", "2013-11")
#: The lifecycle assets: the automation conditions cover them, but a refresh must request none of them.
LIFECYCLE_PREFIXES = tuple(f"{MODEL}/{name}" for name in ("training_set", "challenger", "evaluation", "champion"))
HISTORY, SHORT = "history", "short"


# --- the worker: one process on one data directory ---------------------------------------------------------------


def _vm_hwm_gib() -> float | None:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` would carry the parent's over ``exec``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / GIB, 3)
    except OSError:
        pass
    return None


def worker(mode: str, shadow: bool) -> dict[str, Any]:
    """Run in a fresh process with ``MLOPS_DATA_DIR`` / ``DAGSTER_HOME`` set. ``refresh``: settle the landing sensor
    and the automation conditions (the timed refresh). ``setup``: the same, untimed. ``bootstrap``: settle, the first
    model (its ``<model>_retraining`` job, as ``mlops simulate`` does), settle again."""
    stamps = {"start": _T0}
    import dagster as dg

    from mlops_assets import definitions
    from mlops_assets.catalog import CATALOG
    from mlops_assets.core.catalog import Catalog
    from mlops_assets.core.registry import CHAMPION, Registry
    from mlops_assets.core.settings import load_settings
    from mlops_assets.defs.keys import retraining_job_name
    from mlops_assets.defs.monitor import SHADOW
    from mlops_assets.defs.sensors import REASON_TAG, TRIGGER_TAG
    from mlops_assets.ticks import ExecutedRun, Ticker

    stamps["imported"] = time.time()

    @dataclass
    class TimedTicker(Ticker):
        """The platform's Ticker, with a clock around each sensor tick, automation evaluation and run."""

        log: list[dict[str, Any]] = field(default_factory=list)
        _in_runs: float = 0.0

        def _execute(self, requested_by: str, job: dg.JobDefinition, partition: str | None, tags: dict[str, str],
                     assets: list[dg.AssetKey] | None = None) -> ExecutedRun:  # fmt: skip
            started = time.time()
            run = super()._execute(requested_by, job, partition, tags, assets)
            ended = time.time()
            self._in_runs += ended - started
            # a sensor's run materializes its job's whole selection: what it materialized is what it requested
            requested = [k.to_user_string() for k in assets] if assets else list(run.assets)
            self.log.append({"kind": "run", "requested_by": requested_by, "job": job.name, "run_id": run.run_id,
                             "success": run.success, "partition": partition, "requested": requested,
                             "materialized": list(run.assets), "start": started, "end": ended})  # fmt: skip
            return run

        def _timed(self, kind: str, name: str, call: Callable[[], list[ExecutedRun]]) -> list[ExecutedRun]:
            # a tick's own time: its runs are logged (and counted) separately
            started, in_runs = time.time(), self._in_runs
            runs = call()
            ended = time.time()
            self.log.append({"kind": kind, "name": name, "start": started, "end": ended, "runs": len(runs),
                             "own_s": ended - started - (self._in_runs - in_runs)})  # fmt: skip
            return runs

        def evaluate_sensor(self, name: str) -> list[ExecutedRun]:
            return self._timed("sensor", name, lambda: super(TimedTicker, self).evaluate_sensor(name))

        def evaluate_automation(self) -> list[ExecutedRun]:
            return self._timed("automation", "automation", lambda: super(TimedTicker, self).evaluate_automation())

    # what a code location does when it loads (it writes nothing: the landing sensor adds the months as partitions),
    # with only the measured model registered
    model = CATALOG.model(MODEL)
    settings = load_settings()
    defs = definitions.build_definitions(Catalog((model,)), settings)
    cursor_path = settings.data_dir / CURSOR_FILE
    saved = json.loads(cursor_path.read_text()) if cursor_path.exists() else {"sensors": {}, "automation": None}
    with dg.DagsterInstance.get() as instance:
        automation_cursor = dg.deserialize_value(saved["automation"]) if saved["automation"] else None
        ticker = TimedTicker(defs, instance, SENSORS, cursors=dict(saved["sensors"]),
                             automation_cursor=automation_cursor)  # fmt: skip
        stamps["defs_loaded"] = time.time()
        if mode == "bootstrap":
            ticker.settle()  # the landed months first: training reads their features
            tags = {TRIGGER_TAG: "bootstrap", REASON_TAG: "no model yet"}
            run = ticker.execute_job(retraining_job_name(model), tags)
            registry = Registry(settings.model(model.name).registry_dir)
            first = registry.alias(CHAMPION)
            if not run.success or first is None:
                raise SystemExit(f"the first model was not trained or not promoted (run {run.run_id})")
            if shadow:
                registry.set_alias(SHADOW, first, "shadow", "benchmark: the first model also scores every month")
        ticker.settle()
        stamps["refreshed"] = time.time()
        automation = dg.serialize_value(ticker.automation_cursor) if ticker.automation_cursor is not None else None
        cursor_path.write_text(json.dumps({"sensors": ticker.cursors, "automation": automation}))
        stamps["saved"] = time.time()
    stamps["closed"] = time.time()  # the instance closed; what follows is printing and interpreter exit
    # where the platform was imported from (the parent checks it was its copy of the code)
    return {"stamps": stamps, "log": ticker.log, "peak_rss_gib": _vm_hwm_gib(), "platform": str(Path(definitions.__file__).parent)}


# --- the parent: data directories, cold processes, inspection ----------------------------------------------------


def _busy_ticks() -> int:
    """CPU time the whole machine spent busy, in clock ticks (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


@dataclass
class DataDir:
    """One data directory with its Dagster home (what ``mlops home`` makes)."""

    path: Path
    every: int
    #: the copy of the platform's code the processes import (see ``snapshot_code``)
    code: Path

    @property
    def home(self) -> Path:
        return self.path / "dagster_home"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "MLOPS_DATA_DIR": str(self.path), "DAGSTER_HOME": str(self.home)}
        # before the editable install's finder: the platform is imported from the copy
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.code), env.get("PYTHONPATH", "")) if p)
        return env

    def prepare(self) -> None:
        from mlops_assets.core.settings import prepare_dagster_home

        self.path.mkdir(parents=True)
        prepare_dagster_home(self.home)

    def land(self, months: list[str]) -> None:
        """The month's files land, as the replay feed writes them (untimed)."""
        from mlops_assets.feeds.nycflights13 import replay_months

        replay_months(self.path / "landing", months, every=self.every)

    def run(self, mode: str, timeout: float, shadow: bool = False) -> dict[str, Any]:
        """One cold process: its wall time, CPU time, the rest of the machine's load, and what it reported."""
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode] + (["--shadow"] if shadow else [])
        before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before, launched, clock = _busy_ticks(), time.time(), time.perf_counter()
        done = subprocess.run(command, env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.perf_counter() - clock
        exited, busy_after = time.time(), _busy_ticks()
        after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"worker {mode} in {self.path} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
        other = (busy_after - busy_before) / os.sysconf("SC_CLK_TCK") - cpu
        return {**report, "wall_s": wall, "cpu_s": cpu, "other_load": max(0.0, other) / wall, "launched": launched,
                "exited": exited}  # fmt: skip


def _rows_scored(instance: Any, key: Any, month: str) -> int | None:
    """The rows the month's latest batch-scoring materialization wrote (its ``dagster/row_count``)."""
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[month]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    rows = records[0].asset_materialization.metadata.get("dagster/row_count")
    return int(rows.value) if rows is not None else None


def inspect_refresh(data_dir: DataDir, report: dict[str, Any], month: str) -> dict[str, Any]:
    """Untimed, after the process exited: each run's step durations and Dagster's time around them, and what the
    monitoring assets found for ``month``."""
    import dagster as dg

    from mlops_assets.core.records import DriftSummary, LiveSummary
    from mlops_assets.defs.keys import ModelKeys
    from mlops_assets.defs.monitor import latest_month_record

    keys = ModelKeys(MODEL)
    runs = []
    with dg.DagsterInstance.from_config(str(data_dir.home)) as instance:
        for entry in (e for e in report["log"] if e["kind"] == "run"):
            stats = instance.get_run_step_stats(entry["run_id"])
            steps = {s.step_key: round(s.end_time - s.start_time, 4) for s in stats if s.start_time and s.end_time}
            runs.append({**{k: entry[k] for k in ("requested_by", "job", "run_id", "success", "partition", "requested",
                                                  "materialized")},
                         "wall_s": entry["end"] - entry["start"], "steps": steps})  # fmt: skip
        rows_scored = _rows_scored(instance, keys.predictions, month)
        drift = latest_month_record(instance, keys.drift, DriftSummary, month)
        live = latest_month_record(instance, keys.live, LiveSummary, month)
    champion = live.champion if live is not None else None
    checks = {
        "rows_scored": rows_scored,
        "champion_version": champion.version if champion else None,
        "drift_computed": drift is not None and drift.champion_version is not None,
        "drifted": drift.drifted if drift is not None else None,
        "champion_live_auc": champion.live_roc_auc if champion else None,
    }
    return {"runs": runs, "checks": checks}


def _phases(report: dict[str, Any]) -> dict[str, float]:
    """The cold process split in time: interpreter start, imports, definitions load, refresh (in process), exit."""
    s = report["stamps"]
    phases = {
        "interpreter": s["start"] - report["launched"],
        "imports": s["imported"] - s["start"],
        "definitions": s["defs_loaded"] - s["imported"],
        "in_process": s["refreshed"] - s["defs_loaded"],
        "shutdown": report["exited"] - s["refreshed"],
        "save_cursors": s["saved"] - s["refreshed"],
        "close_instance": s["closed"] - s["saved"],
        "interpreter_exit": report["exited"] - s["closed"],
    }
    log = report["log"]
    phases["landing_sensor"] = sum(e["own_s"] for e in log if e["kind"] == "sensor")
    phases["automation"] = sum(e["own_s"] for e in log if e["kind"] == "automation")
    phases["feature_run"] = sum(e["end"] - e["start"] for e in log if e["kind"] == "run" and e["requested_by"] in SENSORS)
    phases["automation_run"] = sum(e["end"] - e["start"] for e in log if e["kind"] == "run" and e["requested_by"] == "automation")
    phases["ticks"] = sum(1 for e in log if e["kind"] == "automation")
    return phases


def measure(data_dir: DataDir, sequence: str, month: str, history: list[str], champion: bool, repeat: int,
            timeout: float) -> dict[str, Any]:  # fmt: skip
    """Land ``month`` (untimed) and refresh it in a cold process."""
    data_dir.land([month])
    report = data_dir.run("refresh", timeout)
    if Path(report["platform"]) != data_dir.code / "mlops_assets":
        raise RuntimeError(f"the refresh imported the platform from {report['platform']}, not from the copy {data_dir.code}")
    seen = inspect_refresh(data_dir, report, month)
    requested = sorted({k for r in seen["runs"] for k in r["requested"]})
    lifecycle = [k for k in requested if k.startswith(LIFECYCLE_PREFIXES)]
    return {
        "repeat": repeat, "sequence": sequence, "month": month, "history": history, "champion": champion,
        "wall_s": report["wall_s"], "cpu_s": report["cpu_s"], "other_load": report["other_load"],
        "peak_rss_gib": report["peak_rss_gib"], "phases": _phases(report), "runs": seen["runs"],
        "checks": seen["checks"], "requested": requested, "lifecycle_requested": lifecycle,
        "all_ok": all(r["success"] for r in seen["runs"]),
    }  # fmt: skip


def setup(data_dir: DataDir, months: list[str], timeout: float, bootstrap: bool, shadow: bool) -> float:
    """Untimed: land ``months`` and refresh them (and, with ``bootstrap``, train the first model); its seconds."""
    started = time.perf_counter()
    if months:
        data_dir.land(months)
    data_dir.run("bootstrap" if bootstrap else "setup", timeout, shadow=shadow)
    return time.perf_counter() - started


def _line(m: dict[str, Any]) -> str:
    p, c = m["phases"], m["checks"]
    runs = "; ".join(f"{r['requested_by']}: " + (", ".join(r["requested"]) if r["requested_by"] == "automation" else
                     f"{len(r['requested'])} assets, {len(r['steps'])} steps") + ("" if r["success"] else " FAILED")
                     for r in m["runs"])  # fmt: skip
    scored = f"{c['rows_scored']} scored" if c["rows_scored"] else "nothing scored"
    drift = f"drift {'yes' if c['drifted'] else 'no'}" if c["drift_computed"] else "no drift check"
    return (f"cold {m['wall_s']:5.2f} s = start {p['interpreter'] + p['imports'] + p['definitions']:.2f} + refresh "
            f"{p['in_process']:.2f} + exit {p['shutdown']:.2f}; {scored}, {drift}; runs: {runs}")  # fmt: skip


# --- report ------------------------------------------------------------------------------------------------------


def _row_key(m: dict[str, Any]) -> tuple[str, str]:
    return (m["sequence"], m["month"])


def _label(sequence: str, month: str, champion: bool) -> str:
    if sequence == SHORT:
        return f"{month}, short history ({SHORT_HISTORY[0]}..{SHORT_HISTORY[1]})"
    return month if champion else f"{month} (no champion)"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (sequence, month): medians over the repeats."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in measurements:
        groups[_row_key(m)].append(m)
    order = [(HISTORY, month) for month in (*NO_CHAMPION, *WITH_CHAMPION)] + [(SHORT, LAST)]
    rows = []
    for key in (k for k in order if k in groups):
        ms = groups[key]
        # the parts of one run add up, medians of each part need not: the split is the median run's (by cold wall)
        typical = sorted(ms, key=lambda m: m["wall_s"])[(len(ms) - 1) // 2]
        steps: dict[str, float] = defaultdict(float)
        for run in typical["runs"]:
            for step, seconds in run["steps"].items():
                steps[step] += seconds
        phases = {name: _median([m["phases"][name] for m in ms]) for name in ms[0]["phases"]}
        rows.append({
            "sequence": key[0], "month": key[1], "label": _label(key[0], key[1], ms[0]["champion"]),
            "champion": ms[0]["champion"], "history_months": len(ms[0]["history"]), "repeats": len(ms),
            "wall_s": _median([m["wall_s"] for m in ms]), "wall_min_s": min(m["wall_s"] for m in ms),
            "wall_max_s": max(m["wall_s"] for m in ms), "cpu_s": _median([m["cpu_s"] for m in ms]),
            "other_load": _median([m["other_load"] for m in ms]),
            "peak_rss_gib": _median([m["peak_rss_gib"] or 0.0 for m in ms]), "phases": phases,
            "typical": {"repeat": typical["repeat"], "wall_s": typical["wall_s"], "phases": typical["phases"]},
            "steps": dict(steps),
            "rows_scored": _median([float(m["checks"]["rows_scored"] or 0) for m in ms]),
            "drift_computed": all(m["checks"]["drift_computed"] for m in ms),
            "lifecycle_requested": sorted({k for m in ms for k in m["lifecycle_requested"]}),
            "requested": sorted({k for m in ms for k in m["requested"]}),
            "all_ok": all(m["all_ok"] for m in ms),
        })  # fmt: skip
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL lines for the targets, and the ratios that are information only."""
    by = {(r["sequence"], r["month"]): r for r in rows}
    lines = []
    if rows:
        worst = max(rows, key=lambda r: r["wall_s"])
        ok = worst["wall_s"] <= TARGETS["cold_wall_s"]
        lines.append(f"{'PASS' if ok else 'FAIL'}  cold refresh <= {TARGETS['cold_wall_s']:g} s wall (median, every month "
                     f"measured): max {worst['wall_s']:.2f} s ({worst['label']}); "
                     f"min {min(r['wall_s'] for r in rows):.2f} s")  # fmt: skip

    def ratio(top: tuple[str, str], bottom: tuple[str, str], what: str, verdict: bool) -> None:
        if top not in by or bottom not in by:
            return
        a, b = by[top], by[bottom]
        cold, inside = a["wall_s"] / b["wall_s"], a["phases"]["in_process"] / b["phases"]["in_process"]
        cpu = a["cpu_s"] / b["cpu_s"]
        tag = ("PASS" if cold <= TARGETS["flat_ratio"] else "FAIL") if verdict else "info"
        lines.append(f"{tag}  {what}: {a['label']} / {b['label']} = {cold:.2f} cold ({a['wall_s']:.2f} / "
                     f"{b['wall_s']:.2f} s), {inside:.2f} in process ({a['phases']['in_process']:.2f} / "
                     f"{b['phases']['in_process']:.2f} s), {cpu:.2f} in CPU time ({a['cpu_s']:.2f} / {b['cpu_s']:.2f} s)"
                     + (f"; target <= {TARGETS['flat_ratio']:g}" if verdict else ""))  # fmt: skip

    ratio((HISTORY, LAST), (SHORT, LAST), "flat (substitute for month 12 / month 2): 11 vs 2 months of history", True)
    ratio((HISTORY, LAST), (HISTORY, WITH_CHAMPION[0]), "flat: month 12 / month 4 (first month with a champion)", True)
    ratio((HISTORY, LAST), (HISTORY, NO_CHAMPION[0]), "month 12 / month 2 as measured (month 2 has no champion: "
          "nothing scored, no drift check)", False)  # fmt: skip
    measured = [r for r in rows if r["sequence"] == HISTORY]
    if measured:
        lifecycle = sorted({k for r in rows for k in r["lifecycle_requested"]})
        lines.append(f"{'PASS' if not lifecycle else 'FAIL'}  the refresh requested no lifecycle asset (training set, "
                     f"models, reports) in any month: " + (", ".join(lifecycle) if lifecycle else "none requested"))  # fmt: skip
        failed = [r["label"] for r in rows if not r["all_ok"]]
        lines.append(f"{'PASS' if not failed else 'FAIL'}  every run succeeded" + (f": failed in {failed}" if failed else ""))
    return lines


def _f(value: float, digits: int = 2) -> str:
    return "" if value != value else f"{value:.{digits}f}"  # NaN: empty cell


def results_table(rows: list[dict[str, Any]]) -> str:
    head = ("| month | champion | history (months) | cold wall s (median) | min | max | in-process s | start s "
            "(interpreter + imports + definitions) | exit s | CPU s | other load (cores) | peak RSS GiB | scored rows | "
            "drift check |\n|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")  # fmt: skip
    lines = [head]
    for r in rows:
        p = r["phases"]
        start = p["interpreter"] + p["imports"] + p["definitions"]
        lines.append(f"| {r['label']} | {'yes' if r['champion'] else 'no'} | {r['history_months']} | {_f(r['wall_s'])} | "
                     f"{_f(r['wall_min_s'])} | {_f(r['wall_max_s'])} | {_f(p['in_process'])} | {_f(start)} "
                     f"({_f(p['interpreter'])} + {_f(p['imports'])} + {_f(p['definitions'])}) | {_f(p['shutdown'])} | "
                     f"{_f(r['cpu_s'])} | {_f(r['other_load'])} | {_f(r['peak_rss_gib'])} | {r['rows_scored']:,.0f} | "
                     f"{'yes' if r['drift_computed'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


#: Step keys grouped into the stages shown (each Dagster step of the runs, asset checks included).
STAGES = (
    ("ingest", lambda k: k.startswith("raw")),
    ("validate", lambda k: k.startswith("validated")),
    ("features", lambda k: k.startswith("features") and "online_store" not in k),
    ("online store", lambda k: "online_store" in k),
    ("predictions", lambda k: "predictions" in k),
    ("drift report", lambda k: "drift" in k),
    ("live performance", lambda k: "live" in k),
)


def _stage_of(step: str) -> str:
    return next((name for name, match in STAGES if match(step)), "other steps")


def breakdown_table(rows: list[dict[str, Any]]) -> str:
    """The median run of each month, split: start, the sensor and automation evaluations' own time, each run (its
    steps by stage, and Dagster's time in the run outside steps), the Ticker's rest, exit."""
    names = [name for name, _ in STAGES]
    if any(_stage_of(step) == "other steps" for r in rows for step in r["steps"]):
        names.append("other steps")
    feature_stages, automation_stages = names[:3], names[3:]
    head = ("| month (repeat) | cold wall s | start s | in-process s | landing sensor s | feature run s | "
            + " | ".join(f"{n} s" for n in feature_stages) + " | automation evaluations s (count) | automation run s | "
            + " | ".join(f"{n} s" for n in automation_stages) + " | Dagster in runs, outside steps s | rest s | exit s |"
            + "\n|---|" + "---:|" * (len(names) + 10))  # fmt: skip
    lines = [head]
    for r in rows:
        t = r["typical"]
        p = t["phases"]
        stages: dict[str, float] = defaultdict(float)
        for step, seconds in r["steps"].items():
            stages[_stage_of(step)] += seconds
        runs = p["feature_run"] + p["automation_run"]
        rest = p["in_process"] - runs - p["landing_sensor"] - p["automation"]
        start = p["interpreter"] + p["imports"] + p["definitions"]
        lines.append(f"| {r['label']} ({t['repeat']}) | {_f(t['wall_s'])} | {_f(start)} | {_f(p['in_process'])} | "
                     f"{_f(p['landing_sensor'])} | {_f(p['feature_run'])} | "
                     + " | ".join(_f(stages[n]) for n in feature_stages)
                     + f" | {_f(p['automation'])} ({p['ticks']:.0f}) | {_f(p['automation_run'])} | "
                     + " | ".join(_f(stages[n]) for n in automation_stages)
                     + f" | {_f(runs - sum(stages.values()))} | {_f(rest)} | {_f(p['shutdown'])} |")  # fmt: skip
    return "\n".join(lines)


def steps_table(rows: list[dict[str, Any]]) -> str:
    """Every step's seconds in the median run, for the first and last months of each kind."""
    picked = [r for r in rows if (r["sequence"], r["month"]) in {(HISTORY, NO_CHAMPION[0]), (HISTORY, WITH_CHAMPION[0]),
                                                               (HISTORY, LAST), (SHORT, LAST)}]  # fmt: skip
    order = [n for n, _ in STAGES] + ["other steps"]
    steps = sorted({s for r in picked for s in r["steps"]}, key=lambda s: (order.index(_stage_of(s)), s))
    lines = ["| step | " + " | ".join(r["label"] for r in picked) + " |", "|---|" + "---:|" * len(picked)]
    for step in steps:
        lines.append(f"| `{step}` | " + " | ".join(_f(r["steps"].get(step, float("nan")), 3) for r in picked) + " |")
    return "\n".join(lines)


SECTION_TEMPLATE = """{title}

Measures the monthly refresh against the target of its issue: one newly landed month refreshed by a **cold
process** in <= {cold_wall_s:g} s wall, flat as the history grows (month 12 / month 2 <= {flat_ratio:g}). The
refresh is what the platform does when a month lands (`replay_months(landing, [month])`), for the `flight_delay`
model: the `landing_sensor` requests one run for the month, ingest -> validate -> features -> online store export and
the monitoring assets (the list is below); the automation conditions are evaluated too, and would request anything
left. Rollback and retraining (the model's rollback, drift and performance sensors and their
`flight_delay_retraining` runs) are not part of it. The process is `python benchmarks/monthly_refresh.py --worker
refresh`: interpreter start, imports, `build_definitions(Catalog((FLIGHT_DELAY,)), settings)` (the definitions with
the delay model alone, as `mlops simulate` builds them; loading writes nothing, the landing sensor adds the month as a
partition), then a `Ticker` (`mlops_assets/ticks.py`) with `sensors=("landing_sensor",)` and automation on, settled
until a tick requests nothing, on the persistent Dagster instance and DuckDB file of the data directory
(`MLOPS_DATA_DIR`, `DAGSTER_HOME` below it with the repo's `dagster.yaml`). The sensor and automation cursors are kept
between processes in a JSON file of the data directory (the daemon keeps them in its instance). The platform's code
is copied at the start and every process imports the copy, so edits to the working tree during the run change nothing
measured.

Each repeat uses a fresh temporary data directory and lands the replay feed (`--every N` keeps every N-th flight;
the target is for the full feed, `--every 1`; landing is not timed):

* **history**: 2013-01 landed and refreshed (untimed); 2013-02 and 2013-03 refreshed cold with **no champion** yet
  (scoring and drift find no model, so they do less: labelled *(no champion)*, not comparable with the others); the
  first model trained by `flight_delay_retraining` (untimed, as `mlops simulate` bootstraps; no `shadow` model unless
  `--shadow`); then 2013-04 .. 2013-12 refreshed cold, each scored and checked for drift by that champion.
* **short history**: month 2 cannot have a champion (training needs two built months, the newest being the test
  month), so the flatness target is measured on the same month doing the same work: a second data directory with
  only 2013-10 and 2013-11 refreshed and a model trained on them (untimed), then 2013-12 refreshed cold. *2013-12 /
  2013-12 short history* is history growth alone (11 months before it vs 2, the history month 3 has); *month 12 /
  month 4* (the first month with a champion; April and December have about the same number of flights) is shown too.

*Cold wall* is the process's wall time, measured by the parent; *start* is from launch to the definitions loaded
(interpreter start with the standard library, imports of Dagster and the platform, loading the definitions), *in
process* from the definitions loaded to the refresh done (sensor ticks, automation evaluations, runs), *exit* the
rest (saving the cursors, closing the instance, interpreter exit). The in-process part is split below: the landing
sensor's and the automation evaluations' own time (without the runs they start), each run's wall time, its steps
(Dagster's step durations, asset checks included, read from the instance afterwards) and Dagster's time in the runs
outside steps. *CPU s* is the process's user + system time; *other load* is the CPU the rest of the machine used
during it, in cores (above about 0.3 on {nproc} CPUs the times are pessimistic). The flatness lines also give
the ratio of CPU times, which other work on the machine disturbs less than wall times.

Run it from the repository root (about {minutes} min here):

```
python benchmarks/monthly_refresh.py [--repeats 3] [--every 1] [--shadow] [--timeout 300] [--no-readme]
python benchmarks/monthly_refresh.py --readme-from-json [benchmarks/results/monthly_refresh.json]
```

It prints the tables below and rewrites this section only (from its title to its end marker; the rest is kept).
`--readme-from-json` rebuilds it from the last run's `benchmarks/results/monthly_refresh.json` (not tracked).

### Results

{context}

{table}

Verdicts:

```
{summary}
```

Where the time goes, in the run with the median cold wall of each month (its repeat in brackets; its parts add up,
medians of each part would not). *Start* is interpreter + imports + definitions; *rest* is the Ticker's own work
between ticks and runs; *exit* is saving the cursors, closing the instance and interpreter exit:

{breakdown}

Step durations in the same runs (s; Dagster's step start to end, asset checks are steps of their own):

{steps}

{notes}

{end}
"""


def _code() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "mlops_assets", "dagster.yaml"))}


def snapshot_code(target: Path) -> Path:
    """Copy the platform's code (``mlops_assets/``, ``dagster.yaml``) as it is now; every process imports this copy.

    Someone may edit the working tree while the benchmark runs: without a copy, months would run different code, and a
    changed training module would even make the automation retrain (its code version changed) inside a refresh."""
    shutil.copytree(REPO / "mlops_assets", target / "mlops_assets", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dagster.yaml", "dagster.postgres.yaml"):  # prepare_dagster_home copies one of them from there
        shutil.copyfile(REPO / name, target / name)
    digest = hashlib.sha256()
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(target)).encode() + b"\0" + path.read_bytes())
    (target / "SNAPSHOT_SHA256").write_text(digest.hexdigest())
    return target


def machine_info(code: dict[str, Any]) -> dict[str, Any]:
    versions = {}
    for name in ("dagster", "duckdb", "polars", "lightgbm"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "?"
    return {**cpu_and_ram(), "python": platform.python_version(), **versions, "code": code}


def notes_text(report: dict[str, Any]) -> str:
    """The paragraphs after the tables: what was requested, the untimed preparation, why the cursors are kept."""
    rows = report["rows"]
    requested = sorted({k for r in rows for k in r["requested"]})
    setup_s = report.get("setup_s", [])
    paragraphs = [
        f"Assets the refresh requested, over all months: {', '.join(f'`{k}`' for k in requested)}. The automation "
        "conditions also cover the lifecycle assets (training set, challenger, evaluation, champion); they requested "
        "nothing in any refresh (verdict above). Untimed preparation (landing, the untimed refreshes and training): "
        f"{sum(setup_s):.0f} s over the repeats; the whole benchmark took {report['total_s'] / 60:.1f} min.",
        "Why the cursors are kept between processes: without them, a fresh process's first automation evaluation only "
        "starts the conditions' history and requests nothing (checked on 2013-04 when this benchmark was written: the "
        "month's features were built, its monitoring assets were not), so a refresh by a cold process needs the "
        "automation cursor of the previous one, as the daemon keeps it. The landing sensor would do without its cursor "
        "(it skips the files Dagster already ingested, at one instance query per landed file). *Definitions* includes Dagster's storage "
        "modules (SQLAlchemy, ...), which are imported when the instance is first created.",
    ]
    return "\n\n".join(textwrap.fill(p, width=118, break_long_words=False, break_on_hyphens=False) for p in paragraphs)


def write_readme(report: dict[str, Any]) -> None:
    """Rewrite this script's section of ``benchmarks/README.md`` (appended at the end when it is not there yet)."""
    machine, args = report["machine"], report["args"]
    code = machine.get("code") or {}
    code_text = (f"commit {code['git_commit'][:7]}" + (", uncommitted changes in mlops_assets/" if code.get("git_dirty") else "")
                 if code.get("git_commit") else "not a git checkout")  # fmt: skip
    if code.get("snapshot_sha256"):
        code_text += f", copied at the start (snapshot sha256 {code['snapshot_sha256'][:12]}): every process ran that copy"
    section = SECTION_TEMPLATE.format(
        title=SECTION_TITLE, end=SECTION_END, **TARGETS, nproc=machine["nproc"],
        minutes=max(1, round(report["total_s"] / 60)),
        context=textwrap.fill(
            f"{report['date']}: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB RAM; Python "
            f"{machine['python']}, Dagster {machine['dagster']}, DuckDB {machine['duckdb']}, polars {machine['polars']}, "
            f"LightGBM {machine['lightgbm']}; {args['repeats']} repeat(s), every {args['every']} flight(s)"
            + (", a `shadow` model scoring beside the champion" if args["shadow"] else "")
            + f". Load average (1, 5, 15 min) at start {machine['load_average_start']}, at end {machine['load_average']}. "
            f"Code: {code_text}.", width=118, break_long_words=False, break_on_hyphens=False),
        table=results_table(report["rows"]), summary="\n".join(report["summary"]),
        breakdown=breakdown_table(report["rows"]), steps=steps_table(report["rows"]), notes=notes_text(report),
    ).rstrip() + "\n"  # fmt: skip
    replace_readme_section(README, SECTION_TITLE, SECTION_END, section)
    print(f"wrote {README.relative_to(REPO)}")


# --- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="whole sequences, each in a fresh data dir (default 3)")
    parser.add_argument("--every", type=int, default=1, help="keep every n-th flight (default 1: the full feed, "
                        "what the target is for)")  # fmt: skip
    parser.add_argument("--shadow", action="store_true", help="also set the first model as the `shadow` (as `mlops "
                        "simulate` does): every month is scored by two models")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per process (default 300)")
    parser.add_argument("--no-readme", action="store_true", help="print only; do not rewrite benchmarks/README.md")
    parser.add_argument("--readme-from-json", nargs="?", const=RESULTS, type=Path, metavar="PATH",
                        help=f"measure nothing; rewrite the README section from a results file (default {RESULTS.relative_to(REPO)})")  # fmt: skip
    parser.add_argument("--worker", choices=["refresh", "setup", "bootstrap"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.shadow)))
        return
    if args.readme_from_json:
        write_readme(json.loads(args.readme_from_json.read_text()))
        return

    began = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    measurements: list[dict[str, Any]] = []
    setup_s: list[float] = []

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="mlops-bench-refresh-") as tmp:
        code = {**_code(), "snapshot_sha256": ""}
        code_dir = snapshot_code(Path(tmp) / "code")
        code["snapshot_sha256"] = (code_dir / "SNAPSHOT_SHA256").read_text()
        sys.path.insert(0, str(code_dir))  # this process's own imports of the platform (landing, inspection) too
        say(f"code: commit {code['git_commit'][:7]}" + (", uncommitted changes in mlops_assets/" if code["git_dirty"] else "")
            + f", copied to {code_dir} (snapshot {code['snapshot_sha256'][:12]})")  # fmt: skip
        for repeat in range(1, args.repeats + 1):
            # the year as it lands: months 2 and 3 before any model, then the first model, then 4..12
            main_dir = DataDir(Path(tmp) / f"r{repeat}-history", args.every, code_dir)
            main_dir.prepare()
            say(f"repeat {repeat}/{args.repeats}: history, setup: landing and refreshing {FIRST} (untimed)")
            setup_s.append(setup(main_dir, [FIRST], args.timeout, bootstrap=False, shadow=False))
            history = [FIRST]
            for month in [*NO_CHAMPION, *WITH_CHAMPION]:
                if month == WITH_CHAMPION[0]:
                    say(f"repeat {repeat}/{args.repeats}: history, setup: the first model "
                        f"(`{MODEL}_retraining`, untimed)")
                    setup_s.append(setup(main_dir, [], args.timeout, bootstrap=True, shadow=args.shadow))
                m = measure(main_dir, HISTORY, month, list(history), month not in NO_CHAMPION, repeat, args.timeout)
                measurements.append(m)
                say(f"repeat {repeat}/{args.repeats}: {_label(HISTORY, month, m['champion']):<20} {_line(m)}")
                history.append(month)
            # the same last month on a short history: the flatness target's "month 2" with a champion
            short_dir = DataDir(Path(tmp) / f"r{repeat}-short", args.every, code_dir)
            short_dir.prepare()
            say(f"repeat {repeat}/{args.repeats}: short history, setup: {SHORT_HISTORY[0]}..{SHORT_HISTORY[1]} and a "
                f"first model (untimed)")  # fmt: skip
            setup_s.append(setup(short_dir, list(SHORT_HISTORY), args.timeout, bootstrap=True, shadow=args.shadow))
            m = measure(short_dir, SHORT, LAST, list(SHORT_HISTORY), True, repeat, args.timeout)
            measurements.append(m)
            say(f"repeat {repeat}/{args.repeats}: {_label(SHORT, LAST, True)} {_line(m)}")
            # keep the temp dir small: this repeat's data is no longer needed
            for done in (main_dir, short_dir):
                shutil.rmtree(done.path, ignore_errors=True)

    rows = summarize(measurements)
    summary = verdicts(rows)
    machine = {**machine_info(code), "load_average_start": load_start, "load_average": [round(x, 2) for x in os.getloadavg()]}
    report = {"date": date.today().isoformat(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "targets": TARGETS, "machine": machine, "total_s": time.perf_counter() - began, "setup_s": setup_s,
              "rows": rows, "summary": summary, "measurements": measurements}  # fmt: skip
    print()
    print(results_table(rows))
    print()
    print(breakdown_table(rows))
    print()
    print("\n".join(summary))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {RESULTS.relative_to(REPO)}")
    if not args.no_readme:
        write_readme(report)


if __name__ == "__main__":
    main()
