"""Dagster's SQLite instance storage, with its connections kept open: the embedded default, minus most of its overhead.

Dagster's SQLite storages (runs, event log, schedules) build a new SQLAlchemy engine and open a new SQLite connection
for every read and every write, then close it. Closing the last connection to a WAL database checkpoints it, so each
stored event costs ~3 ms on this machine, against ~0.6 ms on an open connection (measured: 300 events into one run's
log). A run stores hundreds (the year's ``training_pipeline``: ~350 events, 88 planned materializations, a data
version lookup and pool slot claim per step), and so does every test that executes a job.

:class:`PooledSqliteStorage` is Dagster's SQLite storage with the same files, schema and migrations, whose three
storages keep one engine (a pool of open connections) per database file and process. dagster.yaml names
:class:`PlatformInstance` as its ``instance_class``: Dagster's instance, whose default storage (when the file names no
``storage``, as dagster.yaml does not) is this one in the instance's own folder, exactly where Dagster's default
SQLite storage would be, whichever way the instance is opened (``$DAGSTER_HOME``, ``DagsterInstance.from_config(dir)``).
What changes:

* **Durability**: none. The files stay in WAL mode with SQLite's default ``synchronous=FULL``; a commit is on disk
  when it returns, as before, so a ``kill -9`` loses nothing that was committed.
* **Live event logs**: the webserver watches a run's ``<run_id>.db`` for changes to stream its events to the UI. A
  commit on a kept connection lands in ``<run_id>.db-wal`` (the main file changes only at checkpoints), so the watch
  here follows both files.
* **Open files**: a long-lived process (webserver, daemon) reads many runs' logs; it keeps the engines of the
  :data:`KEPT_RUN_SHARDS` most recently used run databases and disposes of older ones.
* **Forks**: an engine is never used across a fork; a child process opens its own.
* **Migrations**: a new database (a run's, or the instance's first) is made as Dagster makes it (its tables, WAL,
  stamped at the newest migration), and a stamped one opened as Dagster opens it, with the migration scripts read
  once per process: Dagster reads them twice per run and once per storage opened (~0.1 s of CPU for every process
  that opens the instance; ~0.13 s of the 0.2 s a new instance took). A new database is made under SQLite's write
  lock, so processes that open a new instance at once make it once (Dagster's own way could stamp it wrongly).
* **Batches**: Dagster sends a run's planned events and a partitioned step's materializations as batches, and
  :class:`PlatformInstance` has them stored as such (Dagster's ``$DAGSTER_EVENT_BATCH_SIZE``, off in Dagster by
  default): the same rows in two transactions per batch instead of two per event, about half the time per event.
  The year's ``training_pipeline`` stores 104 planned events before its first step: it starts that step a median
  0.37 s sooner (7 paired runs, -0.4 to +0.9 s); at 10x, ~750 of them: ~1.5 s sooner (3 paired runs).

PostgreSQL (``dagster.postgres.yaml``) has its own: ``mlops_assets/postgres_storage.py``. The classes extend Dagster's
own, from its private modules; the pin ``dagster<1.14`` (pyproject.toml) holds them, and
``mlops_assets_tests/test_sqlite_storage.py`` exercises every method overridden here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster import DagsterInstance
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, EVENT_TYPE_TO_PIPELINE_RUN_STATUS
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log as sqlite_event_log_module
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.runs.schema import RunStorageSqlMetadata
from dagster._core.storage.runs.sqlite import sqlite_run_storage as sqlite_run_storage_module
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.schema import ScheduleStorageSqlMetadata
from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage as sqlite_schedule_storage_module
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import get_alembic_config
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine, inspect
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

#: Run databases whose engines a process keeps open besides the index (the runs it is writing or reading now).
KEPT_RUN_SHARDS = 8
#: Seconds a connection waits for another process's write lock (Dagster's own SQLite busy timeout).
BUSY_TIMEOUT_S = 15
#: Events of a batch stored at once at most (:meth:`PlatformInstance._get_event_batch_size`); Dagster's batches end
#: sooner (a run's planned events, a partitioned step's months).
EVENT_BATCH_SIZE = 1000


class _Engines:
    """One engine per database file in this process, least recently used disposed beyond ``keep`` (``pinned`` never)."""

    def __init__(self, keep: int, pinned: tuple[str, ...] = ()) -> None:
        self._keep = keep
        self._pinned = set(pinned)
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def get(self, conn_string: str) -> Engine:
        """The engine of ``conn_string``, created on first use."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's connections are not ours to use or close
                for engine in self._engines.values():
                    engine.dispose(close=False)
                self._engines.clear()
                self._pid = os.getpid()
            engine = self._engines.get(conn_string)
            if engine is not None:
                self._engines.move_to_end(conn_string)
                return engine
            # no overflow limit: a burst of threads (the webserver's request pool) opens extra connections, closed
            # again when returned, instead of waiting for a kept one
            engine = create_engine(conn_string, connect_args={"timeout": BUSY_TIMEOUT_S}, max_overflow=-1)
            self._engines[conn_string] = engine
            unpinned = [key for key in self._engines if key not in self._pinned]
            for key in unpinned[: max(0, len(unpinned) - self._keep)]:
                self._engines.pop(key).dispose()
            return engine

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


