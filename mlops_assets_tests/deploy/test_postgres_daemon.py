"""The platform deployed as separate processes on a PostgreSQL-backed Dagster instance, as a real deployment runs it.

A real PostgreSQL server (``postgres_server``), ``mlops home`` with ``$MLOPS_DAGSTER_POSTGRES_URL`` set, a code
location server (``dagster code-server start``) and the daemon (``dagster-daemon run``) against a workspace file that
points at the server's gRPC port. Jan-Mar 2013 land (``mlops replay``, a thin slice), ``training_pipeline`` goes
through the daemon's run queue (``dagster job launch``) to SUCCESS while April lands; then the daemon's
``landing_sensor`` is started and refreshes April: every model gets an April drift report, recorded in PostgreSQL.
Every process is stopped at the end, its whole process group, and the test checks none is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import dagster as dg
import grpc
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.settings import DAGSTER_POSTGRES_URL_ENV, SENSOR_INTERVAL_ENV
from mlops_assets.defs.features import freshness_check_keys
from mlops_assets.defs.keys import keys_of
from mlops_assets.healthcheck import code_server_status
from mlops_assets.postgres_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)
from mlops_assets_tests.deploy.conftest import PostgresServer, free_port

#: Every 20th flight: the thinnest slice on which both models still train and pass their gates quickly.
EVERY = 20
#: The whole deployment (code server up, training_pipeline, April's refresh) must finish within this (2 cores).
BUDGET_SECONDS = 360
LOCATION = "mlops_assets"
BIN = Path(sys.executable).parent

T = TypeVar("T")


@dataclass
class Deployment:
    """The processes of one deployment, their logs, and the environment they share."""

    root: Path
    env: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[str]] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    def mark(self, what: str) -> None:
        """Note how long the deployment took to reach ``what`` (printed with ``-s``, and in failures)."""
        self.timeline.append(f"{time.monotonic() - self.started:6.1f} s  {what}")
        print(self.timeline[-1])

    def cli(self, tool: str, *args: str, timeout: float = 180) -> str:
        """Run one of the environment's commands (``mlops``, ``dagster``) to its end; its stdout."""
        done = subprocess.run(
            [str(BIN / tool), *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, name: str, tool: str, *args: str) -> None:
        """Start a long-running process in its own session, so stopping its process group stops all it started
        (the code server's run workers)."""
        log = (self.root / f"{name}.log").open("w")
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            [str(BIN / tool), *args],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def assert_alive(self) -> None:
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"

    def log_tail(self, name: str, chars: int = 4000) -> str:
        self.logs[name].flush()
        return (self.root / f"{name}.log").read_text(errors="replace")[-chars:]

    def diagnostics(self) -> str:
        """What a failure message needs: the timeline and the end of every process's log."""
        logs = "\n".join(f"--- {name}.log (end) ---\n{self.log_tail(name)}" for name in self.processes)
        return "timeline:\n" + "\n".join(self.timeline) + "\n" + logs

    def wait_for(self, what: str, found: Callable[[], T | None], deadline: float, every: float = 2.0) -> T:
        """Poll ``found`` until it returns something, while every process stays up; fail at ``deadline``."""
        while True:
            value = found()
            if value is not None:
                self.mark(what)
                return value
            self.assert_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for: {what}\n{self.diagnostics()}")
            time.sleep(every)

    def stop(self) -> list[int]:
        """Stop every process group (SIGTERM, then SIGKILL after 20 s: the daemon may linger on its threads); the
        ids of processes still alive afterwards (should be none)."""
        members = {pid for p in self.processes.values() for pid in _group_members(p.pid)}
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)  # whatever is left of the group, leader gone or not
            process.wait(timeout=10)
        for log in self.logs.values():
            log.close()
        time.sleep(0.5)
        return [pid for pid in members if _alive(pid)]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stat(pid: int) -> list[str] | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _group_members(pgid: int) -> set[int]:
    """Live processes of process group ``pgid`` (field 5 of /proc/<pid>/stat)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:
                members.add(int(entry.name))
    return members


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


@pytest.fixture
def deployment(
    tmp_path: Path, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    """A data directory and a Dagster home on a fresh PostgreSQL database; the processes started by the test are
    stopped (their process groups) whatever happens."""
    url = postgres_server.create_database("deployment")
    data = tmp_path / "data"
    env = {
        **os.environ,
        "MLOPS_DATA_DIR": str(data),
        "DAGSTER_HOME": str(data / "dagster_home"),
        DAGSTER_POSTGRES_URL_ENV: url,
        "PYTHONUNBUFFERED": "1",
        # the daemon looks at the landing zone every 5 s instead of 30: April's refresh starts sooner
        SENSOR_INTERVAL_ENV: "5",
    }
    # the test process opens the same instance to watch it: Dagster reads the URL from its environment too
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, url)
    monkeypatch.setenv("MLOPS_DATA_DIR", env["MLOPS_DATA_DIR"])
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    deployed = Deployment(root=tmp_path, env=env)
    try:
        yield deployed
    finally:
        left = deployed.stop()
        assert not left, f"processes left running after stopping the deployment: {left}"


def _run_status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus | None:
    """The run's status once it finished (None while it is queued or running)."""
    run = instance.get_run_by_id(run_id)
    return run.status if run is not None and run.is_finished else None


def _failure_details(instance: dg.DagsterInstance, run_id: str) -> str:
    """The failure messages of a run's events, for an assertion message."""
    events = instance.all_logs(run_id)
    failed = [e for e in events if e.is_dagster_event and e.dagster_event.is_failure]  # type: ignore[union-attr]
    return "\n".join(f"{e.step_key}: {e.dagster_event.event_specific_data}" for e in failed)[-4000:]  # type: ignore


