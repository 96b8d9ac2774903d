"""The embedded instance storage (``mlops_assets.sqlite_storage``, named by dagster.yaml) on real SQLite files: what one
process commits, every other process reads at once, a watcher of the run's log hears it (the UI's live log), a
``kill -9`` loses nothing committed, a fork never shares a connection, a long-lived process does not keep every
run's database open, a table lookup remembers only what it found, a new instance's and a run's new database are
Dagster's own, and Dagster's batches of events are stored as their events one by one would be.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.schema import RunStorageSqlMetadata
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage

from mlops_assets.core.settings import prepare_dagster_home
from mlops_assets.sqlite_storage import (
    KEPT_RUN_SHARDS,
    PooledSqliteEventLogStorage,
    PooledSqliteStorage,
    _made_or_stamped,
)
from mlops_assets_tests.conftest import engine_event_messages, new_run

#: Stores ``count`` engine events for a run in the instance at $DAGSTER_HOME, then exits as asked: ``kill-9`` at once,
#: ``exit`` when its stdin closes (its connections stay open until then, as a run worker's do during a run).
WRITER = """
import os, signal, sys
import dagster as dg
run_id, count, exit_how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
instance = dg.DagsterInstance.get()
run = instance.get_run_by_id(run_id)
for i in range(count):
    instance.report_engine_event(f"event {i} from {os.getpid()}", run)
if exit_how == "kill-9":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
instance.dispose()
"""


@pytest.fixture
def instance() -> dg.DagsterInstance:
    """The instance at $DAGSTER_HOME (set under tmp_path by conftest) with the repo's dagster.yaml."""
    prepare_dagster_home(Path(os.environ["DAGSTER_HOME"]), postgres=False)
    with dg.DagsterInstance.get() as loaded:
        assert isinstance(loaded.event_log_storage, PooledSqliteEventLogStorage)
        yield loaded


def _writer(run_id: str, count: int, exit_how: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", WRITER, run_id, str(count), exit_how]
    return subprocess.Popen(command, stdin=subprocess.PIPE, text=True)


def test_another_process_reads_each_commit_and_a_watcher_of_the_run_hears_it(instance: dg.DagsterInstance) -> None:
    run = new_run(instance)
    instance.report_engine_event("from the test", run)  # this process's connections are open before the writer's
    heard: list[str] = []
    all_heard = threading.Event()

    def on_event(entry: dg.EventLogEntry, _cursor: str) -> None:
        heard.append(entry.dagster_event.message if entry.dagster_event else "")
        if sum("from" in m for m in heard) >= 6:
            all_heard.set()

    instance.event_log_storage.watch(run.run_id, None, on_event)
    writer = _writer(run.run_id, 5, "exit")
    try:
        # the UI's live log, while the writer still runs: woken by the write-ahead log its kept connections commit to
        assert all_heard.wait(30), heard
        assert len(engine_event_messages(instance, run.run_id)) == 6
    finally:
        instance.event_log_storage.end_watch(run.run_id, on_event)
        writer.communicate("", timeout=30)
    assert writer.returncode == 0


def test_a_kill_9_loses_nothing_committed(instance: dg.DagsterInstance) -> None:
    run = new_run(instance)
    writer = _writer(run.run_id, 40, "kill-9")
    assert writer.wait(60) == -9
    messages = engine_event_messages(instance, run.run_id)
    assert len(messages) == 40 and messages[-1].startswith("event 39 ")
    instance.report_engine_event("after the kill", run)  # the killed process left no lock behind
    assert len(engine_event_messages(instance, run.run_id)) == 41


def test_a_forked_child_opens_its_own_connections(instance: dg.DagsterInstance) -> None:
    run = new_run(instance)
    instance.report_engine_event("parent, before the fork", run)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through its exit status)
        try:
            instance.report_engine_event("child", run)
            os._exit(0)
        except BaseException:  # noqa: BLE001 (the child must never return into pytest)
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    instance.report_engine_event("parent, after the fork", run)  # its connections were not closed by the child
    assert engine_event_messages(instance, run.run_id) == ["parent, before the fork", "child", "parent, after the fork"]


def _open_run_databases(instance: dg.DagsterInstance) -> set[str]:
    runs_dir = Path(instance.event_log_storage.path_for_shard("index")).parent  # type: ignore[attr-defined]
    opened = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.parent == runs_dir and target.suffix == ".db" and target.stem != "index":
            opened.add(target.stem)
    return opened


def test_a_long_lived_process_keeps_only_its_recent_run_logs_open(instance: dg.DagsterInstance) -> None:
    assert Path("/proc/self/fd").is_dir(), "the open files are counted through /proc (Linux, as the platform)"
    runs = [new_run(instance) for _ in range(KEPT_RUN_SHARDS + 6)]
    for run in runs:  # what a webserver does as runs are looked at
        instance.report_engine_event("looked at", run)
        assert len(engine_event_messages(instance, run.run_id)) == 1
    opened = _open_run_databases(instance)
    assert opened <= {r.run_id for r in runs[-KEPT_RUN_SHARDS:]}, opened
    assert runs[-1].run_id in opened
    assert engine_event_messages(instance, runs[0].run_id) == ["looked at"]  # a closed one opens again when needed


