"""Benchmark of drift detection (``mlops_assets.core.drift``) against Evidently's ``DataDriftPreset``, side by side.

Run from the repository root, in an environment with Evidently (it needs pandas < 3, so not the project's ``.venv``;
``make bench-drift`` creates ``.venv-bench-drift`` with the ``bench-drift`` extra and runs this)::

    python benchmarks/drift_vs_evidently.py                      # 1x and 10x, 3 repeats, rewrites its README section
    python benchmarks/drift_vs_evidently.py --scale 1 --repeats 5 --no-readme

Data (untimed): the feature table ``features.flight_features`` of 2013 (336,776 rows) built with the project's own
code (the replay feed landed into a temporary directory, ingested, validated, ``compute_features`` for 2013-01..12),
restricted to the model's features (``FLIGHT_FEATURES.numeric + categorical``). Reference = Jan-Jun rows, current =
Jul-Dec rows; at ``--scale N`` both frames are repeated N times (the distributions, so the verdicts, do not change).

Measured, each tool in its own fresh Python subprocess, median over ``--repeats`` after one untimed warm-up on a
small slice (imports and first-call costs out of the way):

* ours: ``reference_profile`` on the reference frame, then ``compare`` on the current frame (polars frames);
* Evidently: ``Dataset.from_pandas`` of both frames with an explicit ``DataDefinition`` (our numeric and categorical
  columns) and ``Report([DataDriftPreset(...)]).run(current, reference)``, configured to judge like ours
  (normalized Wasserstein for every numeric column, Jensen-Shannon distance for categorical ones, thresholds 0.1,
  drift share 0.3). The conversion polars -> pandas is not timed; it is reported separately.

Everything is written under a temporary directory, except this script's section of ``benchmarks/README.md`` and
``benchmarks/results/drift_vs_evidently.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from machine import cpu_and_ram, replace_readme_section  # benchmarks/machine.py (this folder is on sys.path when run as a script)

if TYPE_CHECKING:
    import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "drift_vs_evidently.json"
SECTION_TITLE = "## `drift_vs_evidently.py`: drift detection against Evidently's DataDriftPreset"
#: Ends this script's README section, so that sections added after it are kept when it is rewritten.
SECTION_END = "<!-- end of the drift_vs_evidently.py section: everything above, from its title, is rewritten by it -->"
GIB = 1024**3

#: The issue's target: Evidently's time / ours (reference profile + compare) at least this.
TARGET_RATIO = 20.0
#: Rows of the untimed warm-up call (from each frame): enough for Evidently's large-sample branch (> 1000 rows).
WARMUP_ROWS = 20_000
#: Reference = these months of 2013, current = the others.
REFERENCE_MONTHS = ("2013-01", "2013-06")


# --- preparation (untimed) --------------------------------------------------------------------------------------


def prepare_features(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """``features.flight_features`` for 2013, built like production, saved as parquet (features and ``_month``)."""
    import feature_build  # benchmarks/feature_build.py: the production path from the replay feed to DuckDB

    from mlops_assets.core.features import compute_features
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES as spec

    database = feature_build.prepare_base(workdir)
    conn = feature_build._connect(database, read_only=True)  # configured like the platform's warehouse
    try:
        frame = compute_features(conn, spec, "2013-01", "2013-12")
    finally:
        conn.close()
    path = workdir / "flight_features_2013.parquet"
    frame.select([*spec.numeric, *spec.categorical, "_month"]).write_parquet(path)
    return path, {"rows": frame.height, "numeric": list(spec.numeric), "categorical": list(spec.categorical)}


# --- one measurement, in its own process -------------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    """This process's high-water resident memory (``VmHWM``; ``ru_maxrss`` would include the parent's, see
    feature_build.py)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, ``/proc/stat``); 0 where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time of a call, this process's CPU time (all threads) and the CPU the rest of the machine used meanwhile
    (in cores: above ~0.3 on 2 CPUs, other work competed with the measurement)."""

    def __enter__(self) -> Self:
        self._busy, self._cpu, self._wall = _machine_busy_s(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.other_cores = max(0.0, (_machine_busy_s() - self._busy - self.cpu) / max(self.wall, 1e-9))


def _frames(job: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reference (Jan-Jun) and current (Jul-Dec) feature frames, repeated ``scale`` times, contiguous in memory."""
    import polars as pl

    columns = [*job["numeric"], *job["categorical"]]
    frame = pl.read_parquet(job["data"])
    is_reference = pl.col("_month").is_between(pl.lit(REFERENCE_MONTHS[0]), pl.lit(REFERENCE_MONTHS[1]))
    reference, current = frame.filter(is_reference).select(columns), frame.filter(~is_reference).select(columns)
    scale = job["scale"]
    if scale > 1:
        reference, current = pl.concat([reference] * scale, rechunk=True), pl.concat([current] * scale, rechunk=True)
    return reference, current


