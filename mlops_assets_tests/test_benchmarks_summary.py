"""The benchmarks' summary in ``benchmarks/README.md``: rebuilt from the results files there are, it keeps the recorded
rows of what they do not hold (a fresh checkout that ran one benchmark, or a run that skipped a figure, must not blank
the others)."""

import json
import shutil
import sys
from pathlib import Path

from mlops_assets.core.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import harness  # the benchmarks folder is not a package: imported from its path


def _summary(readme: Path) -> str:
    text = readme.read_text()
    return text[text.index("<!-- results:summary -->") : text.index("<!-- /results:summary -->")]


def _rows_of(summary: str, script: str) -> list[str]:
    return [line for line in summary.splitlines() if line.startswith(f"| `{script}.py` |")]


def test_the_summary_keeps_the_rows_of_benchmarks_with_no_results_and_replaces_those_with_new_ones(
    tmp_path: Path,
) -> None:
    readme, results = tmp_path / "README.md", tmp_path / "results"
    shutil.copy(harness.README, readme)
    results.mkdir()
    before = _summary(readme)
    assert _rows_of(before, "feature_build") and _rows_of(before, "serving_load"), "the shipped summary lists both"

    harness.write_summary(readme, results)  # no results files at all: nothing to change
    assert _summary(readme) == before

    report = harness.Report("feature_build", smoke=False)
    report.figure("ours, 2013-01..2013-12 (1x), s", "9.999", "<= 1.5 s", False, "pandas 1.0x the time")
    smoke = harness.Report("serving_load", smoke=True)
    smoke.figure("batch scoring, rows/s", "1", ">= 300,000", False)
    # a run without its 10x figure (--skip-10x): the new 1x figure replaces its row, the recorded 10x row stays
    partial = harness.Report("training_pipeline", smoke=False)
    partial.figure("cold `training_pipeline`, 2013, median s", "99.9", "<= 10 s", False, "plain 9.9 s", key="cold_1x")
    runs = ((report, "feature_build.json"), (smoke, "serving_load-smoke.json"), (partial, "training_pipeline.json"))
    for r, name in runs:
        payload = {
            "name": r.name,
            "machine": r.machine,
            "figures": [{**vars(f), "verdict": f.verdict} for f in r.figures],
        }
        (results / name).write_text(json.dumps(payload, default=str))
    harness.write_summary(readme, results)
    after = _summary(readme)

    (new,) = _rows_of(after, "feature_build")  # the new results replace all of feature_build's rows
    assert "| 9.999 | <= 1.5 s | FAIL |" in new
    assert _rows_of(after, "serving_load") == _rows_of(before, "serving_load")  # a smoke result never counts
    cold_1x = "| cold `training_pipeline`, full year 2013 (vs the plain run) |"
    assert f"{cold_1x} 99.9 | <= 10 s | **FAIL** |" in after
    # every other figure of issue #12 (the 10x one included) is as it was
    issue = [line for line in before.splitlines() if line.startswith("| ") and "`feature_build.py`" not in line]
    assert all(line in after for line in issue if not line.startswith(cold_1x))