#: Dagster's migration scripts by their location (the three SQLite storages share one), read once per process.
_SCRIPTS: dict[str, ScriptDirectory] = {}


def _migrations(storage_module_file: str) -> ScriptDirectory:
    """The migration scripts of one of Dagster's storages. Alembic reads every script to find the newest (~40 ms),
    and Dagster asks it each time a storage opens its database (three per instance opened, in every process) and
    twice for each database it makes; here they are read once per process."""
    config = get_alembic_config(storage_module_file)
    location = config.get_main_option("script_location") or storage_module_file
    if location not in _SCRIPTS:  # two threads may both read them: the same scripts
        _SCRIPTS[location] = ScriptDirectory.from_config(config)
    return _SCRIPTS[location]


def _state(conn: Connection, tables: tuple[str, ...]) -> str:
    """``stamped`` (by a migration, holding ``tables``), ``empty`` (no table), or ``other``."""
    present = set(inspect(conn).get_table_names())
    if MigrationContext.configure(conn).get_current_revision() is not None:
        return "stamped" if present.issuperset(tables) else "other"
    return "other" if present else "empty"


def _made_or_stamped(
    database: str | URL, metadata: Any, storage_module_file: str, tables: tuple[str, ...] = ()
) -> bool | None:
    """Whether the database is new, settled without Dagster's migration lookup: an empty database gets
    ``metadata``'s tables, the newest migration's stamp and WAL, as Dagster makes it (True); one stamped by a
    migration and holding ``tables`` is left as it is (False). None: Dagster's own way must see to it (tables but no
    stamp, a table missing, or an error).

    An empty database is looked at again and made under SQLite's write lock (``BEGIN IMMEDIATE``; SQLite's DDL is
    transactional), so processes opening a new instance at once (a webserver and a daemon) make it once: the others
    wait, then find it stamped. Without the lock one found the other's tables half made and unstamped, and Dagster
    stamped them as a database older than its migrations (two processes at once, 30 trials: 16 stamped as older, 11
    stamped twice, which no process can open again, 2 failed; Dagster's own storage: 21 failed, 9 stamped twice).
    A stamped database is only read, never locked."""
    engine = create_engine(
        database, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": BUSY_TIMEOUT_S}
    )
    try:
        with engine.connect() as conn:
            state = _state(conn, tables)
            if state == "empty":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    state = _state(conn, tables)  # another process may have made it meanwhile
                    if state == "empty":
                        metadata.create_all(conn)
                        MigrationContext.configure(conn).stamp(_migrations(storage_module_file), "head")
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
                if state == "empty":
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # outside a transaction, where SQLite allows it
                    return True
            return False if state == "stamped" else None
    except (sqlalchemy_errors.DatabaseError, sqlite3.DatabaseError):
        return None
    finally:
        engine.dispose()