def ours_worker(job: dict[str, Any]) -> dict[str, Any]:
    """``reference_profile`` on the reference frame, then ``compare`` on the current one, timed apart."""
    import numpy as np

    from mlops_assets.core.drift import DriftThresholds, compare, reference_profile

    # drift checks here are about features: no model, so no scores. reference_profile requires them, and an empty
    # array makes numpy warn (mean of an empty slice) while profiling it: expected, not worth the noise
    warnings.filterwarnings("ignore", message="Mean of empty slice")
    warnings.filterwarnings("ignore", message="invalid value encountered")
    scores = np.empty(0)
    numeric, categorical = job["numeric"], job["categorical"]
    reference, current = _frames(job)
    compare(reference_profile(reference.head(WARMUP_ROWS), numeric, categorical, scores), current.head(WARMUP_ROWS))

    rss_before = _peak_rss_bytes()
    profile_s, compare_s, cpu, other = [], [], [], []
    verdict = None
    for _ in range(job["repeats"]):
        with Clock() as c1:
            profile = reference_profile(reference, numeric, categorical, scores)
        with Clock() as c2:
            verdict = compare(profile, current)
        profile_s.append(c1.wall)
        compare_s.append(c2.wall)
        cpu.append(c1.cpu + c2.cpu)
        other.append((c1.other_cores * c1.wall + c2.other_cores * c2.wall) / max(c1.wall + c2.wall, 1e-9))
    assert verdict is not None
    thresholds = DriftThresholds()
    columns = [
        {
            "column": c.column,
            "kind": c.kind,
            "method": c.method,
            "statistic": c.statistic,
            "threshold": c.threshold,
            "drifted": c.drifted,
            "by_statistic": c.statistic > c.threshold,
            "by_null_share": c.kind == "numeric" and abs(c.current_null_share - c.reference_null_share) > thresholds.null_share_change,
            "null_share_reference": c.reference_null_share,
            "null_share_current": c.current_null_share,
        }
        for c in verdict.features
    ]  # fmt: skip
    return {
        "rows_reference": reference.height,
        "rows_current": current.height,
        "profile_times": profile_s,
        "compare_times": compare_s,
        "times": [p + c for p, c in zip(profile_s, compare_s, strict=True)],
        "cpu_times": cpu,
        "other_cores": other,
        "columns": columns,
        "drifted_count": len(verdict.drifted_features),
        "drift_share": verdict.drift_share,
        "drift_share_threshold": thresholds.drift_share,
        "dataset_drifted": verdict.drift_share >= thresholds.drift_share,
        "rss_before": rss_before,
        "peak_rss": _peak_rss_bytes(),
    }


def evidently_preset_options() -> dict[str, Any]:
    """DataDriftPreset options that make Evidently judge like ``mlops_assets.core.drift``.

    Evidently 0.7 picks, for a reference of more than 1000 rows, normalized Wasserstein for numeric columns with more
    than 5 distinct values and Jensen-Shannon distance otherwise (so ``plane_engines``, 4 values, would get
    Jensen-Shannon), threshold 0.1 each, and calls the dataset drifted at a drift share of 0.5. Ours uses Wasserstein
    for every numeric column and 30%: all are set explicitly here.
    """
    from mlops_assets.core.drift import DriftThresholds

    thresholds = DriftThresholds()
    return {
        "num_method": "wasserstein",
        "cat_method": "jensenshannon",
        "num_threshold": thresholds.numeric,
        "cat_threshold": thresholds.categorical,
        "drift_share": thresholds.drift_share,
    }