def _april_drift_reports(instance: dg.DagsterInstance) -> list[dg.EventLogRecord] | None:
    """Every model's April drift report materialization, once all of them exist (None before)."""
    found = [
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=keys_of(model).drift, asset_partitions=["2013-04"]), limit=1
        ).records
        for model in CATALOG.models
    ]
    return [records[0] for records in found] if all(found) else None


def test_training_and_a_landed_month_run_through_the_daemon_on_postgres(deployment: Deployment) -> None:
    d = deployment
    home = Path(d.cli("mlops", "home").strip())
    assert home == d.home
    # the instance's settings name the variable; the URL and its password are never written to disk
    written = (home / "dagster.yaml").read_text()
    password = d.env[DAGSTER_POSTGRES_URL_ENV].split(":")[2].split("@")[0]
    assert DAGSTER_POSTGRES_URL_ENV in written and password not in written

    port = free_port()
    workspace = d.root / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: {LOCATION}\n"
    )
    code_server = ["code-server", "start", "-m", "mlops_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]
    # it loads the code (no data read) while the months land
    d.start("code_server", "dagster", *code_server, "--location-name", LOCATION)
    deadline = time.monotonic() + BUDGET_SECONDS
    d.cli("mlops", "replay", "--through", "2013-03", "--every", str(EVERY))
    d.mark("Jan-Mar landed, their partitions registered in PostgreSQL")
    tags = d.cli("mlops", "months", "--tags").strip()

    def serving() -> bool | None:
        """The compose stack's health check of the code server (mlops_assets/healthcheck.py), here in process."""
        try:
            return True if code_server_status("127.0.0.1", port) == "SERVING" else None
        except grpc.RpcError:
            return None

    d.wait_for("code server serving", serving, deadline, every=1.0)
    # The initial training comes before the feed is watched, as `make pipeline` before `make ui`: with the sensor on,
    # its first tick would find Jan-Mar landed but not ingested yet and refresh each month again (three more runs).
    # Its state (stopped, then started) is kept in PostgreSQL's schedule storage.
    d.cli("dagster", "sensor", "stop", "landing_sensor", "-w", str(workspace))
    d.start("daemon", "dagster-daemon", "run", "-w", str(workspace))

    with dg.DagsterInstance.get() as instance:
        # the live instance: PostgreSQL storage (Dagster's, on kept connections), one run at a time, run monitoring
        # and retries from crashes only
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PooledPostgresScheduleStorage)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1  # type: ignore[union-attr]
        assert instance.run_coordinator.dequeue_interval_seconds == 1  # type: ignore[attr-defined]
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2 and not instance.run_retries_retry_on_asset_or_op_failure
        assert sorted(instance.get_dynamic_partitions("months")) == ["2013-01", "2013-02", "2013-03"]

        run_id = str(uuid.uuid4())
        launch = ["job", "launch", "-w", str(workspace), "-j", "training_pipeline", "--tags", tags, "--run-id", run_id]
        d.cli("dagster", *launch)
        d.mark("training_pipeline submitted to the run queue")
        # April lands while the training runs, as a feed does whenever it likes: the run's months are its tags, and
        # the landing sensor, still stopped, is what will notice April
        with ThreadPoolExecutor(1) as landing:
            april_landed = landing.submit(d.cli, "mlops", "replay", "--month", "2013-04", "--every", str(EVERY))
            status = d.wait_for("training_pipeline finished", lambda: _run_status(instance, run_id), deadline)
            april_landed.result()
        assert status == dg.DagsterRunStatus.SUCCESS, _failure_details(instance, run_id) + d.diagnostics()
        # it went through the queue (the daemon dequeued and launched it), over the months of the launch tags
        assert instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED), "the run skipped the queue"
        run = instance.get_run_by_id(run_id)
        assert run is not None and json.loads(tags).items() <= run.tags.items()

        d.cli("dagster", "sensor", "start", "landing_sensor", "-w", str(workspace))
        d.mark("landing_sensor on, April landed")
        records = d.wait_for("every model's April drift report", lambda: _april_drift_reports(instance), deadline)
        for refresh_id in {record.run_id for record in records}:
            refresh = instance.get_run_by_id(refresh_id)
            assert refresh is not None
            # launched by the daemon's landing sensor for April, nothing else
            assert refresh.tags.get("dagster/sensor_name") == "landing_sensor", refresh.tags
            assert refresh.tags.get("dagster/partition") == "2013-04", refresh.tags
            # with the checks of what it writes, but not the features' freshness (the automation sensor's clock)
            checks = refresh.asset_check_selection or frozenset()
            assert {c.name for c in checks} >= {"schema_contract", "row_contract"}, checks
            assert not checks & set(freshness_check_keys(list(CATALOG.feature_tables))), checks
            finished = d.wait_for(
                "April's refresh run finished", lambda rid=refresh_id: _run_status(instance, rid), deadline
            )
            assert finished == dg.DagsterRunStatus.SUCCESS, _failure_details(instance, refresh_id) + d.diagnostics()
        # no other run refreshed a month: the sensor was off while the training run ingested Jan-Mar
        sensor_runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "landing_sensor"}))
        assert [r.tags.get("dagster/partition") for r in sensor_runs] == ["2013-04"]

        # the daemon ran the monitoring and retry daemons the settings ask for, its heartbeats in PostgreSQL
        beating = set(instance.get_daemon_heartbeats())
        assert {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING", "EVENT_LOG_CONSUMER"} <= beating, beating
    d.mark("done")
