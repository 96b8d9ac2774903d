"""The benchmarks' summary in ``benchmarks/README.md``: rebuilt from the results files there are, it keeps the recorded
rows of what they do not hold (a fresh checkout that ran one benchmark, or a run that skipped a figure, must not blank
the others)."""

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

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
            "published": not r.smoke,
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


def _parser() -> argparse.ArgumentParser:
    parser = harness.base_parser("a benchmark")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--skip-10x", action="store_true")
    return parser


@pytest.mark.parametrize(
    ("argv", "broken", "why"),
    [
        (["--no-readme"], False, "--no-readme"),
        (["--every", "50"], False, "run with --every 50 (the README holds runs at the default scale only)"),
        ([], True, "broken"),
    ],
)
def test_a_broken_thinned_or_unpublished_run_is_saved_but_never_reaches_the_readme(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    broken: bool,
    why: str,
) -> None:
    """A broken run printed PASS for its figure and the summary counted it; a run on every 50th flight (or one not
    written to its block) became the summary's full-year figure, so the summary and the blocks disagreed."""
    readme = tmp_path / "README.md"
    shutil.copy(harness.README, readme)
    monkeypatch.setattr(harness, "README", readme)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    before = readme.read_text()
    report = harness.Report("training_pipeline", smoke=False)
    report.figure("cold `training_pipeline`, 2013, median s", "1.0", "<= 10 s", True, "plain 0.9 s", key="cold_1x")
    if broken:
        report.require(False, "the plain run failed")
    assert harness.finish(report, harness.parse(_parser(), argv)) == (1 if broken else 0)
    saved = json.loads((tmp_path / "data" / "benchmarks" / "training_pipeline.json").read_text())
    assert saved["published"] is False and saved["figures"][0]["value"] == "1.0"
    assert readme.read_text() == before  # neither the block nor the summary
    printed = capsys.readouterr().out
    assert f"not published in benchmarks/README.md: {why}" in printed
    assert ("PASS" not in printed) == broken  # a broken run's figures get no verdict
    harness.write_summary(readme, tmp_path / "data" / "benchmarks")  # `harness.py summary` later: still not counted
    assert "| 1.0 | <= 10 s |" not in _summary(readme)


def test_a_full_run_at_the_default_scale_is_published_in_its_block_and_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(harness.README, readme)
    monkeypatch.setattr(harness, "README", readme)
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    report = harness.Report("training_pipeline", smoke=False)
    report.figure("cold `training_pipeline`, 2013, median s", "1.0", "<= 10 s", True, "plain 0.9 s", key="cold_1x")
    assert harness.finish(report, harness.parse(_parser(), ["--skip-10x"])) == 0  # skipping a figure changes no scale
    text = readme.read_text()
    block = text[text.index("<!-- results:training_pipeline -->") : text.index("<!-- /results:training_pipeline -->")]
    assert "| cold `training_pipeline`, 2013, median s | 1.0 | <= 10 s | PASS |" in block
    assert "| cold `training_pipeline`, full year 2013 (vs the plain run) | 1.0 | <= 10 s | PASS |" in _summary(readme)
