"""The Dagster instance ``mlops home`` (``prepare_dagster_home``) writes: SQLite files by default (Dagster's, on kept
connections), PostgreSQL when ``$MLOPS_DAGSTER_POSTGRES_URL`` is set (Dagster's tables, on kept connections too), with
the same settings either way (one run at a time, the ``duckdb`` pool of one slot, freshness, run monitoring that
frees a crashed run's slots, and retries of crashed runs only).

The SQLite instance is loaded as Dagster loads it; the PostgreSQL one is checked as written, then loaded live on a
real server (``fresh_postgres_url``): its connections are kept, survive the server ending them, and a forked child
never touches its parent's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy
import yaml

from mlops_assets.core.settings import (
    DAGSTER_POSTGRES_URL_ENV,
    POSTGRES_INSTANCE_YAML,
    REPO_ROOT,
    SQLITE_INSTANCE_YAML,
    prepare_dagster_home,
)
from mlops_assets.postgres_storage import (
    KEPT_CONNECTIONS,
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)
from mlops_assets.run_launcher import RestartAwareRunLauncher
from mlops_assets.sqlite_storage import (
    PlatformInstance,
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
    PooledSqliteScheduleStorage,
)
from mlops_assets_tests.conftest import engine_event_messages, new_run

#: What both instance settings files must say about crashed runs.
RUN_RETRIES = {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
#: Both files' instance class: Dagster's, whose default storage is its SQLite files on kept connections.
INSTANCE_CLASS = {"module": "mlops_assets.sqlite_storage", "class": "PlatformInstance"}
#: The daemons `dagster-daemon run` must start for these settings (beside sensors, backfills, schedules).
DAEMONS = {"QUEUED_RUN_COORDINATOR", "MONITORING", "EVENT_LOG_CONSUMER", "FRESHNESS_DAEMON"}


def _written(home: Path) -> dict[str, Any]:
    return yaml.safe_load((home / "dagster.yaml").read_text())


def _assert_platform_settings(instance: dg.DagsterInstance) -> None:
    """The settings every deployment of the platform needs, whatever its storage, on a loaded instance."""
    concurrency = instance.get_concurrency_config()
    assert concurrency.run_queue_config is not None and concurrency.run_queue_config.max_concurrent_runs == 1
    assert concurrency.pool_config.default_pool_limit == 1
    assert instance.freshness_enabled and not instance.telemetry_enabled
    assert instance.run_monitoring_enabled
    # the default run launcher cannot resume a run: Dagster refuses to load the instance if this were above 0
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert not instance.run_retries_retry_on_asset_or_op_failure  # a failed asset or check is not retried
    assert DAEMONS <= set(instance.get_required_daemon_types())
    # a code server shutting down under a run sends the next queued run back to the queue (test_code_server_restart)
    assert isinstance(instance.run_launcher, RestartAwareRunLauncher)


def test_the_embedded_default_is_sqlite_with_monitoring_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DAGSTER_POSTGRES_URL_ENV, raising=False)
    home = prepare_dagster_home(tmp_path / "home")
    assert (home / "dagster.yaml").read_bytes() == (REPO_ROOT / SQLITE_INSTANCE_YAML).read_bytes()
    # Dagster's SQLite files in the instance's folder, on kept connections (mlops_assets/sqlite_storage.py), wherever
    # $DAGSTER_HOME points
    assert "storage" not in _written(home) and _written(home)["instance_class"] == INSTANCE_CLASS
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "another_home"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance, PlatformInstance)
        assert isinstance(instance.run_storage, PooledSqliteRunStorage)
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert isinstance(instance.schedule_storage, PooledSqliteScheduleStorage)
        assert Path(instance.event_log_storage.path_for_shard("index")).parent == home / "history" / "runs"
        _assert_platform_settings(instance)


def test_the_postgres_url_switches_the_storage_and_never_lands_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg2://dagster:s3cret-pw@db.example:5432/dagster"
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, url)
    home = prepare_dagster_home(tmp_path / "home")
    text = (home / "dagster.yaml").read_text()
    assert (home / "dagster.yaml").read_bytes() == (REPO_ROOT / POSTGRES_INSTANCE_YAML).read_bytes()
    assert "s3cret-pw" not in text and url not in text
    config = yaml.safe_load(text)
    # Dagster reads the URL from the environment of each process that opens the instance
    assert config["storage"] == {
        "custom": {
            "module": "mlops_assets.postgres_storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_url": {"env": DAGSTER_POSTGRES_URL_ENV}},
        }
    }
    assert config["run_retries"] == RUN_RETRIES
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["concurrency"] == {"runs": {"max_concurrent_runs": 1}, "pools": {"default_limit": 1}}

    # unset again, the next `mlops home` goes back to the embedded default
    monkeypatch.delenv(DAGSTER_POSTGRES_URL_ENV)
    assert "storage" not in _written(prepare_dagster_home(home))
    assert "PooledPostgresStorage" in str(_written(prepare_dagster_home(home, postgres=True))["storage"])


def test_both_instance_files_say_the_same_but_for_storage() -> None:
    """dagster.postgres.yaml is dagster.yaml on PostgreSQL: a setting changed in one must be changed in the other."""
    sqlite = yaml.safe_load((REPO_ROOT / SQLITE_INSTANCE_YAML).read_text())
    postgres = yaml.safe_load((REPO_ROOT / POSTGRES_INSTANCE_YAML).read_text())
    assert set(postgres) - set(sqlite) == {"storage"}
    assert {k: v for k, v in postgres.items() if k != "storage"} == sqlite
    assert sqlite["instance_class"] == INSTANCE_CLASS
    assert sqlite["run_retries"] == RUN_RETRIES


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which dagster-postgres does not bring
        ("postgresql://dagster:s3cret-pw@db:5432/dagster", "needs the driver psycopg"),
        ("postgres://dagster:s3cret-pw@db:5432/dagster", "not a database URL"),
        ("mysql://dagster:s3cret-pw@db/dagster", "not PostgreSQL"),
    ],
)
def test_a_url_dagster_could_not_open_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, url)
    with pytest.raises(ValueError, match=says) as refused:
        prepare_dagster_home(tmp_path / "home")
    assert "postgresql+psycopg2://" in str(refused.value) and "s3cret-pw" not in str(refused.value)
    assert not (tmp_path / "home" / "dagster.yaml").exists()


def test_the_postgres_instance_loads_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_postgres_url: str
) -> None:
    """On a real server: every storage is PostgreSQL's, the platform's settings hold, and what one process writes
    (the months) another reads."""
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, fresh_postgres_url)
    home = prepare_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Dagster's PostgreSQL storages (dagster_postgres), on kept connections
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PooledPostgresScheduleStorage)
        # freeing a crashed run's pool slots needs storage that keeps the slots (global concurrency)
        assert instance.event_log_storage.supports_global_concurrency_limits
        _assert_platform_settings(instance)
        instance.add_dynamic_partitions("months", ["2013-01", "2013-02"])
    with dg.DagsterInstance.from_config(str(home)) as reopened:
        assert reopened.get_dynamic_partitions("months") == ["2013-01", "2013-02"]
    assert (tmp_path / "home").exists() and not list(home.glob("**/*.db"))  # nothing stored in SQLite files


def test_processes_starting_at_once_on_an_empty_database_all_open_the_instance(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    """A code server and a one-off `mlops replay` starting together on a new database: both created Dagster's tables,
    and the second failed on a type the first had just made (`DuplicateObject`, seen in the daemon test). The
    storage's advisory lock lets one process create them at a time."""
    env = {**os.environ, DAGSTER_POSTGRES_URL_ENV: fresh_postgres_url}
    script = (
        "import sys, time, dagster as dg\n"
        "from pathlib import Path\n"
        "from mlops_assets.core.settings import prepare_dagster_home\n"
        "home = prepare_dagster_home(Path(sys.argv[1]))\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # imports done: every child opens at once\n"
        "with dg.DagsterInstance.from_config(str(home)) as instance:\n"
        "    instance.get_dynamic_partitions('months')\n"
    )
    start_at = str(time.time() + 5)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"home{i}"), start_at],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0] * 4, "\n".join(outputs)


