"""A run whose process died (``kill -9``) is found, marked failed and its ``duckdb`` pool slot freed; the next run
proceeds, the killed run resumes from its failure, and nothing is duplicated or half-written.

The fault tests use real processes on a temporary data directory with the repo's ``dagster.yaml`` (the ``duckdb`` pool
of one slot): ``dagster job execute -m mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"``
in its own process group, watched line by line until it reaches the kill point (a step's STEP_START, or the first
registry folder of the registration), then ``kill -9`` of the group; then another ``dagster job execute`` and
``mlops resume <killed runs>``, as a person would type them. The kill point is seen on the run's console log, which
Dagster writes as it stores each event (so the kill lands within milliseconds, inside the step), and checked in the
instance's event log afterwards. The four kill points are one chain of runs on one data directory: each run recovers
the run killed before it and is killed further on, so every kill is followed by a run that proceeds, and one `mlops
resume` re-executes the four killed runs: 6 processes instead of 12 (each costs ~2-3 s of CPU to start). Runtime on 2
cores: ~37 s for the chain alone (more beside another test worker), 22-37 s for the run that waits while the slot
holder dies, ~10 s for `mlops resume` alone, ~5 s for the rest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.cli import main as mlops
from mlops_assets.core.processes import Liveness, ProcessIdentity, judge, process_identity
from mlops_assets.core.registry import CHAMPION, VERSION_PATTERN, Registry
from mlops_assets.core.settings import Settings
from mlops_assets.definitions import resume_run
from mlops_assets.recovery import (
    HOST_TAG,
    PID_TAG,
    PROCESS_TAG,
    WATCH_INTERVAL_ENV,
    WATCH_INTERVAL_S,
    RecoveredRun,
    recorded_process,
    recover_dead_runs,
    watch_interval_s,
)
from mlops_assets_tests.conftest import instance_for_test, started_run

BIN = Path(sys.executable).parent
#: How long the run after a kill may take, start to success (the issue: it waited forever).
NEXT_RUN_LIMIT_S = 120.0
POOL = "duckdb"


# --- the process identity, judged without Dagster ---------------------------------------------------------------


def _exited_child() -> ProcessIdentity:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    child.wait()
    return identity


def test_a_process_is_judged_by_host_boot_namespace_pid_and_start_time() -> None:
    me = process_identity()
    assert judge(me).liveness is Liveness.ALIVE
    assert judge(_exited_child()).liveness is Liveness.GONE
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        identity = process_identity(zombie.pid)
        deadline = time.monotonic() + 10
        while judge(identity).liveness is not Liveness.GONE and time.monotonic() < deadline:
            time.sleep(0.02)  # exited but not reaped yet: a zombie is gone too
        assert judge(identity).liveness is Liveness.GONE
    finally:
        zombie.wait()
    other_host = ProcessIdentity(**{**me.__dict__, "host": me.host + "-elsewhere"})
    assert judge(other_host).liveness is Liveness.UNKNOWN
    if me.boot_id is not None:  # Linux: a reused pid, an earlier boot, another container
        assert judge(ProcessIdentity(**{**me.__dict__, "start_ticks": (me.start_ticks or 0) + 1})).liveness is (
            Liveness.GONE
        )
        assert judge(ProcessIdentity(**{**me.__dict__, "boot_id": "another-boot"})).liveness is Liveness.GONE
        assert judge(ProcessIdentity(**{**me.__dict__, "pid_namespace": "pid:[1]"})).liveness is Liveness.UNKNOWN
    assert ProcessIdentity.from_json(me.to_json()) == me


# --- recovery on a Dagster instance, runs created directly -------------------------------------------------------


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as test_instance:
        yield test_instance


def _holders(instance: dg.DagsterInstance) -> set[str]:
    return {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots}


def test_a_run_whose_process_is_gone_is_marked_failed_and_its_slot_freed(instance: dg.DagsterInstance) -> None:
    dead = _exited_child()
    run = started_run(instance, dead)
    report = recover_dead_runs(instance)
    [recovered] = report.recovered
    assert isinstance(recovered, RecoveredRun) and recovered.run_id == run.run_id
    assert recovered.message() == (
        f"run {run.run_id} (training_pipeline) was STARTED but process {dead.pid} on {dead.host} is gone: marked "
        f"failed, freed its duckdb slot (claimed by its step raw__flights for the run); resume it with "
        f"`mlops resume {run.run_id}`"
    )
    failed = instance.get_run_by_id(run.run_id)
    assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
    assert _holders(instance) == set()
    failure = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert f"process {dead.pid} on {dead.host} is gone" in (failure[0].event_log_entry.dagster_event.message or "")
    assert recover_dead_runs(instance).recovered == ()  # nothing left to do: no second failure event


def test_runs_alive_elsewhere_or_unrecorded_are_left_alone(instance: dg.DagsterInstance) -> None:
    me = process_identity()
    alive = started_run(instance, me)
    report = recover_dead_runs(instance)
    assert report.recovered == () and report.of(alive.run_id) is not None
    assert "is running" in report.of(alive.run_id).reason  # type: ignore[union-attr]
    instance.event_log_storage.free_concurrency_slots_for_run(alive.run_id)

    elsewhere = started_run(instance, ProcessIdentity(**{**_exited_child().__dict__, "host": "another-host"}))
    instance.event_log_storage.free_concurrency_slots_for_run(elsewhere.run_id)
    copied = started_run(instance, _exited_child(), for_run="the-run-it-was-copied-from")  # tags of a retried run
    assert recorded_process(instance.get_run_by_id(copied.run_id)) is None  # type: ignore[arg-type]
    report = recover_dead_runs(instance)
    assert report.recovered == ()
    assert {e.run_id for e in report.left_alone} == {alive.run_id, elsewhere.run_id, copied.run_id}
    assert _holders(instance) == {copied.run_id}  # never freed on a guess
    for run in (alive, elsewhere, copied):
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]


def test_a_run_in_a_container_gone_silent_is_recovered_by_the_daemons_sensor(instance: dg.DagsterInstance) -> None:
    """A code-server container restarted under a run: its process is in a pid namespace (or on a host) nobody can
    look at, so only its heartbeat tells. Silent for HEARTBEAT_STALE_S, the run_recovery sensor (the daemon, with
    nobody at the keyboard) marks it failed and frees its slot, so the queue moves on and the run's retry re-executes
    it; a fresh heartbeat, or none at all (older code), is left alone."""
    from mlops_assets.defs.sensors import build_recovery_sensor
    from mlops_assets.recovery import HEARTBEAT_STALE_S, HEARTBEAT_TAG

    fresh = started_run(instance, ProcessIdentity(**{**_exited_child().__dict__, "host": "another-host"}))
    instance.add_run_tags(fresh.run_id, {HEARTBEAT_TAG: str(int(time.time()))})
    instance.event_log_storage.free_concurrency_slots_for_run(fresh.run_id)
    never = started_run(instance, ProcessIdentity(**{**_exited_child().__dict__, "host": "another-host"}))
    instance.event_log_storage.free_concurrency_slots_for_run(never.run_id)
    other_container = ProcessIdentity(**{**_exited_child().__dict__, "pid_namespace": "pid:[4026530000]"})
    silent = started_run(instance, other_container)  # holds the slot
    instance.add_run_tags(silent.run_id, {HEARTBEAT_TAG: str(int(time.time() - HEARTBEAT_STALE_S - 5))})

    sensor = build_recovery_sensor()
    result = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and result.skip_message == "recovered 1 run(s)"
    assert instance.get_run_by_id(silent.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    failure = instance.get_records_for_run(silent.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert "has not been heard from for" in (failure[0].event_log_entry.dagster_event.message or "")
    assert _holders(instance) == set()
    for alive in (fresh, never):
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]
    assert sensor(dg.build_sensor_context(instance=instance)).skip_message == "no run whose process died"  # type: ignore[union-attr]


def test_a_run_recovered_for_its_silence_is_one_the_run_retries_take() -> None:
    """dagster.yaml's run retries skip runs that failed for a real reason (a step's failure): a run marked failed
    by the recovery is taken, so the daemon re-executes it from its failure."""
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    from mlops_assets.recovery import HEARTBEAT_STALE_S, HEARTBEAT_TAG

    retries = {"run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}}
    with instance_for_test(overrides=retries) as retrying:
        other_container = ProcessIdentity(**{**_exited_child().__dict__, "pid_namespace": "pid:[4026530000]"})
        run_id = str(uuid.uuid4())
        tags = {
            PROCESS_TAG: json.dumps({"run_id": run_id, **json.loads(other_container.to_json())}),
            HEARTBEAT_TAG: str(int(time.time() - HEARTBEAT_STALE_S - 5)),
        }
        retrying.add_run(
            dg.DagsterRun(job_name="training_pipeline", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
        )
        assert [r.run_id for r in recover_dead_runs(retrying).recovered] == [run_id]
        failed = retrying.get_run_by_id(run_id)
        assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
        assert should_retry(failed, retrying)


def _daemon_beat(instance: dg.DagsterInstance, age_s: float) -> None:
    """The heartbeat of the daemon thread that launches run retries, ``age_s`` seconds old."""
    from dagster._daemon.types import DaemonHeartbeat

    from mlops_assets.recovery import RETRY_DAEMON

    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age_s, RETRY_DAEMON, "daemon-1", errors=[]))


@pytest.mark.parametrize("daemon", ["running", "stopped", "none"])
def test_a_dead_run_the_daemon_retries_is_not_also_resumed_by_hand(
    daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With run retries on and a daemon running, a run marked failed for a dead process is re-executed by Dagster: the
    recovery said to `mlops resume` it as well, and a resume before the retry started ran its steps a second time.
    Without a daemon (its last heartbeat minutes old, or none: `dagster job execute` alone) the resume is the way."""
    retries = {"run_retries": {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}}
    from mlops_assets import recovery as recovery_module
    from mlops_assets.recovery import retry_pending

    with instance_for_test(overrides={**retries, "concurrency": {"pools": {"default_limit": 1}}}) as retrying:
        if daemon != "none":
            _daemon_beat(retrying, 5 if daemon == "running" else 600)
        dead = _exited_child()
        run = started_run(retrying, dead)
        [recovered] = recover_dead_runs(retrying).recovered
        failure = retrying.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        said = failure[0].event_log_entry.dagster_event.message or ""
        if daemon == "running":
            assert recovered.retried
            hint = "the daemon's run retries re-execute it from its failure (if no retry run starts within 120 s: "
            assert recovered.message().endswith(f"; {hint}`mlops resume {run.run_id}`)")
            assert hint in said
            with pytest.raises(
                ValueError, match="is retried by the daemon .* wait for its retry run ..dagster run list"
            ):
                resume_run(run.run_id, retrying)
            # a retry that never came (a daemon started for the first time ignores failures logged before it):
            # after RETRY_EXPECTED_S, the run is a person's to resume
            failed = retrying.get_run_by_id(run.run_id)
            assert failed is not None and retry_pending(retrying, failed)
            monkeypatch.setattr(recovery_module, "RETRY_EXPECTED_S", 0.0)
            assert not retry_pending(retrying, failed)
        else:
            assert not recovered.retried
            assert recovered.message().endswith(f"; resume it with `mlops resume {run.run_id}`")
            assert f"`mlops resume {run.run_id}`" in said


