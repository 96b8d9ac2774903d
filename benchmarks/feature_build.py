"""The point-in-time feature build (``features.flight_features``) against a plain-pandas build of the same features.

Preparation (untimed): 2013 landed (``mlops replay``), ingested and validated into a DuckDB file by the core functions
(``plain_pipeline.ingest_and_validate``); for 10x, the validated 2013 repeated as 2014..2022 (``year``, ``time_hour``
and ``_month`` shifted) in a copy. Each measurement runs in a fresh process of this script (``--worker``), times its
call after one untimed warm-up (median of the repeats) and reports its CPU time; the peak memory is the process's.

* ours: ``compute_features(conn, FLIGHT_FEATURES, first, last)`` over the whole range, and one month (2013-06) alone;
* pandas: ``pandas_baseline.build_features_pandas`` on the validated tables already read into pandas (reading untimed).

    python benchmarks/feature_build.py [--repeats 5] [--scale 10] [--pandas-large] [--every 1] [--smoke] [--no-readme]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import harness

TARGETS = {"year_s": 1.5, "month_s": 0.2, "large_s": 10.0, "large_gib": 3.5}
DUCKDB_CONFIG = {"memory_limit": "4GB", "threads": 2}  # as mlops_assets.defs.resources.warehouse


def worker(kind: str, database: str, first: str, last: str, repeats: int) -> dict[str, Any]:
    """One measurement in this fresh process: ``ours`` (one range) or ``pandas``."""
    import duckdb

    from mlops_assets.core.features import compute_features
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES

    conn = duckdb.connect(database, read_only=True, config=dict(DUCKDB_CONFIG))
    if kind == "ours":
        call = lambda: compute_features(conn, FLIGHT_FEATURES, first, last).height
    else:
        import pandas_baseline

        tables = pandas_baseline.load_validated(conn)
        call = lambda: len(pandas_baseline.build_features_pandas(**tables))
    rows = call()
    times, cpu = [], []
    for _ in range(repeats):
        with harness.measure_here() as m:
            call()
        times.append(m["wall_s"])
        cpu.append(m["cpu_s"])
    return {"rows": rows, "times": times, "cpu": cpu}


def prepare(work: Path, every: int, scale: int, through: str) -> tuple[Path, Path]:
    """The 1x and the ``scale``x DuckDB files of the validated tables, written as the platform writes its warehouse
    (``connect_warehouse``: its row groups), so the builds read the layout they read in a run."""
    import plain_pipeline

    from mlops_assets.core.settings import load_settings
    from mlops_assets.core.store import connect_warehouse

    data = harness.landed(work / "data", through, every)  # shared under make bench-smoke
    base, large = data / "warehouse.duckdb", work / f"x{scale}.duckdb"
    with connect_warehouse(base, DUCKDB_CONFIG) as conn:
        plain_pipeline.ingest_and_validate(conn, load_settings(data), "bench")
    if scale == 1:
        return base, base
    shutil.copyfile(base, large)
    with connect_warehouse(large, DUCKDB_CONFIG) as conn:

        def shifted(column: str) -> str:
            return f"printf('%04d', CAST(substr({column}, 1, 4) AS INTEGER) + $years) || substr({column}, 5)"

        for table in ("flights", "weather"):
            for y in range(1, scale):
                conn.execute(
                    f"""INSERT INTO validated.{table} BY NAME SELECT * REPLACE (year + $years AS year,
                        {shifted("time_hour")} AS time_hour, {shifted("_month")} AS _month)
                        FROM validated.{table} WHERE _month BETWEEN '2013-01' AND '2013-12'""",
                    {"years": y},
                )
    return base, large


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--every", type=int, default=1, help="keep every n-th flight (1: the target's feed)")
    parser.add_argument("--pandas-large", action="store_true", help="also pandas at the large scale (about a minute)")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "DB", "FIRST", "LAST"), help=argparse_suppress())
    args = harness.parse(parser)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return 0
    through, month = "2013-12", "06"
    if args.smoke:  # three months are enough to see it work
        args.repeats, args.scale, args.every, through, month = 1, 2, 50, "2013-03", "02"
    report = harness.Report("feature_build", args.smoke)
    last_large = f"{2012 + args.scale}-{through[5:]}"
    with harness.workdir() as work:
        base, large = prepare(work, args.every, args.scale, through)
        jobs = {
            f"ours, 2013-01..{through} (1x)": ("ours", base, "2013-01", through, args.repeats),
            f"ours, one month 2013-{month}": ("ours", base, f"2013-{month}", f"2013-{month}", args.repeats),
            "pandas, the same (1x)": ("pandas", base, "", "", args.repeats),
            f"ours, 2013..{last_large[:4]} ({args.scale}x)": (
                "ours",
                large,
                "2013-01",
                last_large,
                min(args.repeats, 3),
            ),
            f"ours, one month {last_large[:4]}-{month} ({args.scale}x history)": (
                "ours",
                large,
                *[f"{last_large[:4]}-{month}"] * 2,
                args.repeats,
            ),
        }
        if args.pandas_large:
            jobs[f"pandas, {args.scale}x"] = ("pandas", large, "", "", 1)
        results: dict[str, dict[str, Any]] = {}
        for name, (kind, db, first, last, repeats) in jobs.items():
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                kind,
                str(db),
                first,
                last,
                "--repeats",
                str(repeats),
            ]
            m = harness.run_process(command)
            results[name] = {**m.json_tail(), "peak_gib": m.peak_bytes / harness.GIB, "other_cores": m.other_cores}
            print(f"  {name}: {harness.stats(results[name]['times'])['median']:.3f} s", flush=True)
    med = {name: harness.stats(r["times"])["median"] for name, r in results.items()}
    names = list(jobs)
    report.require(results[names[0]]["rows"] == results[names[2]]["rows"], "ours and pandas differ in row count")
    report.figure(
        f"{names[0]}, s",
        f"{med[names[0]]:.3f}",
        f"<= {TARGETS['year_s']:g} s",
        med[names[0]] <= TARGETS["year_s"],
        f"pandas {med[names[2]] / med[names[0]]:.1f}x the time",
    )
    report.figure(
        f"{names[1]}, s", f"{med[names[1]]:.3f}", f"<= {TARGETS['month_s']:g} s", med[names[1]] <= TARGETS["month_s"]
    )
    flat = med[names[4]] / med[names[1]]
    report.figure(f"one month flat: {args.scale}x history / 1x", f"{flat:.2f}", "<= 1.25", flat <= 1.25)
    gib = results[names[3]]["peak_gib"]
    report.figure(
        f"{names[3]}, s / peak GiB",
        f"{med[names[3]]:.2f} / {gib:.2f}",
        f"<= {TARGETS['large_s']:g} s, <= {TARGETS['large_gib']:g} GiB",
        med[names[3]] <= TARGETS["large_s"] and gib <= TARGETS["large_gib"],
    )
    rows = [
        [
            name,
            f"{r['rows']:,}",
            len(r["times"]),
            f"{med[name]:.3f}",
            f"{min(r['times']):.3f}",
            f"{max(r['times']):.3f}",
            f"{harness.stats(r['cpu'])['median']:.2f}",
            f"{r['peak_gib']:.2f}",
            f"{r['other_cores']:.2f}",
        ]
        for name, r in results.items()
    ]
    header = ["build", "rows", "repeats", "median s", "min s", "max s", "CPU s", "process peak GiB", "other load"]
    report.tables.append(harness.markdown_table(header, rows))
    report.raw = results
    return harness.finish(report, args)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
