"""Benchmark of the point-in-time feature build (``features.flight_features``) against targets and a pandas baseline.

Run from the repository root::

    python benchmarks/feature_build.py                 # 5 repeats, 10x copy, pandas baseline, writes README.md
    python benchmarks/feature_build.py --repeats 3 --scale 5 --skip-pandas-large --no-readme

Preparation (untimed): the 12 months of 2013 are landed with the replay feed into a temporary directory, ingested and
validated into a DuckDB file (the production path); the large copy is that file with 2013 repeated ``--scale - 1``
more times with the years shifted (``year``, ``time_hour`` and ``_month`` moved together, 2014, 2015, ...), inserted in
SQL into the validated tables.

Each measurement runs in a fresh Python subprocess (this script with ``--worker``), which reports the wall time of
each repeat of the measured call only (not the imports, not opening DuckDB, not loading pandas inputs) and its own
peak resident memory (``VmHWM``, whole process: interpreter, libraries, inputs and the build). The DuckDB
connection is configured like the platform's (``memory_limit='4GB'``, ``threads=2``) and reopened for every repeat.
Everything is written under a temporary directory, except ``benchmarks/README.md`` and ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from machine import cpu_and_ram  # benchmarks/machine.py (this folder is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "feature_build.json"

DUCKDB_CONFIG = {"memory_limit": "4GB", "threads": 2}  # as mlops_assets.defs.resources.warehouse
EARLY = datetime(2012, 1, 1)  # context_start of a full build: before any data
GIB = 1024**3

TARGETS = {"full_year_s": 1.5, "large_s": 10.0, "large_peak_gib": 3.5, "month_s": 0.2}
#: "flat across months": no later month costs more per flight than this times the first month measured (2013-02), and
#: the same month on the large copy's longer history no more than this times the same month on 2013 alone.
FLAT_RATIO = 1.25


# --- preparation (untimed) --------------------------------------------------------------------------------------


def _connect(path: Path, read_only: bool = False):
    import duckdb

    return duckdb.connect(str(path), read_only=read_only, config=dict(DUCKDB_CONFIG))


def prepare_base(workdir: Path) -> Path:
    """2013 landed by the replay feed, ingested and validated: the production path into a DuckDB file."""
    from mlops_assets.core.ingest import ingest_raw, validate_partition
    from mlops_assets.core.landing import month_range, scan_landing
    from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months

    landing, quarantine, path = workdir / "landing", workdir / "quarantine", workdir / "x1.duckdb"
    replay_months(landing, month_range("2013-01", "2013-12"))
    files = scan_landing(landing)
    now = datetime.now()
    conn = _connect(path)
    try:
        for table in ("airlines", "airports", "planes", "flights", "weather"):
            spec = NYCFLIGHTS13.table(table)
            for landed in sorted((f for f in files if f.table == table), key=lambda f: str(f.month)):
                verdict = ingest_raw(conn, spec, landed, landing, quarantine, "bench", now)
                if not verdict.accepted:
                    raise RuntimeError(f"ingest rejected {landed.relative_name}: {verdict.message}")
                verdict = validate_partition(conn, spec, landed.month, "bench", now)
                if not verdict.accepted:
                    raise RuntimeError(f"validation rejected {landed.relative_name}: {verdict.message}")
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    return path


def _shift_year(column: str, years: int) -> str:
    """SQL moving a 'YYYY...' string (time_hour, _month) ``years`` later."""
    return f"printf('%04d', CAST(substr({column}, 1, 4) AS INTEGER) + {years}) || substr({column}, 5)"


def prepare_large(base: Path, workdir: Path, scale: int) -> Path:
    """The base file with 2013 repeated as 2014 .. 2013 + scale - 1 (flights and weather; reference tables as is)."""
    path = workdir / f"x{scale}.duckdb"
    shutil.copyfile(base, path)
    conn = _connect(path)
    try:
        for table in ("flights", "weather"):
            for years in range(1, scale):
                conn.execute(
                    f"""INSERT INTO validated.{table} BY NAME
                        SELECT * REPLACE (year + {years} AS year, {_shift_year("time_hour", years)} AS time_hour,
                                          {_shift_year("_month", years)} AS _month)
                        FROM validated.{table} WHERE _month BETWEEN '2013-01' AND '2013-12'"""
                )
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    return path


def table_rows(path: Path, table: str) -> int:
    conn = _connect(path, read_only=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM validated.{table}").fetchone()[0])
    finally:
        conn.close()


# --- one measurement, in its own process -------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux keeps it across ``exec``, so a subprocess started by a large parent reports at least the
    parent's size (``RUSAGE_CHILDREN`` has the same floor). ``ru_maxrss`` is the fallback where there is no ``/proc``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(job: dict) -> dict:
    """Run one measurement: ``warmup`` untimed calls, then ``repeats`` timed ones; report times and peak memory."""
    from mlops_assets.core.features import compute_features, write_month
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES as spec

    kind, db = job["kind"], Path(job["db"])

    if kind == "pandas":
        import pandas_baseline

        conn = _connect(db, read_only=True)
        started = time.perf_counter()
        tables = pandas_baseline.load_validated(conn)
        load_s = time.perf_counter() - started
        conn.close()

        def call() -> int:
            return len(pandas_baseline.build_features_pandas(**tables))

        setup = {"load_s": load_s}
    else:
        first, last = job.get("first"), job.get("last")
        context_start = EARLY if job.get("early") else None
        read_only = kind != "write_month"
        setup = {}

        def call() -> int:
            conn = _connect(db, read_only=read_only)
            try:
                cpu, started = time.process_time(), time.perf_counter()  # measured: the build (and write) only
                if kind == "write_month":
                    frame = write_month(conn, spec, first)
                else:
                    frame = compute_features(conn, spec, first, last, context_start=context_start)
                call.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
                call.cpu = time.process_time() - cpu  # type: ignore[attr-defined]
                return frame.height
            finally:
                conn.close()

        if kind == "write_month":  # the table exists in production: create it first, untimed, with another month
            conn = _connect(db)
            write_month(conn, spec, job["create_with"])
            conn.close()

    rss_ready = _peak_rss_bytes()
    times, cpu_times, rows = [], [], None
    for i in range(job["warmup"] + job["repeats"]):
        cpu, started = time.process_time(), time.perf_counter()
        rows = call()
        elapsed, cpu = getattr(call, "elapsed", time.perf_counter() - started), getattr(call, "cpu", time.process_time() - cpu)
        if i >= job["warmup"]:
            times.append(elapsed)
            cpu_times.append(cpu)
    return {**setup, "times": times, "cpu_times": cpu_times, "rows": rows, "peak_rss": _peak_rss_bytes(), "rss_before": rss_ready}


def run_worker(job: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter and return its report (or the error)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the report --------------------------------------------------------------------------------------------------


def _machine() -> dict:
    import duckdb
    import polars

    try:
        import pandas

        pandas_version = pandas.__version__
    except ImportError:
        pandas_version = "-"
    return {
        **cpu_and_ram(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "polars": polars.__version__,
        "pandas": pandas_version,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def summarize(results: list[dict]) -> list[dict]:
    for r in results:
        times = r.get("times") or []
        r["median_s"] = statistics.median(times) if times else None
        r["min_s"] = min(times) if times else None
        r["max_s"] = max(times) if times else None
        r["cpu_s"] = statistics.median(r["cpu_times"]) if r.get("cpu_times") else None
    return results


def markdown_table(results: list[dict], ratios: dict[str, str]) -> str:
    lines = [
        "| measurement | rows out | repeats | median s | min s | max s | CPU s | peak RSS GiB | RSS before GiB | target | result | pandas / ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | - | - | - | - | - | - | {r.get('target', '')} | error: {r['error']} | |")
            continue
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {len(r['times'])} | {_fmt_s(r['median_s'])} | {_fmt_s(r['min_s'])} | "
            f"{_fmt_s(r['max_s'])} | {_fmt_s(r['cpu_s'])} | {_fmt_gib(r['peak_rss'])} | {_fmt_gib(r['rss_before'])} | {r.get('target', '')} | "
            f"{r.get('verdict', '')} | {ratios.get(r['id'], '')} |"
        )
    return "\n".join(lines)


def plain_table(results: list[dict], ratios: dict[str, str]) -> str:
    header = f"{'measurement':56s} {'rows':>10s} {'median s':>9s} {'min s':>8s} {'CPU s':>7s} {'peak GiB':>9s}  {'target':22s} {'result':6s} {'pandas/ours':>11s}"
    lines = [header, "-" * len(header)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:56s} error: {r['error']}")
            continue
        lines.append(
            f"{r['name']:56s} {r['rows']:>10,} {_fmt_s(r['median_s']):>9s} {_fmt_s(r['min_s']):>8s} {_fmt_s(r['cpu_s']):>7s} "
            f"{_fmt_gib(r['peak_rss']):>9s}  {r.get('target', ''):22s} {r.get('verdict', ''):6s} {ratios.get(r['id'], ''):>11s}"
        )
    return "\n".join(lines)


def judge(results: list[dict], scale: int) -> tuple[dict[str, str], list[str]]:
    """Mark each measurement against its target; return the pandas/ours ratios and the summary lines."""
    by_id = {r["id"]: r for r in results if "error" not in r}
    summary: list[str] = []

    def mark(rid: str, target: str, ok: bool) -> None:
        by_id[rid]["target"] = target
        by_id[rid]["verdict"] = "PASS" if ok else "FAIL"
        summary.append(f"{'PASS' if ok else 'FAIL'}  {by_id[rid]['name']}: {target}")

    if "full_1x" in by_id:
        mark("full_1x", f"<= {TARGETS['full_year_s']} s", by_id["full_1x"]["median_s"] <= TARGETS["full_year_s"])
    months = [rid for rid in ("month_02", "month_06", "month_12") if rid in by_id]
    for rid in months:
        mark(rid, f"<= {TARGETS['month_s']} s", by_id[rid]["median_s"] <= TARGETS["month_s"])
    growth = {}
    if len(months) >= 2:
        # months differ in size (February has 28 days): compare the time per flight
        def per_row(rid: str) -> float:
            return by_id[rid]["median_s"] / max(by_id[rid]["rows"], 1)

        growth.update({by_id[rid]["name"]: per_row(rid) / per_row(months[0]) for rid in months[1:]})
    if "month_large" in by_id and "month_06" in by_id:
        ratio = by_id["month_large"]["median_s"] / by_id["month_06"]["median_s"]
        by_id["month_large"]["target"] = f"<= {FLAT_RATIO} x 2013-06"
        by_id["month_large"]["verdict"] = "PASS" if ratio <= FLAT_RATIO else "FAIL"
        growth[by_id["month_large"]["name"]] = ratio
    if growth:
        ok = max(growth.values()) <= FLAT_RATIO
        ratios_text = ", ".join(f"{name.removeprefix('one month ')} {ratio:.2f}" for name, ratio in growth.items())
        summary.append(
            f"{'PASS' if ok else 'FAIL'}  one month flat (time per flight vs 2013-02, or vs 2013-06 for the large history, "
            f"each <= {FLAT_RATIO}): {ratios_text}"
        )
    if "full_large" in by_id and scale == 10:  # the targets are for 10 years of data
        r = by_id["full_large"]
        ok_time = r["median_s"] <= TARGETS["large_s"]
        ok_mem = r["peak_rss"] <= TARGETS["large_peak_gib"] * GIB
        r["target"] = f"<= {TARGETS['large_s']:g} s, <= {TARGETS['large_peak_gib']} GiB"
        r["verdict"] = "PASS" if ok_time and ok_mem else "FAIL"
        summary.append(f"{'PASS' if ok_time else 'FAIL'}  {r['name']}: <= {TARGETS['large_s']:g} s (median {r['median_s']:.2f} s)")
        summary.append(
            f"{'PASS' if ok_mem else 'FAIL'}  {r['name']}: peak RSS <= {TARGETS['large_peak_gib']} GiB "
            f"({r['peak_rss'] / GIB:.2f} GiB)"
        )

    ratios: dict[str, str] = {}
    for ours, theirs in (("full_1x", "pandas_1x"), ("full_large", "pandas_large")):
        if ours in by_id and theirs in by_id:
            ratio = by_id[theirs]["median_s"] / by_id[ours]["median_s"]
            memory = by_id[theirs]["peak_rss"] / by_id[ours]["peak_rss"]
            ratios[ours] = f"{ratio:.1f}x time, {memory:.1f}x mem"
            summary.append(f"info  pandas baseline / ours ({by_id[ours]['name']}): {ratio:.2f}x the time, {memory:.2f}x the peak memory")
    return ratios, summary


README_TEMPLATE = """# Benchmarks