def test_a_running_run_says_it_is_alive(instance: dg.DagsterInstance) -> None:
    from mlops_assets.recovery import HEARTBEAT_TAG, RecoveryWatch, record_run_process, silent_for

    run = instance.add_run(dg.DagsterRun(job_name="training_pipeline", status=dg.DagsterRunStatus.STARTED))
    record_run_process(instance, run.run_id)
    first = instance.get_run_by_id(run.run_id)
    assert first is not None and silent_for(first) is not None and silent_for(first) < 5  # type: ignore[operator]
    instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: "0"})
    watch = RecoveryWatch(instance, first, interval=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while silent_for(instance.get_run_by_id(run.run_id)) > 5:  # type: ignore[arg-type,operator]
            assert time.monotonic() < deadline, "the watch never beat"
            time.sleep(0.05)
    finally:
        watch.stop()


def test_a_finished_run_still_holding_a_slot_is_freed_once_its_process_is_gone(instance: dg.DagsterInstance) -> None:
    """Failed by hand (or by a recovery interrupted before freeing): the slot is freed, the status is kept."""
    me, dead = process_identity(), _exited_child()
    running = started_run(instance, me)
    instance.report_run_failed(running, "failed from the UI while its step still runs")
    assert recover_dead_runs(instance).recovered == ()  # its process still runs the step: the slot is in use
    assert _holders(instance) == {running.run_id}
    instance.event_log_storage.free_concurrency_slots_for_run(running.run_id)

    leaked = started_run(instance, dead)
    instance.report_run_failed(leaked, "failed by hand, slot forgotten")
    [freed] = recover_dead_runs(instance).recovered
    assert (freed.run_id, freed.was, freed.now) == (leaked.run_id, "FAILURE", "FAILURE")
    assert "freed its duckdb slot" in freed.message() and "marked" not in freed.message()
    assert _holders(instance) == set()


def test_resume_refuses_a_started_run_whose_process_runs(instance: dg.DagsterInstance) -> None:
    run = started_run(instance, process_identity())
    with pytest.raises(ValueError, match=rf"is STARTED, not FAILURE: process {os.getpid()} on .* is running"):
        resume_run(run.run_id, instance)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    elsewhere = started_run(instance, ProcessIdentity(pid=1, host="another-host"))
    with pytest.raises(ValueError, match="is on another host than this one"):
        resume_run(elsewhere.run_id, instance)


# --- kill -9 of real runs -----------------------------------------------------------------------------------------


class RunProcess:
    """A ``dagster job execute`` (or any command) in its own process group, its output read line by line as it comes,
    so a test can act the moment a line appears."""

    def __init__(self, command: list[str], cwd: Path, on_line: Callable[[RunProcess, str], None] | None = None) -> None:
        self.lines: list[str] = []
        self.on_line = on_line
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: kill -9 reaches all of it
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(self, line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"still running after {timeout:.0f} s:\n{self.output()[-6000:]}") from None
        self._reader.join(10)
        return code

    def output(self) -> str:
        return "".join(self.lines)

    def ensure_stopped(self) -> None:
        if self.process.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.process.wait()


@dataclass
class Platform:
    """A temporary data directory with three landed months, its Dagster home prepared by `mlops home`."""

    root: Path
    settings: Settings
    tags: str
    processes: list[RunProcess]

    def job_execute(self, on_line: Callable[[RunProcess, str], None] | None = None) -> RunProcess:
        command = [str(BIN / "dagster"), "job", "execute", "-m", "mlops_assets.definitions", "-j"]
        process = RunProcess([*command, "training_pipeline", "--tags", self.tags], self.root, on_line)
        self.processes.append(process)
        return process

    def mlops(self, *args: str) -> RunProcess:
        process = RunProcess([str(BIN / "mlops"), *args], self.root)
        self.processes.append(process)
        return process


def _cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mlops(list(args)) == 0
    return out.getvalue().strip()


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """MLOPS_DATA_DIR and DAGSTER_HOME point below ``tmp_path`` (conftest); the subprocesses inherit them, and a
    running run's recovery watch looks every second (10 by default) for a dead slot holder."""
    from mlops_assets.core.settings import load_settings

    monkeypatch.setenv(WATCH_INTERVAL_ENV, "1")
    _cli("home")  # the repo's dagster.yaml: the duckdb pool of one slot, one run at a time
    _cli("replay", "--through", "2013-03", "--every", "20")
    made = Platform(tmp_path, load_settings(), _cli("months", "--tags"), [])
    try:
        yield made
    finally:
        for process in made.processes:  # a failed assertion never leaves a process behind
            process.ensure_stopped()


class ChampionWatch:
    """Reads every model's ``champion`` alias every few milliseconds while the runs go on: every version it ever
    named must turn out complete."""

    def __init__(self, settings: Settings) -> None:
        self.paths = [settings.model(m.name).registry_dir / "aliases.json" for m in CATALOG.models]
        self.seen: set[tuple[str, str]] = set()
        self.unreadable: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ChampionWatch:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            for path in self.paths:
                try:
                    text = path.read_text()
                except FileNotFoundError:
                    continue
                try:
                    champion = json.loads(text).get(CHAMPION)
                except json.JSONDecodeError:
                    self.unreadable.append(text)  # aliases.json is replaced atomically: never seen half-written
                    continue
                if champion:
                    self.seen.add((path.parent.name, champion))


def _on_step_start(step: str, action: int) -> Callable[[RunProcess, str], None]:
    """Signal the run's process group the moment it logs STEP_START of ``step`` (the slot is claimed by then)."""
    marker = f" - {step} - STEP_START - "

    def act(process: RunProcess, line: str) -> None:
        if marker in line:
            process.signal_group(action)

    return act


def _kill_at_registration(
    process: RunProcess, registry: Path, stop: threading.Event, stored_only: bool = False
) -> None:
    """Kill the run the moment anything new appears in the model's registry versions folder (its staging folder, or
    the version just renamed into place): inside the registration. ``stored_only``: the moment a new version folder
    is in place (before its ``registered`` event)."""
    versions = registry / "versions"
    before = set(os.listdir(versions)) if versions.exists() else set()
    while not stop.is_set() and process.process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            new = {entry.name for entry in os.scandir(versions)} - before
            if new and (not stored_only or any(VERSION_PATTERN.match(name) for name in new)):
                process.signal_group(signal.SIGKILL)
                return
        time.sleep(0.001)


def _onlystarted_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert len(runs) == 1, [r.run_id for r in runs]
    return runs[0]


def assert_no_duplicate_keys(settings: Settings) -> None:
    """Raw rows once per landed row; validated, features and training sets once per contract / entity key."""
    feed = CATALOG.feeds[0]
    checks: dict[str, tuple[str, ...]] = {}
    for table in feed.tables:
        checks[f"raw.{table.name}"] = ("_source_file", "_row")
        checks[f"validated.{table.name}"] = table.key
        checks[f"quarantine.{table.name}"] = ("_sha256", "stage", "_row")
    for model in CATALOG.models:
        checks[f"features.{model.features.name}"] = model.features.key
        checks[f"{model.name}.training_set"] = model.features.key
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        existing = {
            f"{s}.{t}" for s, t in conn.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()
        }
        for table, key in checks.items():
            if table not in existing:
                assert table.startswith("quarantine."), f"{table} missing"
                continue
            columns = ", ".join(f'"{c}"' for c in key)
            rows, distinct = conn.execute(f"SELECT count(*), count(DISTINCT ({columns})) FROM {table}").fetchone()  # type: ignore[misc]
            assert rows == distinct, f"{table}: {rows - distinct} duplicate key(s) on {key}"
            if not table.startswith("quarantine."):
                assert rows > 0, f"{table} is empty"
        for model in CATALOG.models:
            months = conn.execute(f"SELECT DISTINCT _month FROM features.{model.features.name} ORDER BY 1").fetchall()
            assert [m[0] for m in months] == ["2013-01", "2013-02", "2013-03"]


def assert_registry_consistent(settings: Settings, champions_seen: set[tuple[str, str]]) -> None:
    """Every version folder whole and matching its checksum; aliases and evaluations name such versions; the
    champion, now and whenever it was looked at, and every promotion named one."""
    for model in CATALOG.models:
        registry = Registry(settings.model(model.name).registry_dir)
        versions = registry.versions()
        assert versions, f"{model.name}: nothing registered"
        for version in versions:
            folder = registry.versions_dir / version
            assert {p.name for p in folder.iterdir()} == {"model.txt", "model.sha256", "metadata.json", "profile.json"}
            registry.model_text(version)  # raises when the model does not match its checksum
            assert registry.get(version).metadata["version"] == version
            json.loads((folder / "profile.json").read_text())
        for alias, version in registry.aliases().items():
            assert version is None or version in versions, f"{model.name}: alias {alias} names {version}"
        champion = registry.alias(CHAMPION)
        assert champion in versions, f"{model.name}: champion {champion}"
        assert registry.evaluation(champion) is not None  # it was promoted on a stored evaluation
        moved = [e["version"] for e in registry.events() if e.get("alias") == CHAMPION and e["version"]]
        assert moved and set(moved) <= set(versions)
        # one version per training, whatever the kills and re-executions: each logged, none a copy of another
        # that an earlier attempt of the same run stored
        assert registry.logged_versions() == set(versions), f"{model.name}: versions no event names"
        trainings = [(m.get("root_run_id"), m["model_sha256"]) for m in (registry.get(v).metadata for v in versions)]
        assert len(trainings) == len(set(trainings)), f"{model.name}: a run registered the same model twice"
        assert {v for m, v in champions_seen if m == model.name} <= set(versions)


#: Where the runs of the chain are killed, one run each, in this order (a step's STEP_START, or inside flight_delay's
#: registry write, see _kill_at_registration: REGISTERING as its first file appears, STORED once its version folder
#: is in place, before the ``registered`` event; after the training points, as they need a registry no run wrote).
REGISTERING, STORED = "<registering>", "<stored>"
KILL_POINTS = {
    "ingest": "raw__flights",
    "feature_build": "features__flight_features",
    "training": "flight_delay__challenger",
    "registration": REGISTERING,
    "version stored": STORED,
}
STEP_KILLS = {point: step for point, step in KILL_POINTS.items() if step not in (REGISTERING, STORED)}


def _killed_run(platform: Platform, step: str) -> RunProcess:
    """A ``dagster job execute`` killed at ``step`` (a kill point of KILL_POINTS), waited for."""
    stop = threading.Event()
    if step not in (REGISTERING, STORED):
        killed = platform.job_execute(on_line=_on_step_start(step, signal.SIGKILL))
    else:
        killed = platform.job_execute()
        registry_dir = platform.settings.model("flight_delay").registry_dir
        kill = threading.Thread(
            target=_kill_at_registration, args=(killed, registry_dir, stop, step == STORED), daemon=True
        )
        kill.start()
    code = killed.wait(timeout=NEXT_RUN_LIMIT_S)
    stop.set()
    assert code == -signal.SIGKILL, f"the run was not killed at {step}:\n{killed.output()[-4000:]}"
    return killed


def _assert_recovered(instance: dg.DagsterInstance, run: dg.DagsterRun, pid: int, by: RunProcess) -> None:
    """``by``, the next run, said that it recovered ``run`` (killed, process ``pid``), which is now FAILURE."""
    said = re.search(
        rf"mlops recovery: run {run.run_id} \(training_pipeline\) was STARTED but process {pid} on \S+ is "
        rf"gone: marked failed, (freed its duckdb slot \(claimed by its step \w+ for the run\)|it held no pool slot); "
        rf"resume it with "
        rf"`mlops resume {run.run_id}`",
        by.output(),
    )
    assert said, by.output()[-6000:]
    failed = instance.get_run_by_id(run.run_id)
    assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE


def test_kill_9_at_each_point_the_next_run_proceeds_and_every_killed_run_resumes(platform: Platform) -> None:
    """A chain of runs on one data directory: each is killed at the next kill point, after recovering the run killed
    before it and going past the point where that one died (its step re-run, its slot claimed again). The run after
    the last kill succeeds within two minutes; then one `mlops resume` re-executes each killed run from its failure."""
    killed_runs: list[tuple[str, str, dg.DagsterRun]] = []
    with ChampionWatch(platform.settings) as champions, dg.DagsterInstance.get() as instance:
        previous: tuple[dg.DagsterRun, int] | None = None
        for point, step in KILL_POINTS.items():
            # 1. the run is killed at the kill point: it stays STARTED, and (killed in a step) its slot stays claimed
            killed = _killed_run(platform, step)
            run = _onlystarted_run(instance)
            assert run.tags[PID_TAG] == str(killed.pid) and run.tags[HOST_TAG] == socket.gethostname()
            if step in STEP_KILLS.values():
                started_steps = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                assert step in {r.event_log_entry.step_key for r in started_steps.records}, point
                assert _holders(instance) == {run.run_id}, point  # the previous run's slot was freed
            # 2. it began by recovering the run killed before it (marked failed, its slot freed), then went on
            if previous is not None:
                _assert_recovered(instance, *previous, by=killed)
            killed_runs.append((point, step, run))
            previous = (run, killed.pid)

        # the run after the last kill recovers it and succeeds within two minutes
        assert previous is not None
        started = time.monotonic()
        following = platform.job_execute()
        assert following.wait(timeout=NEXT_RUN_LIMIT_S) == 0, following.output()[-6000:]
        assert time.monotonic() - started < NEXT_RUN_LIMIT_S
        _assert_recovered(instance, *previous, by=following)
        assert _holders(instance) == set()

        # 3. one `mlops resume` re-executes every killed run from its failure, one after the other
        resumed = platform.mlops("resume", *(run.run_id for _, _, run in killed_runs))
        assert resumed.wait(timeout=NEXT_RUN_LIMIT_S * len(killed_runs)) == 0, resumed.output()[-6000:]
        for point, step, run in killed_runs:
            summary = re.search(rf"run (\S+) \(resuming {run.run_id}\): SUCCESS; re-ran: (.*)", resumed.output())
            assert summary, (point, resumed.output()[-6000:])
            rerun = set(summary.group(2).split(", "))
            if step in STEP_KILLS.values():
                assert step in rerun, point  # the step the kill interrupted ran again
            assert "flight_delay__champion" in rerun, point  # and everything after it
            child = instance.get_run_by_id(summary.group(1))
            assert child is not None and child.parent_run_id == run.run_id
            assert child.status == dg.DagsterRunStatus.SUCCESS

    # 4. nothing duplicated, nothing half-written, the champion only ever a complete version
    assert champions.unreadable == []
    assert_no_duplicate_keys(platform.settings)
    assert_registry_consistent(platform.settings, champions.seen)


@pytest.mark.parametrize(("value", "interval"), [(None, WATCH_INTERVAL_S), ("2.5", 2.5), ("0", None), ("soon", None)])
def test_the_watch_interval_is_a_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, interval: float | None
) -> None:
    """`$MLOPS_RECOVERY_WATCH_S`: a positive number of seconds; anything else keeps the default (logged), since
    recovery is never a reason for a run to fail."""
    if value is not None:
        monkeypatch.setenv(WATCH_INTERVAL_ENV, value)
    assert watch_interval_s() == (interval if interval is not None else WATCH_INTERVAL_S)


