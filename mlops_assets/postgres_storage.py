"""Dagster's PostgreSQL instance storage, with its connections kept open between calls.

Dagster's PostgreSQL storages (runs, event log, schedules) use SQLAlchemy's ``NullPool`` in every process but the
webserver: each read and each write opens a new connection and closes it. A PostgreSQL connection is a new server
process and, with password authentication (SCRAM-SHA-256, PostgreSQL's default), a key derivation on both sides. In
the daemon of the PostgreSQL deployment test, two thirds of its busy samples were in ``psycopg2.connect`` (py-spy), and
a run worker opens one connection per event it stores. Dagster tracks this upstream (dagster issue #20325, PRs
#33791 and #33936).

:class:`PooledPostgresStorage` is Dagster's PostgreSQL storage, same tables, migrations and settings, whose three
storages keep up to :data:`KEPT_CONNECTIONS` connections each per process:

* a burst of threads (the daemon's) opens extra connections, closed again when returned, rather than waiting;
* a kept connection is tested before use (``pool_pre_ping``): after a PostgreSQL restart the next call reconnects;
* a forked child never uses or closes its parent's connections (``os.register_at_fork``);
* the webserver's engines (Dagster's ``optimize_for_webserver``: one connection, a statement timeout) test theirs
  before use too.

The event log also remembers the tables it found, instead of asking the server again at every lookup.

dagster.postgres.yaml names it as the instance's ``storage``. The classes extend ``dagster_postgres``'s, whose engine
attribute they replace; the pin ``dagster<1.14`` (pyproject.toml) holds them, and
``mlops_assets_tests/deploy/test_postgres_instance.py`` tests them on a real server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy
from dagster._core.storage.config import PostgresStorageConfig
from dagster._serdes import ConfigurableClassData
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
    set_pg_statement_timeout,
)

#: Connections each storage keeps open per process (three storages: up to three times this many per process; the
#: compose stack's daemon, code server, run worker and webserver stay far below PostgreSQL's 100 connections).
KEPT_CONNECTIONS = 3


#: Every kept-connections engine of this process: a forked child forgets their connections (the parent's sockets).
_ENGINES: weakref.WeakSet[sqlalchemy.engine.Engine] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)  # the parent's connections: forget them, never close them from here


# one hook for the process (not one per engine: an engine is made per instance opened, many in a long-lived process)
os.register_at_fork(after_in_child=_forget_parent_connections)


logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a process opening the instance waits for PostgreSQL to answer (a server restarting, the container
#: network's name service down for a while) before it gives up. A code server that gave up at once kept serving its
#: load error for good, its health check green: no sensor, no recovery, the run queue stuck (a deployment hunt saw a
#: 40 s name-service outage at a stack's restart do it).
CONNECT_PATIENCE_S = 180.0
#: Errors that waiting does not mend: said at once (a wrong password, a database or role that does not exist).
_LASTING = ("authentication failed", "does not exist", "no pg_hba.conf entry")


def _patiently(connect: Callable[[], T], unreachable: type[Exception], patience_s: float) -> T:
    """``connect()``, tried again (0.5 s, doubling to 10 s) while it raises ``unreachable``, for up to ``patience_s``
    seconds; a lasting error (a wrong password, a missing database) is raised at once."""
    deadline, wait = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return connect()
        except unreachable as error:
            cause = getattr(error, "orig", None)  # SQLAlchemy's wrapper: the driver's own message
            said = (str(cause if cause is not None else error).strip().splitlines() or [type(error).__name__])[0]
            if any(lasting in said for lasting in _LASTING) or time.monotonic() + wait > deadline:
                raise
            logger.warning("PostgreSQL does not answer (%s): trying again in %.1f s", said, wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def connect_patiently(engine: sqlalchemy.engine.Engine, patience_s: float = CONNECT_PATIENCE_S) -> Any:
    """``engine.connect()``, waiting for PostgreSQL while it cannot be reached (:func:`_patiently`)."""
    return _patiently(engine.connect, sqlalchemy.exc.OperationalError, patience_s)


#: The PostgreSQL advisory lock the processes of one instance take while they create or check its tables.
SCHEMA_LOCK_KEY = 0x6D6C6F7073  # "mlops"


@contextlib.contextmanager
def _schema_lock(postgres_url: str, token_provider: Any = None) -> Iterator[None]:
    """One process at a time creates the instance's tables. Two processes starting on an empty database (a code
    server and a one-off `mlops replay`, say) both created them, and the second failed on an enum type the first had
    just made (``DuplicateObject``: Dagster retries a duplicate table, not a duplicate type)."""
    engine = create_pg_engine(postgres_url, token_provider=token_provider, poolclass=sqlalchemy.pool.NullPool)
    try:
        with connect_patiently(engine) as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


#: How long a process that has the instance open waits for PostgreSQL to answer again when it needs a new connection
#: (a kept one found dead, a burst of threads). Dagster's own retries give up after ~11 s (five, waiting 0.2 s up to
#: 6.2 s): a 20 s outage (a server restart, a failover) failed the step that was storing an event, and with it the run
#: (retries of real failures are off). The run now pauses until PostgreSQL answers and goes on.
RECONNECT_PATIENCE_S = 120.0


def _patient_connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """SQLAlchemy's ``do_connect``: the driver's connection, waiting for PostgreSQL while it cannot be reached, for up
    to :data:`RECONNECT_PATIENCE_S` (:func:`_patiently`)."""
    dbapi = dialect.loaded_dbapi
    return _patiently(lambda: dbapi.connect(*cargs, **cparams), dbapi.OperationalError, RECONNECT_PATIENCE_S)


def kept_connections_engine(postgres_url: str, token_provider: Any = None) -> sqlalchemy.engine.Engine:
    """An engine whose pool keeps :data:`KEPT_CONNECTIONS` open connections, with Dagster's settings (autocommit),
    that waits for PostgreSQL when a new connection cannot be made (:func:`_patient_connect`)."""
    engine = create_pg_engine(
        postgres_url,
        token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=KEPT_CONNECTIONS,
        max_overflow=-1,
        pool_pre_ping=True,
    )
    # after Dagster's own hook (a cloud token in the password, when configured): it sets the parameters we connect with
    sqlalchemy.event.listen(engine, "do_connect", _patient_connect)
    _ENGINES.add(engine)
    return engine


def _settings(config_value: PostgresStorageConfig) -> dict[str, Any]:
    """The storage's arguments from its dagster.yaml settings, as ``dagster_postgres`` reads them."""
    return {
        "postgres_url": pg_url_from_config(config_value),
        "should_autocreate_tables": config_value.get("should_autocreate_tables", True),
        "token_provider": get_token_provider_from_config(config_value),
    }