## `feature_build.py`: point-in-time feature build

Measures how long `mlops_assets.core.features` takes to build `features.flight_features` (the SQL in
`models/flight_delay/flight_features.sql` plus the trailing windows of `core/features/pit.py`) and compares it with a
plain-pandas implementation of the same features (`pandas_baseline.py`, built on `pandas.merge_asof`; the test
`mlops_assets_tests/core/test_pandas_reference.py` checks that both give the same values).

What is measured: the wall time of the call only, median over the repeats (after one untimed warm-up call for the 1x
measurements; none for the large ones, and the large pandas run is timed once). *CPU s* is the median CPU time of
the process during the call (all its threads): when it is well below 2 x the wall time on 2 CPUs, the build waited
(for memory, I/O or other work on the machine).

* **full year**: `compute_features(conn, FLIGHT_FEATURES, "2013-01", "2013-12", context_start=2012-01-01)`, all
  336,776 flights;
* **one month**: `compute_features(conn, FLIGHT_FEATURES, month)` for months 2, 6 and 12 (a month alone reads its
  35-day look-back only, so it should cost the same whatever the month, and whatever the history size: the same month
  is also built on the {scale}x copy), and `write_month` (build + replace the partition in DuckDB) for 2013-06;
* **{scale}x**: 2013 repeated as 2013..{last_year} (years, `time_hour` and `_month` shifted together) and built in one
  call from 2013-01 to {last_year}-12;