@pytest.fixture
def postgres_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_postgres_url: str
) -> Iterator[dg.DagsterInstance]:
    """The instance `mlops home` writes for PostgreSQL, live on a new database."""
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, fresh_postgres_url)
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(tmp_path / "home"))) as instance:
        yield instance


def _count_new_connections(instance: dg.DagsterInstance) -> list[int]:
    """A counter, in a one-item list, of the connections the instance's storages open to the server from now on."""
    opened = [0]

    def count(*_: object) -> None:
        opened[0] += 1

    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        sqlalchemy.event.listen(storage._engine, "connect", count)  # type: ignore[attr-defined]
    return opened


def test_the_postgres_storage_keeps_its_connections(postgres_instance: dg.DagsterInstance) -> None:
    """Dagster's own opens a connection (a server process, a password exchange) for every call: a run's hundreds of
    events, a daemon's every tick. Here one thread's hundred calls reuse what the storages keep."""
    instance = postgres_instance
    opened = _count_new_connections(instance)
    run = new_run(instance)
    for i in range(40):
        instance.report_engine_event(f"event {i}", run)
        instance.get_run_by_id(run.run_id)
        instance.get_dynamic_partitions("months")
    assert len(engine_event_messages(instance, run.run_id)) == 40
    # at least one connection opened, at most one per storage (three), however many calls
    assert opened[0] in (1, 2, 3), f"{opened[0]} connections opened for 121 calls"


