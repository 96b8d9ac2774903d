"""One DuckDB connection reused by the consecutive steps of a run, and let go as soon as nobody uses it.

Opening the warehouse costs ~15 ms (DuckDB starts a database instance and reads the catalog) and closing it after a
write ~30 ms (the WAL is checkpointed into the file): ~45 ms per step, ~1 s of the year's ``training_pipeline`` and
~0.5 s of a monthly refresh. A run's steps follow one another within milliseconds, so the connection a step releases
is kept for the next one, and closed once it has been idle for ``idle_s``:

* another process (a second run, ``mlops status``) can open the file ``idle_s`` after this process stops using it.
  A step of another run that was given the ``duckdb`` pool slot meanwhile finds the file held and retries
  (dagster_duckdb retries with backoff from 0.1 s), so runs still take turns step by step;
* DuckDB's cache of the file is freed between a read and a long computation (a model's training), not held through it;
* a use that fails closes the connection at once (its transaction rolled back), as a step's own connection did;
* a use while the kept connection is in use (a nested block) gets a connection of its own, closed after it.

The connection is only ever used by one thread at a time; a timer thread closes it when idle. A forked child forgets
its parent's connection (one fork hook for the process, as ``postgres_storage`` does for its engines).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb

#: How long a released connection waits for the next step: steps of one run follow within tens of milliseconds.
IDLE_S = 0.25

#: Every kept connection of this process, closed (checkpointed) at exit if still open.
_ALL: weakref.WeakSet[KeptConnection] = weakref.WeakSet()
#: Connections inherited from a parent process: never closed here (closing checkpoints the parent's file).
_INHERITED: list[duckdb.DuckDBPyConnection] = []


class KeptConnection:
    """A connection made by ``connect`` on first use, handed to one block at a time, closed after ``idle_s`` idle."""

    def __init__(self, connect: Callable[[], duckdb.DuckDBPyConnection], idle_s: float | None = None) -> None:
        self._connect, self._idle_s = connect, IDLE_S if idle_s is None else idle_s  # IDLE_S read now: tests set it
        self._state = threading.Condition()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._in_use = False
        self._close_on_release = False  # close() was called while a block used the connection
        self._released_at = 0.0
        self._closer: threading.Thread | None = None
        _ALL.add(self)

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The kept connection (opened if needed), or a connection of its own when the kept one is in use."""
        with self._state:
            shared = not self._in_use
            if shared:
                self._in_use = True
        if not shared:
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()
            return
        succeeded = False
        try:
            if self._conn is None:  # outside the lock: opening may wait for another process to let the file go
                self._conn = self._connect()
            yield self._conn
            succeeded = True
        finally:
            with self._state:
                self._in_use = False
                if not succeeded or self._close_on_release:
                    self._close_on_release = False
                    self._close()
                else:
                    self._released_at = time.monotonic()
                    self._start_closer()
                    self._state.notify_all()

    def close(self) -> None:
        """Close the connection now (the run ended; a block using it closes it when it ends); a later use opens a new
        one."""
        with self._state:
            if self._in_use:
                self._close_on_release = True
            else:
                self._close()
            self._state.notify_all()

    @property
    def is_open(self) -> bool:
        """Whether the kept connection is open (in use or waiting for the next use)."""
        with self._state:
            return self._conn is not None

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _forget_parent(self) -> None:
        """In a forked child: the parent's connection, timer thread and lock (perhaps held by a parent's thread at the
        fork) are not ours; start afresh."""
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._state = threading.Condition()
        self._conn, self._in_use, self._close_on_release, self._closer = None, False, False, None

    def _start_closer(self) -> None:
        if self._closer is None or not self._closer.is_alive():
            self._closer = threading.Thread(target=self._close_when_idle, name="duckdb-idle-close", daemon=True)
            self._closer.start()

    def _close_when_idle(self) -> None:
        with self._state:
            while self._conn is not None:
                if self._in_use:
                    self._state.wait()
                    continue
                left = self._released_at + self._idle_s - time.monotonic()
                if left <= 0:
                    self._close()
                    return
                self._state.wait(left)


def _forget_parent_connections() -> None:
    for kept in list(_ALL):
        kept._forget_parent()


os.register_at_fork(after_in_child=_forget_parent_connections)


@atexit.register
def _close_all() -> None:
    for kept in list(_ALL):
        kept.close()