* **pandas baseline**: `build_features_pandas` on pandas frames already in memory (reading them from DuckDB is not
  timed; it is listed separately), at 1x and at {scale}x.

Each measurement runs in a fresh subprocess; *peak RSS* is that process's high-water resident memory (`VmHWM`:
interpreter, libraries, the inputs and the build; *RSS before* is the peak just before the first call, i.e. the fixed
part). `ru_maxrss` is not used: Linux carries it over `exec`, so a subprocess (and `RUSAGE_CHILDREN`) reports at least
the size of the parent that started it. DuckDB runs with `memory_limit='4GB'`, `threads=2` as in
`mlops_assets/defs/resources.py`, on a connection opened for each call (as a Dagster run does, so DuckDB's own cache
starts cold; the file is in the OS cache); polars uses all cores, pandas one. Preparation (landing, ingest and
validation of 2013, making the {scale}x copy) is not timed; everything is written to a temporary directory.

Run it from the repository root (about {minutes} minutes here; `make bench` installs the `bench` extra first):

```
python benchmarks/feature_build.py [--repeats 5] [--scale 10] [--large-repeats 3] [--skip-pandas | --skip-pandas-large]
                                   [--no-readme]
```

It prints the table below and rewrites this file; the raw numbers go to `benchmarks/results/feature_build.json`
(not tracked).

