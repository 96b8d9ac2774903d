"""Drift detection: ``mlops_assets.core.drift`` against Evidently's ``DataDriftPreset`` on the same frames.

Data (untimed): ``features.flight_features`` of 2013 built by the core functions (as ``feature_build.py`` prepares it),
the model's numeric and categorical features; reference = Jan-Jun, current = Jul-Dec, both repeated ``--scale`` times.
Each tool runs in a fresh process after one untimed warm-up on 20,000 rows; median of the repeats:

* ours: ``reference_profile`` + ``compare`` (the profile is normally stored at training time: *compare only* is what
  a monthly check costs);
* Evidently: ``Dataset.from_pandas`` of both frames + ``Report([DataDriftPreset(...)]).run`` with our methods and
  thresholds (Wasserstein for numeric, Jensen-Shannon for categorical, 0.1, drift share 0.3); ``to_pandas`` untimed.

Targets: Evidently / ours >= 20x, the same verdict for every column. Evidently needs pandas < 3, so it runs in its own
venv (``make bench-drift``); ``--skip-evidently`` measures ours alone (the smoke run, in .venv).

    python benchmarks/drift_vs_evidently.py [--scale 1] [--repeats 3] [--skip-evidently] [--smoke] [--no-readme]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import harness

TARGET_RATIO = 20.0
WARMUP_ROWS = 20_000


def frames(data: str, scale: int) -> tuple[Any, Any, list[str], list[str]]:
    """Reference (Jan-Jun) and current (Jul-Dec, or the later half of the months there are) and the columns."""
    import polars as pl

    from mlops_assets.models.flight_delay import FLIGHT_FEATURES as spec

    frame = pl.read_parquet(data)
    months = sorted(frame["_month"].unique())
    is_reference = pl.col("_month") <= months[len(months) // 2 - 1]
    columns = [*spec.numeric, *spec.categorical]
    reference, current = (frame.filter(f).select(columns) for f in (is_reference, ~is_reference))
    return (
        pl.concat([reference] * scale, rechunk=True),
        pl.concat([current] * scale, rechunk=True),
        list(spec.numeric),
        list(spec.categorical),
    )


def ours(data: str, scale: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    from mlops_assets.core.drift import DriftThresholds, compare, reference_profile

    warnings.filterwarnings("ignore", message="Mean of empty slice")  # no model here: no scores to profile
    warnings.filterwarnings("ignore", message="invalid value encountered")
    reference, current, numeric, categorical = frames(data, scale)
    scores = np.empty(0)
    compare(reference_profile(reference.head(WARMUP_ROWS), numeric, categorical, scores), current.head(WARMUP_ROWS))
    total, compare_only = [], []
    for _ in range(repeats):
        with harness.measure_here() as a:
            profile = reference_profile(reference, numeric, categorical, scores)
        with harness.measure_here() as b:
            verdict = compare(profile, current)
        total.append(a["wall_s"] + b["wall_s"])
        compare_only.append(b["wall_s"])
    return {
        "times": total,
        "compare_times": compare_only,
        "rows": reference.height + current.height,
        "drifted": {c.column: c.drifted for c in verdict.features},
        "dataset_drifted": verdict.drift_share >= DriftThresholds().drift_share,
    }


def evidently(data: str, scale: int, repeats: int) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from mlops_assets.core.drift import DriftThresholds

    t = DriftThresholds()
    options = {
        "num_method": "wasserstein",
        "cat_method": "jensenshannon",
        "num_threshold": t.numeric,
        "cat_threshold": t.categorical,
        "drift_share": t.drift_share,
    }
    reference, current, numeric, categorical = frames(data, scale)
    reference, current = reference.to_pandas(), current.to_pandas()
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def run(cur: Any, ref: Any) -> Any:
        cur, ref = (Dataset.from_pandas(x, data_definition=definition) for x in (cur, ref))
        return Report([DataDriftPreset(**options)]).run(cur, ref)

    run(current.head(WARMUP_ROWS), reference.head(WARMUP_ROWS))
    times = []
    for _ in range(repeats):
        with harness.measure_here() as m:
            snapshot = run(current, reference)
        times.append(m["wall_s"])
    drifted, share = {}, 0.0
    for metric in snapshot.dict()["metrics"]:
        kind = metric["config"]["type"]
        if kind.endswith(":ValueDrift"):  # Evidently's rule: drifted at score >= threshold
            drifted[metric["config"]["column"]] = float(metric["value"]) >= float(metric["config"]["threshold"])
        elif kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    return {"times": times, "drifted": drifted, "dataset_drifted": share >= t.drift_share}


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=1, help="keep every n-th flight")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "DATA"), help=argparse_suppress())
    args = harness.parse(parser)
    if args.worker:
        tool, data = args.worker
        print(json.dumps((ours if tool == "ours" else evidently)(data, args.scale, args.repeats)))
        return 0
    through = "2013-12"
    if args.smoke:
        # the months of the other smoke runs (their landed data is shared under make bench-smoke)
        args.repeats, args.every, args.skip_evidently, through = 1, 50, True, "2013-03"
    report = harness.Report("drift_vs_evidently", args.smoke)
    import feature_build

    from mlops_assets.core.features import compute_features
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES as spec

    results = {}
    with harness.workdir() as work:
        base, _ = feature_build.prepare(work, args.every, 1, through)
        import duckdb

        with duckdb.connect(str(base), read_only=True) as conn:
            frame = compute_features(conn, spec, "2013-01", through)
        data = work / "features.parquet"
        frame.select([*spec.numeric, *spec.categorical, "_month"]).write_parquet(data)
        for tool in ("ours",) if args.skip_evidently else ("ours", "evidently"):
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                tool,
                str(data),
                "--scale",
                str(args.scale),
                "--repeats",
                str(args.repeats),
            ]
            m = harness.run_process(command)
            results[tool] = {**m.json_tail(), "peak_gib": m.peak_bytes / harness.GIB, "other_cores": m.other_cores}
    o = results["ours"]
    ours_s, compare_s = harness.stats(o["times"])["median"], harness.stats(o["compare_times"])["median"]
    report.require(len(o["drifted"]) == len(spec.numeric) + len(spec.categorical), "ours judged the wrong columns")
    rows = [
        [
            "ours: profile + compare",
            f"{o['rows']:,}",
            f"{ours_s:.3f}",
            f"{o['peak_gib']:.2f}",
            sum(o["drifted"].values()),
            o["dataset_drifted"],
        ],
        ["ours: compare only", "", f"{compare_s:.3f}", "", "", ""],
    ]
    report.figure(f"ours, {o['rows']:,} rows, s", f"{ours_s:.3f}", baseline=f"compare only {compare_s:.3f} s")
    if "evidently" in results:
        e = results["evidently"]
        theirs = harness.stats(e["times"])["median"]
        ratio = theirs / ours_s
        report.figure(
            "Evidently / ours",
            f"{ratio:.1f}x",
            f">= {TARGET_RATIO:g}x",
            ratio >= TARGET_RATIO,
            f"Evidently {theirs:.2f} s",
        )
        differ = [c for c, d in o["drifted"].items() if e["drifted"].get(c) != d]
        same = not differ and o["dataset_drifted"] == e["dataset_drifted"]
        verdicts = "all" if same else f"differ: {', '.join(differ) or 'dataset'}"
        report.figure("same verdicts (columns, dataset)", verdicts, "all", same)
        rows.append(
            [
                "Evidently DataDriftPreset",
                f"{o['rows']:,}",
                f"{theirs:.3f}",
                f"{e['peak_gib']:.2f}",
                sum(e["drifted"].values()),
                e["dataset_drifted"],
            ]
        )
    else:
        report.notes.append("Evidently not measured (`--skip-evidently`); run `make bench-drift`.")
    header = ["tool", "rows", "median s", "process peak GiB", "drifted columns", "dataset drifted"]
    report.tables.append(harness.markdown_table(header, rows))
    report.raw = results
    return harness.finish(report, args)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