def _evidently_columns(snapshot: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-column results (``ValueDrift``) and the drifted-columns count of a DataDriftPreset snapshot."""
    columns, count = [], {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            score, threshold = float(metric["value"]), float(config["threshold"])
            # Evidently's own rule in its wasserstein and jensenshannon tests: drifted at score >= threshold
            columns.append({"column": config["column"], "method": config["method"], "statistic": score,
                            "threshold": threshold, "drifted": score >= threshold})  # fmt: skip
        elif config["type"].endswith(":DriftedColumnsCount"):
            count = {k: float(v) for k, v in metric["value"].items()}
    return columns, count


def evidently_worker(job: dict[str, Any]) -> dict[str, Any]:
    """``Dataset.from_pandas`` of both frames and ``Report([DataDriftPreset(...)]).run(current, reference)``.

    With ``default_config``: the preset with no options on the raw pandas frames (Evidently infers the column types
    and picks the methods itself), for the record.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = _frames(job)
    started = time.perf_counter()
    reference_pd, current_pd = reference.to_pandas(), current.to_pandas()
    to_pandas_s = time.perf_counter() - started
    del reference, current  # only the pandas frames from here on, as a pandas user would have
    default = job.get("default_config", False)
    definition = DataDefinition(numerical_columns=list(job["numeric"]), categorical_columns=list(job["categorical"]))
    options = {} if default else evidently_preset_options()

    def run(cur: Any, ref: Any) -> tuple[Any, Clock, Clock]:
        with Clock() as c1:
            if not default:
                cur = Dataset.from_pandas(cur, data_definition=definition)
                ref = Dataset.from_pandas(ref, data_definition=definition)
        with Clock() as c2:
            snapshot = Report([DataDriftPreset(**options)]).run(cur, ref)
        return snapshot, c1, c2

    run(current_pd.head(WARMUP_ROWS), reference_pd.head(WARMUP_ROWS))

    rss_before = _peak_rss_bytes()
    dataset_s, run_s, cpu, other = [], [], [], []
    snapshot = None
    for _ in range(job["repeats"]):
        snapshot = None  # let the previous report go before the next one
        snapshot, c1, c2 = run(current_pd, reference_pd)
        dataset_s.append(c1.wall)
        run_s.append(c2.wall)
        cpu.append(c1.cpu + c2.cpu)
        other.append((c1.other_cores * c1.wall + c2.other_cores * c2.wall) / max(c1.wall + c2.wall, 1e-9))
    columns, count = _evidently_columns(snapshot)
    drift_share = options.get("drift_share", 0.5)  # the preset's default
    share = count.get("share", float("nan"))
    return {
        "rows_reference": len(reference_pd),
        "rows_current": len(current_pd),
        "to_pandas_s": to_pandas_s,
        "dataset_times": dataset_s,
        "run_times": run_s,
        "times": [d + r for d, r in zip(dataset_s, run_s, strict=True)],
        "cpu_times": cpu,
        "other_cores": other,
        "columns": columns,
        "options": options,
        "drifted_count": count.get("count"),
        "drifted_count_by_columns": sum(c["drifted"] for c in columns),
        "drift_share": share,
        "drift_share_threshold": drift_share,
        "dataset_drifted": share >= drift_share,
        "rss_before": rss_before,
        "peak_rss": _peak_rss_bytes(),
    }


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement (``--worker``): ours or Evidently, as the job says."""
    return ours_worker(job) if job["tool"] == "ours" else evidently_worker(job)


def run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (this one: the same environment) and return its report."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the comparison ----------------------------------------------------------------------------------------------


def _median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def summarize(result: dict[str, Any]) -> None:
    """Medians (and min / max) of a worker's timings, in place."""
    for key in ("times", "profile_times", "compare_times", "dataset_times", "run_times", "cpu_times", "other_cores"):
        if key in result:
            result[f"median_{key}"] = _median(result[key])
    if result.get("times"):
        result["min_times"], result["max_times"] = min(result["times"]), max(result["times"])


def agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Column by column: both statistics and verdicts; the disagreements and the largest statistic difference."""
    by_column = {c["column"]: c for c in theirs["columns"]}
    rows, disagreements = [], []
    for c in ours["columns"]:
        e = by_column.get(c["column"])
        row = {"column": c["column"], "kind": c["kind"], "ours": c, "evidently": e,
               "difference": None if e is None else c["statistic"] - e["statistic"],
               "agree": e is not None and c["drifted"] == e["drifted"]}  # fmt: skip
        rows.append(row)
        if not row["agree"]:
            disagreements.append(row)
    differences = [abs(r["difference"]) for r in rows if r["difference"] is not None]
    return {
        "rows": rows,
        "agreeing": sum(r["agree"] for r in rows),
        "columns": len(rows),
        "disagreements": [
            {
                "column": r["column"],
                "ours": r["ours"]["statistic"],
                "ours_drifted": r["ours"]["drifted"],
                "evidently": None if r["evidently"] is None else r["evidently"]["statistic"],
                "evidently_drifted": None if r["evidently"] is None else r["evidently"]["drifted"],
            }
            for r in disagreements
        ],
        "max_abs_difference": max(differences) if differences else None,
        "max_abs_difference_column": rows[differences.index(max(differences))]["column"] if differences else None,
        "ours_drifted": [c["column"] for c in ours["columns"] if c["drifted"]],
        "evidently_drifted": [c["column"] for c in theirs["columns"] if c["drifted"]],
        "dataset_verdicts_agree": ours["dataset_drifted"] == theirs["dataset_drifted"],
        "evidently_count_consistent": theirs.get("drifted_count") == theirs.get("drifted_count_by_columns"),
    }


def judge(scales: list[dict[str, Any]]) -> list[str]:
    """The target and verdict lines of the summary, one block per scale."""
    lines = []
    for s in scales:
        ours, theirs, agree = s.get("ours", {}), s.get("evidently", {}), s.get("agreement")
        name = f"{s['scale']}x ({ours.get('rows_reference', 0) + ours.get('rows_current', 0):,} rows)"
        if "error" in ours or "error" in theirs or not ours or not theirs:
            lines.append(f"ERROR {name}: {ours.get('error') or theirs.get('error') or 'not measured'}")
            continue
        ratio = theirs["median_times"] / ours["median_times"]
        s["ratio"] = ratio
        s["ratio_compare_only"] = theirs["median_times"] / ours["median_compare_times"]
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        lines.append(
            f"{verdict}  {name}: Evidently / ours (profile + compare) >= {TARGET_RATIO:g}x: {ratio:.1f}x "
            f"({theirs['median_times']:.2f} s / {ours['median_times']:.3f} s)"
        )
        lines.append(
            f"info  {name}: Evidently / ours compare only (profile stored at training time): "
            f"{s['ratio_compare_only']:.1f}x ({ours['median_compare_times']:.3f} s)"
        )
        if agree:
            differ = ", ".join(
                f"{d['column']} (ours {d['ours']:.4f} {'drifted' if d['ours_drifted'] else 'stable'}, Evidently "
                f"{_s(d['evidently'], 4)} {'drifted' if d['evidently_drifted'] else 'stable'})"
                for d in agree["disagreements"]
            )
            same = "PASS" if not agree["disagreements"] and agree["dataset_verdicts_agree"] else "FAIL"
            lines.append(
                f"{same}  {name}: same verdicts: {agree['agreeing']}/{agree['columns']} columns agree"
                f"{'; differ: ' + differ if differ else ''}; drifted ours {len(agree['ours_drifted'])}, Evidently "
                f"{len(agree['evidently_drifted'])}; dataset drifted ours {ours['dataset_drifted']}, "
                f"Evidently {theirs['dataset_drifted']}; largest |statistic difference| "
                f"{agree['max_abs_difference']:.4f} ({agree['max_abs_difference_column']})"
            )
    return lines


# --- the report --------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("polars", "numpy", "pandas", "scipy", "evidently", "duckdb"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "-"
    return versions


def _code() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"commit {commit}{' with uncommitted changes' if dirty else ''}"


def _s(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def timing_rows(scales: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (scale, tool): runs, medians of the parts and total, min / max, CPU, other load, memory."""
    rows = []
    for s in scales:
        rows_text = f"{s.get('ours', {}).get('rows_reference', 0):,} + {s.get('ours', {}).get('rows_current', 0):,}"
        for tool, label in (("ours", "ours"), ("evidently", "Evidently")):
            r = s.get(tool)
            if not r:
                continue
            if "error" in r:
                rows.append(
                    [f"{s['scale']}x", label, rows_text, "-", "-", "-", "-", "-", "-", "-", "-", f"error: {r['error']}"]
                )
                continue
            if tool == "ours":
                parts = f"profile {_s(r['median_profile_times'])} + compare {_s(r['median_compare_times'])}"
                ratio = ""
            else:
                parts = f"Dataset {_s(r['median_dataset_times'])} + run {_s(r['median_run_times'], 2)}; to_pandas {_s(r['to_pandas_s'], 2)} (untimed)"
                ratio = (
                    "" if s.get("ratio") is None else f"{s['ratio']:.1f}x (compare only {s['ratio_compare_only']:.1f}x)"
                )
            rows.append([
                f"{s['scale']}x", label, rows_text, str(len(r["times"])), parts, _s(r["median_times"]),
                f"{_s(r['min_times'])} / {_s(r['max_times'])}", _s(r["median_cpu_times"], 2), _s(r["median_other_cores"], 2),
                _gib(r["peak_rss"]), _gib(r["rss_before"]), ratio,
            ])  # fmt: skip
    return rows


TIMING_HEADER = ["scale", "tool", "rows ref + cur", "runs", "median parts, s", "median total s", "min / max s", "CPU s",
                 "other load (cores)", "peak RSS GiB", "RSS before GiB", "Evidently / ours"]  # fmt: skip


def markdown(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _ours_verdict(c: dict[str, Any]) -> str:
    if not c["drifted"]:
        return "no"
    reasons = [r for r, hit in (("statistic", c["by_statistic"]), ("null share", c["by_null_share"])) if hit]
    return "**yes** (" + ", ".join(reasons) + ")"


COLUMN_HEADER = ["column", "kind", "null share ref -> cur", "ours: method", "ours: statistic", "ours: drifted",
                 "Evidently: method", "Evidently: statistic", "Evidently: drifted", "ours - Evidently", "agree"]  # fmt: skip


def column_rows(agree: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in agree["rows"]:
        c, e = r["ours"], r["evidently"] or {}
        rows.append([
            r["column"], r["kind"], f"{c['null_share_reference']:.3f} -> {c['null_share_current']:.3f}", c["method"],
            f"{c['statistic']:.4f}", _ours_verdict(c), e.get("method", "-"),
            "-" if not e else f"{e['statistic']:.4f}", "-" if not e else ("**yes**" if e["drifted"] else "no"),
            "-" if r["difference"] is None else f"{r['difference']:+.4f}", "yes" if r["agree"] else "**NO**",
        ])  # fmt: skip
    return rows


def default_config_text(report: dict[str, Any]) -> str:
    """What Evidently's preset does with no options (inferred column types, its own method choice)."""
    default = report.get("evidently_default")
    if not default:
        return "not measured (`--skip-default-config`)."
    if "error" in default:
        return f"error: {default['error']}"
    configured = {c["column"]: c for c in report["scales"][0].get("evidently", {}).get("columns", [])}
    methods, verdicts = [], []
    for c in default["columns"]:
        mine = configured.get(c["column"])
        if mine is None:
            continue
        # configured names are the registry's ("wasserstein"), resolved ones the display names ("Wasserstein ...")
        if not c["method"].lower().startswith(mine["method"][:4]):
            methods.append(f"`{c['column']}` {c['method']} {c['statistic']:.4f}")
        if c["drifted"] != mine["drifted"]:
            verdicts.append(f"`{c['column']}` ({'drifted' if c['drifted'] else 'stable'})")
    drifted = [c["column"] for c in default["columns"] if c["drifted"]]
    return (
        f"`Report([DataDriftPreset()]).run(current, reference)` on the raw pandas frames at 1x (Evidently infers the "
        f"column types: an integer column with at most 10 values is categorical; and picks the methods: Jensen-Shannon "
        f"for a numeric column with at most 5 values) took {default['median_times']:.2f} s (1 run). Methods that "
        f"differ from the configured run: {'; '.join(methods) if methods else 'none'}. Verdicts that differ: "
        f"{', '.join(verdicts) if verdicts else 'none'} ({len(drifted)} columns drifted). Dataset verdict at its "
        f"default drift share 0.5: share {default['drift_share']:.3f}, "
        f"{'drifted' if default['dataset_drifted'] else 'not drifted'}."
    )


def differences_text(agree: dict[str, Any] | None) -> str:
    """The largest statistic differences and the close calls of a comparison."""
    if not agree:
        return "-"
    largest = sorted(agree["rows"], key=lambda r: -abs(r["difference"] or 0.0))[:3]
    close = []
    for r in agree["rows"]:
        values = [r["ours"]["statistic"]] + ([r["evidently"]["statistic"]] if r["evidently"] else [])
        if min(abs(v - r["ours"]["threshold"]) for v in values) < 0.01:
            close.append(f"`{r['column']}` ({' / '.join(f'{v:.4f}' for v in values)})")
    differ = (
        "No verdict differs"
        if not agree["disagreements"]
        else "Verdicts differ on " + ", ".join(f"`{d['column']}`" for d in agree["disagreements"])
    )
    biggest = ", ".join(f"`{r['column']}` {r['difference']:+.4f}" for r in largest)
    return (
        f"largest differences (ours - Evidently): {biggest}. {differ}; "
        f"statistics within 0.01 of the threshold (ours / Evidently): {', '.join(close) if close else 'none'}."
    )


SECTION_TEMPLATE = """{title}

The issue: drift of the Jan-Jun vs Jul-Dec 2013 feature frames should be computed at least {target:g}x faster than
Evidently's `DataDriftPreset`, with the same verdicts. This compares `mlops_assets.core.drift` with Evidently
{evidently} side by side in one run.

Data (untimed): `features.flight_features` for 2013 ({rows:,} flights) built with the project's own code (the replay
feed landed into a temporary directory, `ingest_raw` / `validate_partition`, `compute_features(conn, FLIGHT_FEATURES,
"2013-01", "2013-12")`), restricted to the model's features: the {n_numeric} numeric and {n_categorical} categorical
columns of `FLIGHT_FEATURES`. Reference = Jan-Jun rows, current = Jul-Dec rows; at Nx both frames are repeated N times
(same distributions, so the same statistics and verdicts at every scale).

What is measured (wall time, median over the runs; each tool in a fresh subprocess, after one untimed warm-up call
on the first {warmup:,} rows of each frame so that imports and first-call costs are not counted):

* **ours**: `reference_profile(reference, numeric, categorical, scores=[])` + `compare(profile, current)` on polars
  frames; the total is the target's measure. The profile is normally built once, at training time, and stored with
  the model, so *compare only* is what a monthly drift check costs;
* **Evidently**: `Dataset.from_pandas` of both frames with an explicit `DataDefinition` (our numeric and categorical
  columns) + `Report([DataDriftPreset({options})]).run(current, reference)`.
  Converting the polars frames to pandas is not timed (listed as *to_pandas*).

Same definitions: Evidently 0.7's preset, for a reference of more than 1000 rows, picks normalized Wasserstein
(`wasserstein`: `scipy.stats.wasserstein_distance` / `np.std(reference)`, floored at 0.001) for numeric columns with
more than 5 distinct values and Jensen-Shannon distance (`jensenshannon`: `scipy.spatial.distance.jensenshannon`,
natural log, over the value shares) for categorical columns and for numeric ones with at most 5 values, threshold 0.1,
and calls the dataset drifted when at least 50% of the columns drift. Ours: normalized Wasserstein from 500-level
quantile functions for every numeric column (also drifted when the null share moves by more than 0.1), Jensen-Shannon
distance over the value shares with nulls as a value of their own, threshold 0.1, dataset drifted at 30%. So the run
sets Wasserstein for all numeric columns, Jensen-Shannon for the categorical ones, both thresholds 0.1 and drift share
0.3 explicitly. What still differs: Evidently compares the exact empirical distributions and drops nulls (and
infinities) first; a column drifts at statistic >= 0.1 there, > 0.1 here.

*CPU s* is the process's CPU time during the measured calls (all threads: polars uses both cores, numpy, scipy and
pandas one); *other load* is the CPU the rest of the machine used meanwhile, in cores (above about 0.3 on 2 CPUs,
other work competed and the times are pessimistic); *peak RSS* is the worker's high-water resident memory (`VmHWM`,
everything: interpreter, libraries, the frames, the runs), *RSS before* the same just before the first timed run.

Run it from the repository root (about {minutes} min here). Evidently needs pandas < 3, which the project's `.venv`
(pandas 3) cannot have, so it runs in its own environment, `.venv-bench-drift`, with the `bench-drift` extra:

```
make bench-drift        # creates .venv-bench-drift (pip install -e ".[bench-drift]") and runs the script
.venv-bench-drift/bin/python benchmarks/drift_vs_evidently.py [--scale 1 10] [--repeats 3] [--evidently-large-repeats 1]
                                   [--skip-default-config] [--skip-evidently] [--timeout 1200] [--no-readme]
.venv-bench-drift/bin/python benchmarks/drift_vs_evidently.py --readme-from-json [PATH]   # measure nothing
```

It prints the tables below and rewrites this section of this file (from its title to the marker that ends it); the raw
numbers go to `benchmarks/results/drift_vs_evidently.json` (not tracked); `--readme-from-json` rebuilds this section
from them.

### Results

{date}: {nproc} CPUs ({cpu}), {ram_gib} GiB RAM; Python {python}, polars {polars}, numpy {numpy}, pandas {pandas},
scipy {scipy}, Evidently {evidently}. Code: {code}. Runs: {repeats} per tool at 1x; at larger scales {repeats} for ours and
{evidently_large_repeats} for Evidently (one Evidently run takes minutes there). Load average (1, 5, 15 min) at start
{load_start}, at end {load_end}.

{timing}

Targets and verdicts:

```
{summary}
```

Per column at 1x (statistic: normalized Wasserstein for numeric columns, Jensen-Shannon distance for categorical
ones; *ours: drifted* says which rule fired):

{columns}
{other_scales}
Differences. Numeric: ours integrates 500 quantile levels (the inverse CDF at the level midpoints), Evidently the
exact empirical distributions, so ours misses how values vary inside a level of 1/500: most in heavy tails (a column
of mostly zeros and a long tail) and in columns with few distinct values and a small standard deviation (where a
level is a large part of a rare value's share). Categorical: ours keeps nulls as a value of their own, Evidently
drops them. At 1x: {differences}

Evidently with its defaults, for the record: {default_config}

{end}
"""


def write_readme(report: dict[str, Any]) -> None:
    """Rewrite this script's section of ``benchmarks/README.md`` (from its title to its end marker, or without one to
    the next ``## `` title or the end of the file); append it when missing. The other sections are kept as they are."""
    machine, args = report["machine"], report["args"]
    scales = report["scales"]
    first = scales[0]
    columns = "-"
    if first.get("agreement"):
        columns = markdown(COLUMN_HEADER, column_rows(first["agreement"]), right={4, 7, 9})
        if first["scale"] != 1:
            columns = f"(at {first['scale']}x)\n\n" + columns
    others = []
    for s in scales[1:]:
        a, a1 = s.get("agreement"), first.get("agreement")
        if not a or not a1:
            continue
        drift = max(
            abs(r["ours"]["statistic"] - r1["ours"]["statistic"]) for r, r1 in zip(a["rows"], a1["rows"], strict=True)
        )
        drift_e = max(
            abs(r["evidently"]["statistic"] - r1["evidently"]["statistic"])
            for r, r1 in zip(a["rows"], a1["rows"], strict=True)
            if r["evidently"] and r1["evidently"]
        )
        same = all(r["ours"]["drifted"] == r1["ours"]["drifted"] for r, r1 in zip(a["rows"], a1["rows"], strict=True))
        others.append(
            f"At {s['scale']}x: {a['agreeing']}/{a['columns']} columns agree; largest change of a statistic from "
            f"{first['scale']}x: ours {drift:.1e}, Evidently {drift_e:.1e}; ours gives {'the same' if same else 'different'} "
            f"verdicts as at {first['scale']}x."
        )
    section = SECTION_TEMPLATE.format(
        title=SECTION_TITLE, end=SECTION_END, target=TARGET_RATIO, rows=report["data"]["rows"], n_numeric=len(report["data"]["numeric"]),
        n_categorical=len(report["data"]["categorical"]), warmup=WARMUP_ROWS,
        options=", ".join(f"{k}={v!r}" for k, v in report["evidently_options"].items()),
        minutes=max(1, round(report["total_s"] / 60)), date=report["date"], nproc=machine["nproc"], cpu=machine["cpu"],
        ram_gib=machine["ram_gib"], python=machine["python"], code=report["code"], repeats=args["repeats"],
        evidently_large_repeats=args["evidently_large_repeats"], load_start=machine["load_average_start"],
        load_end=machine["load_average"], timing=markdown(TIMING_HEADER, timing_rows(scales), right={3, 5, 7, 8, 9, 10}),
        summary="\n".join(report["summary"]), columns=columns, other_scales="".join(f"\n{o}\n" for o in others),
        default_config=default_config_text(report), differences=differences_text(first.get("agreement")),
        **{k: machine["versions"][k] for k in ("polars", "numpy", "pandas", "scipy", "evidently")},
    ).rstrip() + "\n"  # fmt: skip
    replace_readme_section(README, SECTION_TITLE, SECTION_END, section)
    print(f"wrote {README.relative_to(REPO)}")


# --- main --------------------------------------------------------------------------------------------------------


def _progress(name: str, result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"  error: {result['error']}", flush=True)
        return
    times = ", ".join(f"{t:.3f}" for t in result["times"])
    extra = f"; to_pandas {result['to_pandas_s']:.2f} s (untimed)" if "to_pandas_s" in result else ""
    print(f"  {name}: {times} s; peak RSS {result['peak_rss'] / GIB:.2f} GiB; other load "
          f"{statistics.median(result['other_cores']):.2f} cores{extra}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=int,
        nargs="+",
        default=[1, 10],
        help="sizes to measure, in copies of the 2013 frames (default: 1 10; the issue's prototype used 10)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and scale (default 3)")
    parser.add_argument(
        "--evidently-large-repeats",
        type=int,
        default=1,
        help="timed Evidently runs at scales above 1 (default 1: about 3 minutes each at 10x here)",
    )
    parser.add_argument("--skip-evidently", action="store_true", help="measure ours only (no Evidently needed)")
    parser.add_argument(
        "--skip-default-config",
        action="store_true",
        help="skip the extra Evidently run with the preset's defaults (1x, one run, not timed against ours)",
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per measurement (default 1200)")
    parser.add_argument("--no-readme", action="store_true", help="print only; do not rewrite benchmarks/README.md")
    parser.add_argument(
        "--readme-from-json",
        nargs="?",
        const=str(RESULTS),
        type=Path,
        metavar="PATH",
        help=f"measure nothing; rewrite the README section from a results file (default {RESULTS.relative_to(REPO)})",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.readme_from_json:
        write_readme(json.loads(Path(args.readme_from_json).read_text()))
        return
    if not args.skip_evidently:
        try:
            import evidently  # noqa: F401
        except ImportError:
            sys.exit("Evidently is not installed in this environment (it needs pandas < 3): run `make bench-drift`, or "
                     "`.venv-bench-drift/bin/python benchmarks/drift_vs_evidently.py`; `--skip-evidently` measures ours only")  # fmt: skip

    began = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    scales: list[dict[str, Any]] = []
    default_result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="mlops-bench-drift-") as tmp:
        print("preparing: landing, ingesting and validating 2013, building features.flight_features ...", flush=True)
        started = time.perf_counter()
        data, info = prepare_features(Path(tmp))
        prep_s = time.perf_counter() - started
        print(f"  {info['rows']:,} rows, {len(info['numeric'])} numeric + {len(info['categorical'])} categorical "
              f"features in {prep_s:.1f} s", flush=True)  # fmt: skip
        base = {"data": str(data), "numeric": info["numeric"], "categorical": info["categorical"]}
        for scale in args.scale:
            entry: dict[str, Any] = {"scale": scale}
            tools = ["ours"] + ([] if args.skip_evidently else ["evidently"])
            for tool in tools:
                repeats = args.repeats if tool == "ours" or scale == 1 else args.evidently_large_repeats
                print(f"measuring: {tool} at {scale}x, {repeats} run(s) ...", flush=True)
                result = run_worker({**base, "tool": tool, "scale": scale, "repeats": repeats}, args.timeout)
                _progress(tool, result)
                if "error" not in result:
                    summarize(result)
                entry[tool] = result
            if "error" not in entry["ours"] and "error" not in entry.get("evidently", {"error": ""}):
                entry["agreement"] = agreement(entry["ours"], entry["evidently"])
            scales.append(entry)
        if not args.skip_evidently and not args.skip_default_config:
            print("measuring: Evidently with the preset's defaults at 1x, 1 run (for the record) ...", flush=True)
            default_result = run_worker(
                {**base, "tool": "evidently", "scale": 1, "repeats": 1, "default_config": True}, args.timeout
            )
            _progress("evidently (defaults)", default_result)
            if "error" not in default_result:
                summarize(default_result)

    summary = judge(scales)
    total = time.perf_counter() - began
    machine = {**cpu_and_ram(), "python": platform.python_version(), "versions": _versions(),
               "load_average_start": load_start, "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    report = {"date": date.today().isoformat(), "machine": machine, "code": _code(), "args": vars(args) | {"readme_from_json": None},
              "data": info, "evidently_options": evidently_preset_options(), "prep_s": prep_s, "total_s": total,
              "scales": scales, "evidently_default": default_result, "summary": summary}  # fmt: skip

    print()
    print(plain(TIMING_HEADER, timing_rows(scales)))
    if scales and scales[0].get("agreement"):
        print()
        print(plain(COLUMN_HEADER, [[c.replace("**", "") for c in row] for row in column_rows(scales[0]["agreement"])]))
    print()
    print("\n".join(summary))
    print(
        f"\ntotal {total:.0f} s (preparation {prep_s:.0f} s); load average at start {load_start}, at end {machine['load_average']}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {RESULTS.relative_to(REPO)}")
    if not args.no_readme:
        write_readme(report)


if __name__ == "__main__":
    main()