class _OneKeptEngine:
    """Dagster's single-file SQLite storages (runs, schedules) on one kept engine, opened without Dagster's migration
    lookup where they can be (:func:`_made_or_stamped`); mixed in before the storage class, whose ``_conn_string`` it
    reads. A subclass names its database in ``_database``: its file, its tables' metadata, the Dagster module beside
    its migration scripts, and the tables a stamped database must hold (Dagster adds ``instance_info`` to a runs
    database made before that table existed)."""

    _conn_string: str
    _database: tuple[str, Any, str, tuple[str, ...]]

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines = _Engines(keep=1)
        super().__init__(conn_string, inst_data)  # type: ignore[call-arg]

    @classmethod
    def from_local(cls, base_dir: str, inst_data: ConfigurableClassData | None = None) -> Any:
        name, metadata, storage_module_file, tables = cls._database
        os.makedirs(base_dir, exist_ok=True)
        conn_string = create_db_conn_string(base_dir, name)
        new = _made_or_stamped(conn_string, metadata, storage_module_file, tables)
        if new is None:
            return super().from_local(base_dir, inst_data)  # type: ignore[misc]
        storage = cls(conn_string, inst_data)
        if new:  # a new database's data migrations are marked done, as Dagster marks them
            storage.migrate()  # type: ignore[attr-defined]
            storage.optimize()  # type: ignore[attr-defined]
        return storage

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        engine = self._engines.get(self._conn_string)
        with engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self._engines.dispose()
        super().dispose()  # type: ignore[misc]


class PooledSqliteRunStorage(_OneKeptEngine, SqliteRunStorage):
    """Dagster's SQLite run storage on one kept engine."""

    _database = ("runs", RunStorageSqlMetadata, sqlite_run_storage_module.__file__, ("instance_info",))


class PooledSqliteScheduleStorage(_OneKeptEngine, SqliteScheduleStorage):
    """Dagster's SQLite schedule (and sensor tick) storage on one kept engine."""

    _database = ("schedules", ScheduleStorageSqlMetadata, sqlite_schedule_storage_module.__file__, ())


