"""The serving log: every online prediction of a model, appended to Parquet under
``$MLOPS_DATA_DIR/predictions/<model>/online/`` (each model logs into its own folder, ``Settings.model(name)``).

One row per request and model version that scored it (long format), so champion, challenger (A/B) and shadow scores
sit in one table: ``request_id``, ``logged_at`` (UTC), ``model`` (the registered model's name), ``entity_key`` (the
entity's key as the response names it, the request's key fields joined by ``|``), the feature table's key columns,
``prediction_time``, ``variant`` (champion / challenger / shadow), ``model_version``, ``score``, ``served`` (whether
this score was the answer), ``latency_ms`` (request received -> answer ready, feature lookup included), ``status``
(``ok`` / ``error``) and ``error``. The monitoring assets join it to the labels by the key columns.

Rows are buffered and written in batches (by count or age) and on close, each batch as a new file written under a
temporary name and renamed, so a reader never sees half a file and a crash loses at most the unflushed batch; a
SIGTERM closes the log first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

ONLINE_FOLDER = "online"
logger = logging.getLogger(__name__)
VARIANTS = ("champion", "challenger", "shadow")


def log_schema(key_columns: Sequence[str], key_types: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The columns of a model's log, for its feature table's key columns (and their types in the online store)."""
    return {
        "request_id": pl.String(),
        "logged_at": pl.Datetime("us"),
        "model": pl.String(),
        "entity_key": pl.String(),
        **{c: key_types[c] for c in key_columns},
        "prediction_time": pl.Datetime("us"),
        "variant": pl.String(),
        "model_version": pl.String(),
        "score": pl.Float64(),
        "served": pl.Boolean(),
        "latency_ms": pl.Float64(),
        "status": pl.String(),
        "error": pl.String(),
    }


class PredictionLog:
    """A thread-safe buffered writer into ``<root>/online/<day>/`` (``root``: the model's ``predictions_dir``).
    ``append`` never blocks on disk; a background thread writes a batch when it reaches ``flush_rows`` rows or is
    ``flush_seconds`` old; ``close`` writes what is left."""

    def __init__(
        self, root: Path, schema: dict[str, pl.DataType], flush_rows: int = 2000, flush_seconds: float = 2.0
    ) -> None:
        self.folder = root / ONLINE_FOLDER
        self.schema = schema
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._rows: list[dict[str, object]] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._sequence = 0
        self.files_written = 0
        self.rows_written = 0
        self.failed_flushes = 0
        #: Why the last write failed while rows wait in memory (None once a write succeeds): ``/health`` says it.
        self.last_error: str | None = None
        #: Rows that did not fit the schema, kept as ``*.unwritable.jsonl`` beside the log.
        self.rows_set_aside = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, rows: Sequence[dict[str, object]]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the prediction log is closed")
            if not self._rows:
                self._oldest = time.monotonic()
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write the buffered rows now; return how many."""
        with self._lock:
            rows, self._rows, self._oldest = self._rows, [], None
            self._sequence += 1
            sequence = self._sequence
        if not rows:
            return 0
        try:
            written = self._write(rows, sequence)
        except BaseException:
            with self._lock:  # put them back in front, in order: nothing is lost by a failed write
                self._rows[:0] = rows
                self._oldest = self._oldest or time.monotonic()
            raise
        self.files_written += 1 if written else 0
        self.rows_written += written
        self.last_error = None
        return written

    @property
    def pending(self) -> int:
        """Rows appended and not written yet."""
        with self._lock:
            return len(self._rows)

    def _write(self, rows: list[dict[str, object]], sequence: int) -> int:
        """Write ``rows`` as one Parquet file; return how many went into it (those that do not fit the schema are set
        aside, see :meth:`_set_aside`)."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        folder = self.folder / day
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{sequence:06d}"
        try:
            frame = pl.DataFrame(rows, schema=self.schema, orient="row")
        except Exception as error:  # noqa: BLE001 - a row the schema cannot hold: retrying would never succeed
            # find it (them) row by row: only those are set aside, the others are written as usual
            fitting, unfit = [], []
            for row in rows:
                try:
                    pl.DataFrame([row], schema=self.schema, orient="row")
                    fitting.append(row)
                except Exception:  # noqa: BLE001 - the same failure, row by row
                    unfit.append(row)
            self._set_aside(unfit, folder / f"{name}.unwritable.jsonl", error)
            if not fitting:
                return 0
            rows, frame = fitting, pl.DataFrame(fitting, schema=self.schema, orient="row")
        temporary = folder / f".{name}.parquet.{uuid.uuid4().hex}.tmp"
        try:
            frame.write_parquet(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, folder / f"{name}.parquet")
        finally:
            temporary.unlink(missing_ok=True)  # after a failed write (a full disk): no half file left behind
        return len(rows)

    def _set_aside(
        self, rows: list[dict[str, object]], path: Path, error: Exception, why: str = "do not fit its schema"
    ) -> None:
        """Keep rows that cannot go into the log as JSON lines beside it (found again, never retried)."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, default=str) + "\n" for row in rows)
            handle.flush()
            os.fsync(handle.fileno())
        self.rows_set_aside += len(rows)
        logger.error("%d prediction log row(s) %s (%s): kept in %s", len(rows), why, error, path)

    def _due(self) -> bool:
        with self._lock:
            return bool(self._rows) and (
                len(self._rows) >= self.flush_rows
                or (self._oldest is not None and time.monotonic() - self._oldest >= self.flush_seconds)
            )

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=min(self.flush_seconds, 0.5))
            self._wake.clear()
            if self._due():
                try:
                    self.flush()
                except Exception as error:  # noqa: BLE001 - e.g. disk full: keep the rows and the thread, retry
                    self.failed_flushes += 1
                    self.last_error = f"{type(error).__name__}: {error}"
                    logger.error("prediction log flush failed (%s); rows kept in memory, retrying", error)

    def close(self) -> int:
        """Stop the writer thread and write everything still buffered; return the rows written by this call. When the
        log cannot be written then, the rows go to a JSON-lines file beside it; failing that, the count of rows lost
        is logged (never a traceback that ends the shutdown)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        try:
            return self.flush()
        except Exception as error:  # noqa: BLE001 - the last chance to keep them: set aside, or say what is lost
            with self._lock:
                rows, self._rows = self._rows, []
            path = self.folder / f"unwritten-{time.time_ns()}-{os.getpid()}.jsonl"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._set_aside(rows, path, error, why="could not be written at shutdown")
            except OSError as second:
                logger.error(
                    "%d prediction log row(s) could not be written at shutdown (%s), nor set aside in %s (%s): lost",
                    len(rows),
                    error,
                    path,
                    second,
                )
            return 0


def read_log(root: Path) -> pl.DataFrame:
    """Every row logged under ``root`` (a model's ``predictions_dir``), or an empty frame when nothing has been."""
    files = sorted((root / ONLINE_FOLDER).glob("*/*.parquet"))
    if not files:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
