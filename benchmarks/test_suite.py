"""The test suite's wall time: ``.venv/bin/pytest`` as ``make test`` runs it (the package compiled first; pytest's
options are in pyproject.toml), timed once in a fresh process tree, with its CPU time and the other load on the machine
(the target is for a quiet machine: above 0.3 cores of other load the figure is marked). ``--smoke`` times one fast
test file.

    python benchmarks/test_suite.py [--smoke] [--no-readme]
"""

from __future__ import annotations

import subprocess
import sys

import harness

TARGET_S = 4 * 60
SMOKE_FILE = "mlops_assets_tests/core/test_policy.py"
#: Cores the suite's own services (containers, PostgreSQL) use outside its process tree, on average (measured
#: 0.38-0.41 on kept PostgreSQL connections; 0.60 before)
SUITE_SERVICES_CORES = 0.4


def main() -> int:
    args = harness.parse(harness.base_parser(__doc__))
    report = harness.Report("test_suite", args.smoke)
    # as `make test`: the package compiled first (the machine may forbid Python to write what it compiles)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "mlops_assets"], cwd=harness.REPO, check=True)
    command = [harness.tool("pytest"), "-q", *([SMOKE_FILE] if args.smoke else [])]
    # not sampled: the suite's processes are waited for (their CPU is exact without it), and walking its tree of tens
    # of processes every 50 ms took a share of a core from the suite
    m = harness.run_process(command, timeout=3600, check=False, sample=False)
    summary = (m.stdout.strip().splitlines() or ["no output"])[-1]
    report.require(m.returncode == 0, f"pytest failed (exit {m.returncode}): {summary}")
    # the containers and the PostgreSQL server the deployment tests start run outside pytest's process tree: their
    # CPU shows as other load (about 0.4 cores over the suite), so that alone does not mark the machine busy
    busy = f"; other load {m.other_cores:.2f} cores, the suite's containers and PostgreSQL included" + (
        " (busy machine)" if m.other_cores > harness.BUSY_CORES + SUITE_SERVICES_CORES else ""
    )
    report.figure(
        "`make test` (pytest) wall, s" if not args.smoke else f"pytest {SMOKE_FILE}, s",
        f"{m.wall_s:.0f}",
        f"<= {TARGET_S} s",
        m.wall_s <= TARGET_S,
        f"CPU {m.cpu_s:.0f} s{busy}",
        key="make_test",
    )
    report.notes.append(f"pytest: {summary}")
    report.raw = {key: value for key, value in m.row().items() if key != "peak_gib"}  # not sampled: not measured
    return harness.finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())