class _WalAwareWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watch of one run's log, woken by its write-ahead log too (where kept connections commit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paths = {self._log_path, self._log_path + "-wal"}
        self._patterns = sorted(self._paths)  # what watchdog's PatternMatchingEventHandler matches paths against

    def on_modified(self, event: Any) -> None:
        if event.src_path in self._paths:
            self._process_log()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log on kept engines: the index and the most recently used run logs."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines = _Engines(keep=KEPT_RUN_SHARDS, pinned=(INDEX_SHARD_NAME,))
        self._tables_found: set[str] = set()
        super().__init__(base_dir, inst_data)

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """A new database (the index, or a run's): Dagster's tables, stamped with the newest migration. Dagster's own
        way reads every migration script to find the newest, then stamps through alembic's environment (reading them
        again), at the start of every run: ~50 ms. Here the scripts are read once per process and an already stamped
        database is left alone (:func:`_made_or_stamped`); one it cannot settle goes Dagster's way, with its
        retries."""
        if _made_or_stamped(engine.url, SqlEventLogStorageMetadata, sqlite_event_log_module.__file__) is None:
            super()._initdb(engine, for_index_shard)

    def has_table(self, table_name: str) -> bool:
        """Whether the index has the table. Dagster's asks SQLite on a new engine and connection each time, and asks
        before every dynamic partition lookup (several per step of a partitioned run) and every tagged
        materialization. A table once there stays (migrations add tables, a wipe deletes rows): a found one is
        remembered. Not under the storage's lock: Dagster asks while holding it (storing a materialization)."""
        if table_name not in self._tables_found:
            engine = self._engines.get(self.conn_string_for_shard(INDEX_SHARD_NAME))
            with engine.connect() as conn:
                if engine.dialect.has_table(conn, table_name):
                    self._tables_found.add(table_name)
        return table_name in self._tables_found

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store Dagster's batches as :meth:`store_event` stores each of their events, in fewer transactions: the
        events into the run's log in one, their asset events' copies and asset rows into the index in one, instead of
        two per event. Dagster sends two kinds (see :class:`PlatformInstance`): a run's planned materializations and
        checks (the year's ``training_pipeline``: 104 at its start) and a partitioned step's materializations (one per
        month). The check and run-status events are copied into the index one by one afterwards, by Dagster's own
        code (it takes the storage's lock itself); events of more than one run go one by one."""
        if len({event.run_id for event in events}) != 1:
            for event in events:
                self.store_event(event)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        typed = [
            (event, statement, event.dagster_event_type) for event, statement in zip(events, statements, strict=True)
        ]
        assets = [(event, statement) for event, statement, kind in typed if kind in ASSET_EVENTS]
        if assets:
            with self.index_transaction() as conn:
                for event, statement in assets:
                    with db_result(conn, statement) as result:
                        event_id = result.inserted_primary_key[0]
                    if event_id is None:
                        raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                    self._store_asset_event_tags(conn, [event], [event_id])
                    self._store_asset_event(conn, event, event_id)
        for event, statement, kind in typed:
            if kind in ASSET_CHECK_EVENTS:
                with self.index_connection() as conn, db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                self.store_asset_check_event(event, event_id)
            if kind in EVENT_TYPE_TO_PIPELINE_RUN_STATUS:
                with self.index_connection() as conn:
                    conn.execute(statement)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:  # as Dagster's: one statement at a time per process (its event watcher is a thread)
            engine = self._engines.get(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        from watchdog.observers import Observer

        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        watchdog = _WalAwareWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, self._obs.schedule(watchdog, self._base_dir, recursive=True))

    def dispose(self) -> None:
        self._engines.dispose()
        super().dispose()


class PooledSqliteStorage(DagsterSqliteStorage):
    """The instance's storage (runs, event logs, schedules) in Dagster's SQLite files under ``base_dir``, on kept
    connections: :class:`PlatformInstance`'s default, or named in a ``dagster.yaml``::

        storage:
          custom:
            module: mlops_assets.sqlite_storage
            class: PooledSqliteStorage
            config:
              base_dir: /path/to/dagster_home
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self.base_dir = base_dir
        self._run_storage = PooledSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = PooledSqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: Any
    ) -> PooledSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class PlatformInstance(DagsterInstance):
    """Dagster's instance, unchanged but for its default storage: :class:`PooledSqliteStorage` in the instance's own
    folder (Dagster's default is its SQLite storage there). Named in dagster.yaml::

        instance_class:
          module: mlops_assets.sqlite_storage
          class: PlatformInstance

    A ``storage`` in the file (dagster.postgres.yaml's PostgreSQL) wins over the default, as with Dagster's."""

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}  # no settings of its own beyond Dagster's

    def _get_event_batch_size(self) -> int:
        """Dagster sends some events as batches (a run's planned events, a partitioned step's materializations) but
        stores them as batches only when ``$DAGSTER_EVENT_BATCH_SIZE`` (Dagster's setting, default 0: off) is above 0;
        a batch is stored when it ends or reaches this size. On here by default: the SQLite storage stores a batch in
        two transactions instead of two per event (:meth:`PooledSqliteEventLogStorage.store_event_batch`), Dagster's
        PostgreSQL storage a batch of materializations in one statement. ``DAGSTER_EVENT_BATCH_SIZE=0`` turns it off."""
        return int(os.environ.get("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE))

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(
            __name__, PooledSqliteStorage.__name__, yaml.dump({"base_dir": base_dir}, default_flow_style=False)
        )
        return defaults