class _KeptConnections:
    """Mixed in before a ``dagster_postgres`` storage: once it is set up (tables checked or created on a throw-away
    connection), its engine is replaced by one that keeps its connections."""

    postgres_url: str
    _engine: sqlalchemy.engine.Engine
    _token_provider: Any

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)  # type: ignore[call-arg]
        self._engine.dispose()
        self._engine = kept_connections_engine(self.postgres_url, self._token_provider)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> Any:
        return cls(inst_data=inst_data, **_settings(config_value))

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        """Dagster's engine for the webserver (one kept connection, its statement timeout), whose connection is
        tested before use: Dagster's own answered the first request after a PostgreSQL restart with an error (its
        kept connection dead). It does not wait for an unreachable server: a page should fail, not hang."""
        kwargs: dict[str, Any] = {
            "isolation_level": "AUTOCOMMIT",
            "pool_size": 1,
            "pool_recycle": pool_recycle,
            "max_overflow": max_overflow,
            "pool_pre_ping": True,
        }
        options = self._engine.url.query.get("options")
        if options:
            kwargs["connect_args"] = {"options": options}
        engine = create_pg_engine(self.postgres_url, self._token_provider, **kwargs)
        sqlalchemy.event.listen(
            engine, "connect", lambda connection, _: set_pg_statement_timeout(connection, statement_timeout)
        )
        _ENGINES.add(engine)
        self._engine.dispose()
        self._engine = engine


class PooledPostgresRunStorage(_KeptConnections, PostgresRunStorage):
    """Dagster's PostgreSQL run storage on kept connections."""


class PooledPostgresEventLogStorage(_KeptConnections, PostgresEventLogStorage):
    """Dagster's PostgreSQL event log on kept connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tables_found: set[str] = set()  # before Dagster's setup, which may already ask
        super().__init__(*args, **kwargs)

    def has_table(self, table_name: str) -> bool:
        """Whether the event log has the table. Dagster's asks the server every time, and asks before every dynamic
        partition lookup and every tagged materialization: a round trip each, over the network to a managed server.
        A table once there stays (migrations add tables, a wipe deletes rows): a found one is remembered, a missing
        one asked again (as :class:`~mlops_assets.sqlite_storage.PooledSqliteEventLogStorage` does)."""
        if table_name not in self._tables_found and super().has_table(table_name):
            self._tables_found.add(table_name)
        return table_name in self._tables_found


class PooledPostgresScheduleStorage(_KeptConnections, PostgresScheduleStorage):
    """Dagster's PostgreSQL schedule (and sensor tick) storage on kept connections."""


class PooledPostgresStorage(DagsterPostgresStorage):
    """The instance's storage (runs, event logs, schedules) in Dagster's PostgreSQL tables, on kept connections. Named
    in dagster.postgres.yaml::

        storage:
          custom:
            module: mlops_assets.postgres_storage
            class: PooledPostgresStorage
            config:
              postgres_url:
                env: MLOPS_DAGSTER_POSTGRES_URL
    """

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        with _schema_lock(postgres_url, token_provider) if should_autocreate_tables else contextlib.nullcontext():
            self._run_storage = PooledPostgresRunStorage(postgres_url, should_autocreate_tables, None, token_provider)
            self._event_log_storage = PooledPostgresEventLogStorage(
                postgres_url, should_autocreate_tables, None, token_provider
            )
            self._schedule_storage = PooledPostgresScheduleStorage(
                postgres_url, should_autocreate_tables, None, token_provider
            )
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> PooledPostgresStorage:
        return cls(inst_data=inst_data, **_settings(config_value))