def test_table_lookups_remember_a_found_table_and_ask_again_for_a_missing_one(instance: dg.DagsterInstance) -> None:
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    assert storage.has_table("dynamic_partitions")
    assert not storage.has_table("added_later")
    with sqlalchemy.create_engine(storage.conn_string_for_shard("index")).begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE added_later (x INTEGER)"))  # as a migration would
    assert storage.has_table("added_later")

    # what asks: a step of a dynamically partitioned asset, whose materialization is stored under the storage's lock
    months = dg.DynamicPartitionsDefinition(name="months")

    @dg.asset(partitions_def=months)
    def monthly() -> None:
        """A month's materialization: its partition tag is stored with it."""

    instance.add_dynamic_partitions("months", ["2013-01", "2013-02"])
    for month in ("2013-01", "2013-02"):
        assert dg.materialize([monthly], instance=instance, partition_key=month).success
    assert instance.has_dynamic_partition("months", "2013-02")
    assert not instance.has_dynamic_partition("months", "2013-03")
    records = instance.fetch_materializations(dg.AssetKey("monthly"), limit=10).records
    assert sorted(r.partition_key for r in records) == ["2013-01", "2013-02"]


def test_a_new_run_database_is_made_as_dagster_makes_it(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    run = new_run(instance)
    instance.report_engine_event("the run's first event", run)  # its database is made here
    dagsters = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'dagsters.db'}")
    SqliteEventLogStorage._initdb(storage, dagsters)  # Dagster's own way, on another file

    def described(path: str) -> tuple[object, ...]:
        with sqlite3.connect(path) as db:
            return (
                db.execute("PRAGMA journal_mode").fetchall(),
                db.execute("SELECT version_num FROM alembic_version").fetchall(),
                db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall(),
            )

    ours, theirs = described(storage.path_for_shard(run.run_id)), described(str(tmp_path / "dagsters.db"))
    assert ours == theirs
    assert ours[0] == [("wal",)] and len(ours[1]) == 1 and len(ours[2]) > 10
    assert engine_event_messages(instance, run.run_id) == ["the run's first event"]


def _databases(home: Path) -> dict[str, tuple[object, ...]]:
    """Every SQLite file of an instance's storage, by path under ``home``: what Dagster makes and later reads of it."""
    described = {}
    for path in sorted(home.rglob("*.db")):
        with sqlite3.connect(path) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            described[str(path.relative_to(home))] = (
                db.execute("PRAGMA journal_mode").fetchall(),
                db.execute("SELECT version_num FROM alembic_version").fetchall(),
                db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall(),
                # the data migrations a new database is marked as having done (Dagster would run them again)
                sorted(db.execute("SELECT name FROM secondary_indexes").fetchall())
                if "secondary_indexes" in tables
                else None,
            )
    return described


def test_a_new_instance_is_made_as_dagster_makes_it_and_opened_again_without_migrating(tmp_path: Path) -> None:
    """The runs, schedules and event log index databases of a new instance are Dagster's own to the byte of their
    schema, stamp, journal mode and data migrations, though the migration scripts are read once per process; an
    instance opened again is used as it is; a database with tables but no stamp is left to Dagster, which stamps it."""
    DagsterSqliteStorage.from_local(str(tmp_path / "dagsters")).dispose()
    PooledSqliteStorage.from_local(str(tmp_path / "ours")).dispose()
    ours, theirs = _databases(tmp_path / "ours"), _databases(tmp_path / "dagsters")
    assert ours == theirs
    assert set(ours) == {"history/runs.db", "history/runs/index.db", "schedules/schedules.db"}
    assert all(d[0] == [("wal",)] and len(d[1]) == 1 and d[3] for d in ours.values())

    runs = tmp_path / "ours" / "history" / "runs.db"
    url, migrations_beside = f"sqlite:///{runs}", sqlite_run_storage.__file__
    assert _made_or_stamped(url, RunStorageSqlMetadata, migrations_beside, ("instance_info",)) is False
    assert _made_or_stamped(url, RunStorageSqlMetadata, migrations_beside, ("no_such_table",)) is None
    with sqlite3.connect(runs) as db:
        db.execute("DELETE FROM alembic_version")  # tables but no stamp: as SQLAlchemy 2.0 once left them
    reopened = PooledSqliteStorage.from_local(str(tmp_path / "ours"))
    try:
        assert reopened.run_storage.get_runs() == []
    finally:
        reopened.dispose()
    with sqlite3.connect(runs) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() != []  # Dagster stamped it