## Results

{date}: {nproc} CPUs ({cpu}), {ram_gib} GiB RAM; Python {python}, DuckDB {duckdb}, polars {polars},
pandas {pandas}; {repeats} repeats ({large_repeats} for our {scale}x build, 1 for pandas at {scale}x). Load average
(1, 5, 15 min) at start {load_start}, at end {load_end}: a load near or above the CPU count means other work shared
the machine, and the times are pessimistic.

{table}

Targets:

```
{summary}
```

Data: {rows_1x:,} flights and {weather_1x:,} weather rows at 1x; {rows_large:,} flights and {weather_large:,} weather
rows at {scale}x. Preparation took {prep_s:.0f} s and is not included above.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (default 5)")
    parser.add_argument("--scale", type=int, default=10, help="size of the large copy in years of 2013 data (default 10; 1 skips it)")
    parser.add_argument("--large-repeats", type=int, default=None,
                        help="timed repeats of our large build (default min(repeats, 3)); the large pandas run is timed once")
    parser.add_argument("--skip-pandas", action="store_true", help="do not run the pandas baseline")
    parser.add_argument("--skip-pandas-large", action="store_true", help="run the pandas baseline at 1x only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per measurement (default 300)")
    parser.add_argument("--no-readme", action="store_true", help="print only; do not rewrite benchmarks/README.md")
    parser.add_argument("--rewrite-readme", action="store_true",
                        help="measure nothing; rewrite README.md from the last run's benchmarks/results/feature_build.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rewrite_readme:
        write_readme(json.loads(RESULTS.read_text()))
        return

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    began = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    large_repeats = args.large_repeats or min(args.repeats, 3)
    last_year = 2013 + args.scale - 1
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
        workdir = Path(tmp)
        print("preparing: landing, ingesting and validating 2013 ...", flush=True)
        started = time.perf_counter()
        base = prepare_base(workdir)
        large = None
        if args.scale > 1:
            print(f"preparing: the {args.scale}x copy (2013..{last_year}) ...", flush=True)
            large = prepare_large(base, workdir, args.scale)
        writable = workdir / "write.duckdb"
        shutil.copyfile(base, writable)
        prep_s = time.perf_counter() - started
        counts = {
            "rows_1x": table_rows(base, "flights"),
            "weather_1x": table_rows(base, "weather"),
            "rows_large": table_rows(large, "flights") if large else 0,
            "weather_large": table_rows(large, "weather") if large else 0,
        }

        small = {"repeats": args.repeats, "warmup": 1}
        big = {"repeats": large_repeats, "warmup": 0}
        jobs: list[tuple[str, str, dict]] = [
            ("full_1x", "full year 2013 (1x)", {"kind": "build", "db": str(base), "first": "2013-01", "last": "2013-12", "early": True, **small}),
            ("month_02", "one month 2013-02", {"kind": "build", "db": str(base), "first": "2013-02", **small}),
            ("month_06", "one month 2013-06", {"kind": "build", "db": str(base), "first": "2013-06", **small}),
            ("month_12", "one month 2013-12", {"kind": "build", "db": str(base), "first": "2013-12", **small}),
            ("write_06", "write_month 2013-06 (build + write)", {"kind": "write_month", "db": str(writable), "first": "2013-06", "create_with": "2013-01", **small}),
        ]  # fmt: skip
        if large:
            jobs += [
                ("month_large", f"one month {last_year}-06 ({args.scale}x history)", {"kind": "build", "db": str(large), "first": f"{last_year}-06", **small}),
                ("full_large", f"{args.scale}x: 2013..{last_year} in one build", {"kind": "build", "db": str(large), "first": "2013-01", "last": f"{last_year}-12", "early": True, **big}),
            ]  # fmt: skip
        if not args.skip_pandas:
            jobs.append(("pandas_1x", "pandas baseline, full year (1x)", {"kind": "pandas", "db": str(base), **small}))
            if large and not args.skip_pandas_large:
                jobs.append(("pandas_large", f"pandas baseline, {args.scale}x", {"kind": "pandas", "db": str(large), **big, "repeats": 1}))

        results = []
        for rid, name, job in jobs:
            print(f"measuring: {name} ...", flush=True)
            report = run_worker(job, args.timeout)
            results.append({"id": rid, "name": name, **report})
            if "error" in report:
                print(f"  error: {report['error']}", flush=True)
            else:
                times = ", ".join(f"{t:.3f}" for t in report["times"])
                extra = f", pandas inputs read from DuckDB in {report['load_s']:.2f} s (untimed)" if "load_s" in report else ""
                print(f"  {times} s; peak RSS {report['peak_rss'] / GIB:.2f} GiB{extra}", flush=True)

    summarize(results)
    ratios, summary = judge(results, args.scale)
    for r in results:
        if "load_s" in r:
            r["name"] += f" (+{r['load_s']:.2f} s to read inputs)"
    print()
    print(plain_table(results, ratios))
    print()
    print("\n".join(summary))
    total = time.perf_counter() - began
    print(f"\ntotal {total:.0f} s (preparation {prep_s:.0f} s)")

    machine = _machine()
    machine["load_average_start"] = load_start
    report = {"date": date.today().isoformat(), "machine": machine, "args": vars(args), "large_repeats": large_repeats,
              "counts": counts, "prep_s": prep_s, "total_s": total, "results": results, "ratios": ratios,
              "summary": summary}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str))
    if not args.no_readme:
        write_readme(report)


