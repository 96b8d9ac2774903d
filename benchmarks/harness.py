"""What every benchmark shares: measuring a process tree or a call, the machine it ran on, targets with verdicts, the
results file and this folder's README.

A benchmark script builds a ``Report`` (figures, tables, notes), calls ``finish``; ``--smoke`` runs it at a tiny scale,
checks that it works (any exception or ``Report.broken`` makes the exit status non-zero) and writes nothing to the
README. ``python benchmarks/harness.py summary`` rewrites the README's summary table from ``data/benchmarks/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"


GIB = 1024**3
#: Other load (cores) above which a figure is marked as measured on a busy machine (2 CPUs here).
BUSY_CORES = 0.3


def results_dir() -> Path:
    """Where the results files go: ``benchmarks/`` in the platform's data directory (``$MLOPS_DATA_DIR``, else the
    checkout's ``data/``), like every other output. The benchmarks point that variable at their runs only in the
    environments of the processes they start, never in their own."""
    from mlops_assets.core.settings import load_settings

    return load_settings().data_dir / "benchmarks"


# --- measuring ----------------------------------------------------------------------------------------------------


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory of one process in bytes (``VmHWM``; ``ru_maxrss`` would carry the parent's over exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Measured:
    """One measured run: wall and CPU seconds, peak memory (bytes), other load (cores) and, for a process, its
    exit status and output."""

    wall_s: float
    cpu_s: float
    peak_bytes: int
    other_cores: float
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""

    def row(self) -> dict[str, float]:
        """The numbers, for the results file."""
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "peak_gib": self.peak_bytes / GIB,
            "other_cores": self.other_cores,
        }

    def json_tail(self) -> dict[str, Any]:
        """The last stdout line as JSON (what a worker process reports)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_process(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
    sample: bool = True,
) -> Measured:
    """Run ``command`` in a fresh process (its own session) and measure its whole tree: wall time, CPU time (user +
    system of every process, from psutil while they live), peak memory (the larger of the largest sampled sum of
    resident memory, every 50 ms, and the largest per-process ``VmHWM``) and the CPU the rest of the machine used.
    ``sample=False``: no sampling (its walk of a tree of tens of processes every 50 ms costs a share of a core beside
    them): the CPU of the processes that were waited for, no peak memory."""
    try:
        import psutil
    except ImportError:  # the Evidently venv has no psutil: the root process's VmHWM and reaped CPU time only
        psutil = None
    cpu: dict[int, float] = {}
    hwm: dict[int, int] = {}
    peak = [0]
    done = threading.Event()

    def sampled(root: Any) -> None:
        while psutil is None and not done.is_set():
            hwm[root] = max(hwm.get(root, 0), vm_hwm(root))
            done.wait(0.05)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in tree:
                try:
                    with p.oneshot():
                        total += p.memory_info().rss
                        times = p.cpu_times()
                        # its own time only: its children are sampled too, and the reaped ones are in `reaped`
                        # (adding children_* counted a reaped child twice: the suite read 1149 CPU-s in 336 s on 2 CPUs)
                        cpu[p.pid] = times.user + times.system
                    hwm[p.pid] = max(hwm.get(p.pid, 0), vm_hwm(p.pid))
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            done.wait(0.05)

    busy0, children0, clock = busy_seconds(), os.times(), time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    root = proc.pid if psutil is None else psutil.Process(proc.pid)
    sampler = threading.Thread(target=sampled, args=(root,), daemon=True)
    if sample:
        sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        err += f"\n[harness] stopped after {timeout:.0f} s"
    wall = time.perf_counter() - clock
    done.set()
    if sample:
        sampler.join()
    children1 = os.times()
    # the whole tree's CPU once reaped is exact (children_user/system of this process) for every process that its
    # parent waited for; the sampled sum covers the others (a daemon's children, killed processes)
    reaped = (children1.children_user - children0.children_user) + (
        children1.children_system - children0.children_system
    )
    cpu_s = max(reaped, sum(cpu.values()))
    other = max(0.0, busy_seconds() - busy0 - cpu_s) / wall
    measured = Measured(wall, cpu_s, max(peak[0], *hwm.values(), 0), other, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return measured


@contextmanager
def measure_here() -> Iterator[dict[str, float]]:
    """Measure a block in this process: wall, CPU of the process (all threads), other load; filled in on exit."""
    out: dict[str, float] = {}
    busy0, cpu0, clock = busy_seconds(), time.process_time(), time.perf_counter()
    yield out
    wall, cpu = time.perf_counter() - clock, time.process_time() - cpu0
    out.update(
        wall_s=wall, cpu_s=cpu, other_cores=max(0.0, busy_seconds() - busy0 - cpu) / wall, peak_gib=vm_hwm() / GIB
    )


def timed(call: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        call()
        times.append(time.perf_counter() - clock)
    return times


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --- the platform, through its public entry points -------------------------------------------------------------


def tool(name: str) -> str:
    """A console script of this interpreter's environment (``mlops``, ``dagster``, ``pytest``)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed next to {sys.executable} nor on PATH")
    return found


def data_env(data_dir: Path) -> dict[str, str]:
    """The environment of a process working on ``data_dir`` (its own Dagster home below it)."""
    return {
        **os.environ,
        "MLOPS_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(data_dir / "dagster_home"),
        "PYTHONUNBUFFERED": "1",
    }


def mlops(data_dir: Path, *args: str) -> str:
    """Run ``mlops <args>`` on ``data_dir`` (untimed); its stdout."""
    done = subprocess.run(
        [tool("mlops"), *args], env=data_env(data_dir), cwd=REPO, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"mlops {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def job_command(data_dir: Path, job: str = "training_pipeline", months: Sequence[str] = ()) -> list[str]:
    """``dagster job execute`` of ``job`` over every month landed in ``data_dir`` (the range ``mlops months`` gives),
    or from the first to the last of ``months`` (registered partitions): the README's command (``make train``), its
    console a line per step (``progress.yaml``), not Dagster's DEBUG stream."""
    if months:
        from mlops_assets.defs.run_tags import range_tags

        tags = json.dumps(range_tags(sorted(months)))
    else:
        tags = mlops(data_dir, "months", "--tags").strip()
    config = ["-c", str(REPO / "mlops_assets" / "progress.yaml")]
    return [tool("dagster"), "job", "execute", "-m", "mlops_assets.definitions", "-j", job, *config, "--tags", tags]


@contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A temporary directory for everything a benchmark writes (but its results and README section)."""
    path = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# --- prepared data directories, shared between the smoke runs --------------------------------------------------

#: Set by ``make bench-smoke`` to a temporary directory: each prepared data directory below (landed months, a trained
#: platform) is built there once, by the first benchmark that needs it, and every benchmark gets a fresh copy of it.
#: Unset (``make bench``, a script run alone), each benchmark prepares its own.
SHARED_ENV = "MLOPS_BENCH_SHARED"


def _shared_root() -> Path | None:
    root = os.environ.get(SHARED_ENV)
    return Path(root) if root else None


def prepared(name: str, build: Callable[[Path], None], target: Path) -> Path:
    """``target`` as ``build(target)`` makes it (untimed); with ``$MLOPS_BENCH_SHARED`` set, a copy of the one built
    there once under ``name`` (which must say everything the build depends on)."""
    shutil.rmtree(target, ignore_errors=True)
    root = _shared_root()
    if root is None:
        build(target)
        return target
    master = root / name
    if not master.exists():
        building = root / f".{name}.building"
        shutil.rmtree(building, ignore_errors=True)
        build(building)
        building.rename(master)
    shutil.copytree(master, target)
    return target


def publish(name: str, source: Path) -> None:
    """Offer a data directory a benchmark made anyway as the shared ``name`` (with ``$MLOPS_BENCH_SHARED`` set and
    none built yet): the next benchmark needing it copies it instead of building it again."""
    root = _shared_root()
    if root is not None and not (root / name).exists():
        building = root / f".{name}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(source, building)
        building.rename(root / name)


def landed(target: Path, through: str, every: int) -> Path:
    """``target`` with 2013-01..``through`` landed, every ``every``-th flight (``mlops replay``; nothing run yet)."""
    replay = lambda d: mlops(d, "replay", "--through", through, "--every", str(every))
    return prepared(f"landed-{through}-every{every}", replay, target)


def pipeline_name(through: str, every: int) -> str:
    return f"pipeline-{through}-every{every}"


def pipeline(target: Path, through: str, every: int) -> Path:
    """:func:`landed`, then ``training_pipeline`` over those months (``dagster job execute``, as the README runs it)."""

    def build(d: Path) -> None:
        landed(d, through, every)
        run_process(job_command(d), data_env(d))

    return prepared(pipeline_name(through, every), build, target)


def trained(target: Path, through: str, every: int, model: str) -> Path:
    """:func:`pipeline`, then ``<model>_retraining``: a champion (when the first model passed its gates) and a
    second registered version of ``model``."""

    def build(d: Path) -> None:
        pipeline(d, through, every)
        run_process(job_command(d, f"{model}_retraining"), data_env(d))

    return prepared(f"trained-{model}-{through}-every{every}", build, target)


# --- the machine --------------------------------------------------------------------------------------------------


def python_loop_ms() -> float:
    """The interpreter's speed now: a million steps of a Python loop, best of 5, in ms. A machine here can run 10%
    slower than an hour before, and machines differ by more (README.md: the monthly refresh on two of them), so
    every block records it beside its figures. It does not see everything: the pipeline's threaded, memory-heavy
    work has run ~1.6x slower at the same loop time (benchmarks/README.md); ratios measured in turn compare best."""
    import timeit

    def loop() -> int:
        total = 0
        for step in range(1_000_000):
            total += step
        return total

    return min(timeit.repeat(loop, number=1, repeat=5)) * 1000


def machine() -> dict[str, Any]:
    """CPUs, RAM, Python and library versions, the speed of a Python loop, load average and the commit measured."""
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {}
    for name in ("dagster", "duckdb", "polars", "lightgbm", "pandas", "fastapi", "uvicorn", "evidently"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "mlops_assets"], capture_output=True, text=True, check=False
    )
    return {
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "python": platform.python_version(),
        "versions": versions,
        "load_avg": list(os.getloadavg()),
        "python_loop_ms": round(python_loop_ms(), 1),
        "commit": commit + (" (mlops_assets/ modified)" if dirty.stdout.strip() else ""),
    }


def machine_line(m: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    load = ", ".join(f"{x:.2f}" for x in m["load_avg"])
    return (
        f"{m['date']}, commit {m['commit']}: {m['cpus']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; Python "
        f"{m['python']}, {versions}; load average at start {load}"
        + (f"; a 1M-step Python loop {m['python_loop_ms']:.1f} ms (best of 5)." if "python_loop_ms" in m else ".")
    )


# --- report, verdicts, results, README ---------------------------------------------------------------------------


@dataclass
class Figure:
    """One headline number with its target: ``ok`` None is *info* (no target)."""

    name: str
    value: str
    target: str = ""
    ok: bool | None = None
    baseline: str = ""
    #: a stable name for the summary (``ISSUE_12``), since ``name`` says the scale it was measured at
    key: str = ""

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class Report:
    """What a benchmark found: headline figures, detail tables (Markdown), notes, raw numbers, and what is broken."""

    name: str
    smoke: bool
    machine: dict[str, Any] = field(default_factory=machine)
    figures: list[Figure] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    def figure(
        self, name: str, value: str, target: str = "", ok: bool | None = None, baseline: str = "", key: str = ""
    ) -> None:
        """A headline figure; at smoke scale its target does not apply, so its verdict is *info*."""
        self.figures.append(Figure(name, value, target, None if self.smoke else ok, baseline, key))

    def require(self, ok: bool, what: str) -> None:
        """A sanity condition of the benchmark itself (not a target): false makes the run broken."""
        if not ok:
            self.broken.append(what)

    def markdown(self) -> str:
        rows = [
            [f.name, f.value, f.target, f"**{f.verdict}**" if f.ok is False else f.verdict, f.baseline]
            for f in self.figures
        ]
        parts = [
            machine_line(self.machine),
            markdown_table(["figure", "measured", "target", "verdict", "vs baseline"], rows),
        ]
        return "\n\n".join([*parts, *self.tables, *self.notes])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_readme_section(name: str, text: str, readme: Path = README) -> None:
    """Rewrite what lies between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in the README, leaving the
    rest as it is (the idea of the old ``machine.replace_readme_section``); a missing block is appended."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    old = readme.read_text()
    block = f"{start}\n{text.strip()}\n{end}"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    readme.write_text(new)


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny scale, seconds; checks it works, writes no README")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    return parser


#: Options that leave what a benchmark measures as its targets define it: any other option set away from its default
#: (a thinner feed, fewer months, another rate) makes the run one that is printed and saved, never published.
NOT_SCALE = frozenset({"smoke", "no_readme", "skip_10x", "skip_evidently", "pandas_large", "worker", "bootstrap"})


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The script's options, with ``changed``: the measuring options set away from their defaults (``--every 50``),
    which keep its figures out of the README (:func:`finish`)."""
    args = parser.parse_args(argv)
    args.changed = [
        "--" + name.replace("_", "-") + ("" if value is True else f" {value}")
        for name, value in vars(args).items()
        if name not in NOT_SCALE and value != parser.get_default(name)
    ]
    return args


def finish(report: Report, args: argparse.Namespace) -> int:
    """Print the figures, save the results (``data/benchmarks/<name>[-smoke].json``) and return the exit status: 1
    when the benchmark is broken. A full run at the default scale that is not broken is *published*: its README block
    is rewritten, and the summary counts it. A broken run, one with ``--no-readme`` or one with a measuring option
    changed (``args.changed``, set by :func:`parse`) is saved for a look, marked unpublished, and counted nowhere:
    the README keeps figures that were all measured as their targets define them, and its blocks and summary agree."""
    if report.broken:  # a figure of a broken run is no measurement to judge: no PASS printed beside BROKEN
        report.figures = [replace(f, ok=None) for f in report.figures]
    for f in report.figures:
        print(
            f"{f.verdict:<4}  {f.name}: {f.value}"
            + (f" (target {f.target})" if f.target else "")
            + (f"; {f.baseline}" if f.baseline else "")
        )
    for problem in report.broken:
        print(f"BROKEN  {problem}")
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{report.name}{'-smoke' if report.smoke else ''}.json"
    changed: list[str] = args.changed
    unpublished = [
        why
        for why, applies in (
            ("a smoke run", report.smoke),
            ("broken", bool(report.broken)),
            ("--no-readme", args.no_readme),
            (f"run with {' '.join(changed)} (the README holds runs at the default scale only)", bool(changed)),
        )
        if applies
    ]
    payload = {k: v for k, v in asdict(report).items() if k not in ("tables", "notes")}
    payload["figures"] = [{**asdict(f), "verdict": f.verdict} for f in report.figures]
    payload["published"] = not unpublished
    payload["changed"] = changed
    path.write_text(json.dumps(payload, indent=1, default=str))
    if unpublished:
        if not report.smoke:
            print(f"Saved to {path}, not published in benchmarks/README.md: {'; '.join(unpublished)}")
    else:
        replace_readme_section(report.name, report.markdown(), README)
        write_summary(README)
    return 1 if report.broken else 0


#: The figures of issue #12, in its order: (benchmark, figure key, what it is, its target as the issue states it).
ISSUE_12 = [
    ("training_pipeline", "cold_1x", "cold `training_pipeline`, full year 2013 (vs the plain run)", "<= 10 s"),
    ("training_pipeline", "ratio", "`training_pipeline` / plain run of the same steps", "<= 1.3"),
    ("training_pipeline", "cold_10x", "cold `training_pipeline` at 10x: wall / peak memory", "<= 60 s, <= 2.5 GiB"),
    ("monthly_refresh", "in_process", "monthly refresh in process (the daemon's path)", "<= 2.5 s"),
    ("monthly_refresh", "cold", "monthly refresh, cold process", "<= 5 s"),
    ("monthly_refresh", "in_process_flat", "monthly refresh in process, flat as history grows", "<= 1.2"),
    ("monthly_refresh", "cold_flat", "monthly refresh cold, flat as history grows", "<= 1.2"),
    ("serving_load", "p99", "serving p99 at 200 req/s with a shadow model", "<= 2.5 ms"),
    ("test_suite", "make_test", "`make test` on a quiet machine", "<= 4 min"),
]


def _measured_on(data: dict[str, Any]) -> str:
    m = data["machine"]
    loop = f", loop {m['python_loop_ms']:.0f} ms" if "python_loop_ms" in m else ""
    return f"{m['date']}, {m['commit']}, load {m['load_avg'][0]:.1f}{loop}"


def _summary_rows(readme: Path = README) -> tuple[dict[str, list[str]], dict[str, list[list[str]]]]:
    """The rows of the README's summary as they stand: issue #12's by figure, the other benchmarks' by script name."""
    text = readme.read_text()
    start, end = "<!-- results:summary -->", "<!-- /results:summary -->"
    issue: dict[str, list[str]] = {}
    others: dict[str, list[list[str]]] = {}
    if start not in text or end not in text:
        return issue, others
    table = ""
    for line in text[text.index(start) : text.index(end)].splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] in ("figure", "benchmark"):  # a table's header says which table follows
            table = cells[0]
        elif table == "figure":
            issue[cells[0]] = cells
        elif table == "benchmark":
            others.setdefault(cells[0].strip("`").removesuffix(".py"), []).append(cells)
    return issue, others


def write_summary(readme: Path = README, results: Path | None = None) -> None:
    """The README's summary: every figure of issue #12 with its target and verdict, then the other benchmarks' figures
    with targets, from the last published results files (``data/benchmarks/<name>.json`` of a full run at the default
    scale that was not broken and rewrote its block, :func:`finish`; smoke results never count). What is not in them
    keeps the row the summary already has, with its own date and commit (a fresh checkout that ran one
    benchmark, a run with ``--skip-10x``): an issue figure by figure, another benchmark's rows by benchmark; *not
    measured* only when nothing was ever recorded."""
    previous_issue, previous_others = _summary_rows(readme)
    measured = {}
    for path in sorted((results or results_dir()).glob("*.json")):
        if not path.stem.endswith("-smoke"):
            data = json.loads(path.read_text())
            if data.get("published"):
                measured[data["name"]] = data
    issue, listed = [], set()
    for bench, key, what, target in ISSUE_12:
        data = measured.get(bench, {})
        found = next((f for f in data.get("figures", []) if f.get("key") == key), None)
        if found is None:
            # not measured here (no results file, or a run that skipped it, like --skip-10x): the recorded row stays
            issue.append(previous_issue.get(what) or [what, "not measured", target, "-", "", f"`{bench}.py`"])
            continue
        listed.add((bench, key))
        verdict = f"**{found['verdict']}**" if found["verdict"] == "FAIL" else found["verdict"]
        baseline = "; ".join(x for x in (found["baseline"], found["name"]) if x)
        issue.append([what, found["value"], found["target"], verdict, baseline, _measured_on(data)])
    others = [
        [f"`{name}.py`", f["name"], f["value"], f["target"], f["verdict"], f["baseline"], _measured_on(data)]
        for name, data in measured.items()
        for f in data["figures"]
        if f["target"] and (name, f.get("key", "")) not in listed
    ]
    # the other benchmarks' rows kept for those with no results file here (first cell: the script's name)
    others += [row for name, rows in previous_others.items() if name not in measured for row in rows]
    parts = [
        "Issue #12:",
        markdown_table(["figure", "measured", "target", "verdict", "detail", "measured on"], issue),
    ]
    if others:
        header = ["benchmark", "figure", "measured", "target", "verdict", "vs baseline", "measured on"]
        parts += ["The other benchmarks:", markdown_table(header, others)]
    replace_readme_section("summary", "\n\n".join(parts), readme)


if __name__ == "__main__":
    if sys.argv[1:] != ["summary"]:
        raise SystemExit("usage: python benchmarks/harness.py summary")
    write_summary()