def _make_instance_storage(root: str, start: Any, outcome: Any) -> None:
    start.wait()
    try:
        PooledSqliteStorage.from_local(root).dispose()
        outcome.put("made")
    except Exception as error:  # noqa: BLE001 - reported to the test, which names it
        outcome.put(repr(error))


def test_processes_making_a_new_instance_at_once_make_it_once(tmp_path: Path) -> None:
    """Three processes open the same new instance at the same moment (a webserver and a daemon started together):
    each succeeds, and each database carries one stamp, the newest migration's, as Dagster's own new instance does.
    Made without SQLite's write lock, one process found another's tables half made and Dagster stamped them as an
    old database, or twice (which no process could open again)."""
    DagsterSqliteStorage.from_local(str(tmp_path / "dagsters")).dispose()
    newest = {db: described[1] for db, described in _databases(tmp_path / "dagsters").items()}
    fork = multiprocessing.get_context("fork")  # no new interpreter: the processes start within milliseconds
    for trial in range(3):
        root = tmp_path / f"together-{trial}"
        start, outcome = fork.Barrier(3), fork.Queue()
        processes = [fork.Process(target=_make_instance_storage, args=(str(root), start, outcome)) for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        assert [outcome.get(timeout=10) for _ in processes] == ["made"] * 3
        assert {db: described[1] for db, described in _databases(root).items()} == newest, trial


def test_batches_are_stored_as_their_events_one_by_one_would_be(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = instance.event_log_storage
    assert isinstance(storage, PooledSqliteEventLogStorage)
    batches: list[list[str]] = []
    store_batch = storage.store_event_batch

    def recording(events: list[EventLogEntry]) -> None:
        batches.append([e.dagster_event_type.value for e in events])  # type: ignore[union-attr]
        store_batch(events)

    monkeypatch.setattr(storage, "store_event_batch", recording)
    months = dg.StaticPartitionsDefinition(["2013-01", "2013-02", "2013-03"])

    check_key = dg.AssetCheckKey(dg.AssetKey("monthly"), "monthly_is_complete")
    planned_checks: list[str] = []  # the check's execution as the asset's step sees it, before the check runs

    @dg.asset(partitions_def=months)
    def monthly(context) -> dg.MaterializeResult:  # type: ignore[no-untyped-def]  # a string annotation fails here
        """Every month of the run's range at once, as the platform's monthly assets build them."""
        history = context.instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)
        planned_checks.extend(c.status.value for c in history if c.run_id == context.run.run_id)
        return dg.MaterializeResult(metadata={"months": len(context.partition_keys)}, data_version=dg.DataVersion("v1"))

    @dg.asset_check(asset=monthly)
    def monthly_is_complete() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    whole_range = {"dagster/asset_partition_range_start": "2013-01", "dagster/asset_partition_range_end": "2013-03"}

    def stored(batch_size: str) -> tuple[object, ...]:
        """Run the range with ``DAGSTER_EVENT_BATCH_SIZE``; what the run's log and the index hold of it."""
        monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
        planned_checks.clear()
        result = dg.materialize([monthly, monthly_is_complete], instance=instance, tags=whole_range)
        assert result.success
        run_id = result.run_id
        key = dg.AssetKey("monthly")
        materialized = instance.fetch_materializations(key, limit=10).records
        planned = [
            instance.get_latest_planned_materialization_info(key, month) for month in months.get_partition_keys()
        ]
        in_index = (
            sorted(
                (
                    r.partition_key,
                    r.asset_materialization.metadata["months"].value,  # type: ignore[union-attr]
                    storage.get_event_tags_for_asset(key, filter_event_id=r.storage_id),  # the indexed tags
                )
                for r in materialized
                if r.run_id == run_id
            ),
            [p is not None and p.run_id == run_id for p in planned],
        )
        checks = [
            (c.status.value, c.evaluation is not None)
            for c in storage.get_asset_check_execution_history(check_key, limit=10)
            if c.run_id == run_id
        ]
        entry = instance.get_asset_records([dg.AssetKey("monthly")])[0].asset_entry
        return (
            list(planned_checks),
            [e.dagster_event_type for e in instance.all_logs(run_id) if e.is_dagster_event],
            in_index,
            checks,
            entry.last_materialization_record.run_id == run_id,  # type: ignore[union-attr]
        )

    batched = stored("1000")
    assert sorted(map(sorted, batches)) == [
        ["ASSET_CHECK_EVALUATION_PLANNED", *["ASSET_MATERIALIZATION_PLANNED"] * 3],  # the run's, one per month
        ["ASSET_MATERIALIZATION"] * 3,  # the step's months
    ]
    batches.clear()
    one_by_one = stored("0")
    assert batches == []
    assert batched == one_by_one
    assert batched[0] == ["PLANNED"]
    tags = [{"dagster/data_version": "v1"}]
    assert batched[2] == ([(m, 3, tags) for m in months.get_partition_keys()], [True, True, True])
    assert batched[3] == [("SUCCEEDED", True)] and batched[4] is True