#: Titles of the sections other benchmark scripts write into the same README.
OTHER_SECTIONS = ("## `training_pipeline.py`", "## `monthly_refresh.py`", "## `drift_vs_evidently.py`", "## `serving_load.py`")


def write_readme(report: dict) -> None:
    """``benchmarks/README.md`` from a run's report (the content of ``benchmarks/results/feature_build.json``)."""
    args, machine = report["args"], report["machine"]
    # this script owns the top of the file; the other benchmarks' sections (from the first of their titles) stay
    existing = README.read_text() if README.exists() else ""
    others = min((existing.index(t) for t in OTHER_SECTIONS if t in existing), default=len(existing))
    README.write_text(
        README_TEMPLATE.format(
            scale=args["scale"], last_year=2013 + args["scale"] - 1, minutes=max(1, round(report["total_s"] / 60)),
            date=report["date"], repeats=args["repeats"], large_repeats=report["large_repeats"],
            load_start=machine["load_average_start"], load_end=machine["load_average"],
            table=markdown_table(report["results"], report["ratios"]), summary="\n".join(report["summary"]),
            prep_s=report["prep_s"], **report["counts"],
            **{k: v for k, v in machine.items() if k not in ("load_average", "load_average_start")},
        ).rstrip("\n")
        + "\n\n"
        + existing[others:]
    )
    print(f"wrote {README.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