def test_a_run_waiting_for_the_slot_is_released_when_the_holder_dies(platform: Platform) -> None:
    """The holder is alive when the second run starts (so its start leaves it alone and its first step waits for the
    slot), then dies: the second run's watch marks it failed and frees the slot, and the second run finishes."""
    with dg.DagsterInstance.get() as instance:
        holder = platform.job_execute(on_line=_on_step_start("raw__flights", signal.SIGSTOP))  # frozen in its step
        deadline = time.monotonic() + NEXT_RUN_LIMIT_S
        while " - raw__flights - STEP_START - " not in holder.output():
            assert time.monotonic() < deadline and holder.process.poll() is None, holder.output()[-4000:]
            time.sleep(0.05)
        held = _onlystarted_run(instance)
        assert _holders(instance) == {held.run_id}

        waiting = platform.job_execute()
        while "blocked by limit for pool duckdb" not in waiting.output():
            assert time.monotonic() < deadline and waiting.process.poll() is None, waiting.output()[-4000:]
            time.sleep(0.1)
        assert "mlops recovery" not in waiting.output()  # the holder was alive: left alone

        holder.signal_group(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        killed_at = time.monotonic()
        assert waiting.wait(timeout=NEXT_RUN_LIMIT_S) == 0, waiting.output()[-6000:]
        assert time.monotonic() - killed_at < NEXT_RUN_LIMIT_S
        assert re.search(
            rf"mlops recovery: run {held.run_id} \(training_pipeline\) was STARTED but process {holder.pid} on \S+ is "
            r"gone: marked failed, freed its duckdb slot \(claimed by its step raw__\w+ for the run\)",
            waiting.output(),
        ), waiting.output()[-6000:]
        failed = instance.get_run_by_id(held.run_id)
        assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
    assert_no_duplicate_keys(platform.settings)


def test_mlops_resume_accepts_a_killed_run_still_marked_started(platform: Platform) -> None:
    """No run in between: `mlops resume` itself finds the run's process gone, marks it failed, frees its slot, says so
    and resumes it (after refusing a run id that names nothing)."""
    with dg.DagsterInstance.get() as instance:
        killed = platform.job_execute(on_line=_on_step_start("features__flight_features", signal.SIGKILL))
        assert killed.wait(timeout=NEXT_RUN_LIMIT_S) == -signal.SIGKILL, killed.output()[-4000:]
        run = _onlystarted_run(instance)
        # `mlops resume` alone marks it failed (its process is gone) and lists it, with the step the kill stopped
        listed = platform.mlops("resume")
        assert listed.wait(timeout=NEXT_RUN_LIMIT_S) == 0, listed.output()[-6000:]
        recovered = f"recovered: run {run.run_id} (training_pipeline) was STARTED but process {killed.pid} on "
        assert recovered in listed.output(), listed.output()[-6000:]
        assert re.search(
            rf"  {run.run_id[:8]}  training_pipeline .*\n +at (.*, )?features/flight_features(, .*)?: process {killed.pid} "
            r"on \S+ is gone \(killed or crashed\): the run can never finish\n",
            listed.output(),
        ), listed.output()[-6000:]
        # a run id that names nothing is refused with the reason, the next one is resumed all the same, and the
        # command says by its exit status that not everything was resumed
        resumed = platform.mlops("resume", "no-such-run", run.run_id)
        assert resumed.wait(timeout=NEXT_RUN_LIMIT_S) == 1, resumed.output()[-6000:]
        assert "error: no run 'no-such-run' in the Dagster instance" in resumed.output(), resumed.output()[-6000:]
        # the listing it points to names this instance: `dagster run list` with that $DAGSTER_HOME lists the run
        assert "`mlops resume` alone lists the failed runs left to resume" in resumed.output()
        listing = re.search(r"every run is in `DAGSTER_HOME=(\S+) dagster run list`", resumed.output())
        assert listing, resumed.output()[-6000:]
        with dg.DagsterInstance.from_config(shlex.split(listing.group(1))[0]) as listed:
            assert listed.get_run_by_id(run.run_id) is not None
        assert re.search(rf"\(resuming {run.run_id}\): SUCCESS; re-ran: .*features__flight_features", resumed.output())
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    assert_no_duplicate_keys(platform.settings)
    assert_registry_consistent(platform.settings, set())