def test_table_lookups_remember_a_found_table_and_ask_again_for_a_missing_one(
    postgres_instance: dg.DagsterInstance, fresh_postgres_url: str
) -> None:
    storage = postgres_instance.event_log_storage
    assert isinstance(storage, PooledPostgresEventLogStorage)
    statements: list[str] = []
    sqlalchemy.event.listen(storage._engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert storage.has_table("dynamic_partitions")
    asked = len(statements)
    assert asked >= 1, "the first lookup asks the server"
    for _ in range(20):
        assert storage.has_table("dynamic_partitions")
    assert len(statements) == asked, "a found table is asked for again"
    assert not storage.has_table("added_later")
    admin = sqlalchemy.create_engine(fresh_postgres_url, poolclass=sqlalchemy.NullPool)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE added_later (x INTEGER)"))  # as a migration would
    admin.dispose()
    assert storage.has_table("added_later"), "a missing table is asked for again, and found once it is there"
    # what asks in a run: the instance's dynamic partitions, read and written through the same storage
    postgres_instance.add_dynamic_partitions("months", ["2013-01"])
    assert postgres_instance.get_dynamic_partitions("months") == ["2013-01"]


def test_the_postgres_storage_reconnects_after_the_server_ends_its_connections(
    postgres_instance: dg.DagsterInstance, fresh_postgres_url: str
) -> None:
    """A PostgreSQL restart or an administrator ends the kept connections: the next call tests its connection
    first and opens a new one, instead of failing."""
    instance = postgres_instance
    run = new_run(instance)
    instance.report_engine_event("before", run)
    admin = sqlalchemy.create_engine(fresh_postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with admin.connect() as conn:
        ended = conn.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    admin.dispose()
    assert ended >= 1  # the storages' kept connections
    instance.report_engine_event("after", run)
    assert engine_event_messages(instance, run.run_id) == ["before", "after"]


def test_the_webservers_connection_survives_the_server_ending_it(
    postgres_instance: dg.DagsterInstance, fresh_postgres_url: str
) -> None:
    """The webserver swaps the storages' engines for its own (one kept connection, a statement timeout): after a
    PostgreSQL restart its first page failed on the dead connection. It is tested before use too now."""
    instance = postgres_instance
    instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=20)
    run = new_run(instance)
    assert instance.get_run_by_id(run.run_id) is not None  # the webserver's connection made and kept
    admin = sqlalchemy.create_engine(fresh_postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    with admin.connect() as conn:
        conn.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    admin.dispose()
    assert instance.get_run_by_id(run.run_id) is not None  # no error: a new connection
    with instance.run_storage._engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(sqlalchemy.text("SHOW statement_timeout")).scalar_one() == "5s"  # Dagster's setting kept


def test_a_forked_child_never_uses_the_parents_postgres_connections(postgres_instance: dg.DagsterInstance) -> None:
    instance = postgres_instance
    run = new_run(instance)
    instance.report_engine_event("parent, before the fork", run)
    opened = _count_new_connections(instance)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through its exit status)
        try:
            for _ in range(KEPT_CONNECTIONS + 2):
                instance.report_engine_event("child", run)
            instance.dispose()  # closes what the child opened: closing a parent's would end it for the parent too
            os._exit(0)
        except BaseException:  # noqa: BLE001 (the child must never return into pytest)
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's kept connection was neither used nor closed by the child: no reconnection here
    instance.report_engine_event("parent, after the fork", run)
    assert opened[0] == 0
    children = ["child"] * (KEPT_CONNECTIONS + 2)
    assert engine_event_messages(instance, run.run_id) == [
        "parent, before the fork",
        *children,
        "parent, after the fork",
    ]


class _Forwarder:
    """A TCP port forwarding each connection to ``target`` (PostgreSQL) that can go down for a while: every forwarded
    connection cut and new ones refused, then accepted again on the same port (a server restart, a failover)."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target, self.cut, self.lock = target, [], threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import threading

        while not self.stopped.is_set():
            if not self.up.wait(0.1):
                continue
            if self.listener is None:
                self.listener = socket.create_server(("127.0.0.1", self.port))  # listening again: the outage is over
            self.listener.settimeout(0.1)
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.cut += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_Forwarder._pipe, args=(a, b), daemon=True).start()
        if self.listener is not None:
            self.listener.close()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(1)  # the end of one direction passed on

    def outage(self, seconds: float) -> None:
        """Down now (connections cut, none accepted: the port refuses them), up again after ``seconds``."""
        import socket
        import threading

        self.up.clear()
        time.sleep(0.2)  # the serving loop has left accept()
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            for connection in self.cut:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.cut.clear()
        threading.Timer(seconds, self.up.set).start()


def test_a_new_connection_waits_through_a_postgresql_outage_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_postgres_url: str
) -> None:
    """A hunt stopped PostgreSQL for ~20 s under a running step: storing its next event failed once Dagster's own
    retries (five tries over ~11 s) ran out, and the run failed with it (real failures are not retried). Now the
    storages' engines wait for the server when they need a new connection (up to ``RECONNECT_PATIENCE_S``): a
    connection asked for during the outage is made once it answers, and the run's events go on, none lost."""
    url = sqlalchemy.engine.make_url(fresh_postgres_url)
    proxy = _Forwarder((url.host or "127.0.0.1", url.port or 5432))
    monkeypatch.setenv(DAGSTER_POSTGRES_URL_ENV, url.set(port=proxy.port).render_as_string(hide_password=False))
    try:
        with dg.DagsterInstance.from_config(str(prepare_dagster_home(tmp_path / "home"))) as instance:
            run = new_run(instance)
            instance.report_engine_event("before", run)
            proxy.outage(2.5)  # the kept connections cut, new ones refused for 2.5 s (tries at 0, 0.5, 1.5, 3.5 s)
            started = time.monotonic()
            # the engine itself, without Dagster's retries around it: it failed at once, refused
            with instance.event_log_storage._engine.connect() as conn:  # type: ignore[attr-defined]
                assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
            assert time.monotonic() - started >= 2.0
            instance.report_engine_event("after", run)
            assert engine_event_messages(instance, run.run_id) == ["before", "after"]
    finally:
        proxy.stopped.set()
        proxy.thread.join(timeout=5)


def test_an_instance_opened_while_postgresql_is_unreachable_waits_for_it(fresh_postgres_url: str) -> None:
    """A code server that opened the instance during a 40 s outage failed at once and served that load error for
    good (health check green, no sensor, the queue stuck). Now it waits; a lasting error is said at once."""
    from mlops_assets.postgres_storage import PooledPostgresStorage, connect_patiently

    url = sqlalchemy.engine.make_url(fresh_postgres_url)
    late = _Forwarder((url.host or "127.0.0.1", url.port or 5432))
    late.outage(3.0)  # PostgreSQL reachable only after an outage (restarting, the network's name service down)
    try:
        started = time.monotonic()
        storage = PooledPostgresStorage(url.set(port=late.port).render_as_string(hide_password=False))
        assert time.monotonic() - started >= 2.5  # it waited for the server, then opened
        assert storage.run_storage.get_runs_count() == 0
        for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
            part.dispose()
    finally:
        late.stopped.set()
        late.thread.join(timeout=5)  # its port closed: nothing listens there any more
    wrong = sqlalchemy.create_engine(url.set(database="no_such_database"), poolclass=sqlalchemy.pool.NullPool)
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="does not exist"):
        connect_patiently(wrong, patience_s=30)
    assert time.monotonic() - started < 5  # never retried: waiting does not make a database (nor mend a password)
    nobody = sqlalchemy.create_engine(url.set(port=late.port), poolclass=sqlalchemy.pool.NullPool)
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        connect_patiently(nobody, patience_s=2)  # the forwarder is gone: refused until the patience runs out
    assert 1.0 <= time.monotonic() - started < 10
