"""The DuckDB feature store: table names, DDL from contracts, and idempotent partition writes.

Identifiers cannot be bound as SQL parameters, so they are checked against a strict pattern before they are quoted;
every value goes through bound parameters.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import duckdb
import polars as pl

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DUCKDB_TYPES: dict[str, str] = {
    "Int64": "BIGINT",
    "Int32": "INTEGER",
    "Float64": "DOUBLE",
    "Float32": "FLOAT",
    "String": "VARCHAR",
    "Boolean": "BOOLEAN",
    "Datetime(time_unit='us', time_zone=None)": "TIMESTAMP",
}

#: Lineage columns carried by every raw, validated and quarantine row.
LINEAGE_COLUMNS: dict[str, str] = {
    "_month": "VARCHAR",  # partition month, NULL for a reference table
    "_source_file": "VARCHAR",  # landed file, relative to the landing folder
    "_sha256": "VARCHAR",  # checksum of the landed bytes
    "_row": "BIGINT",  # position of the row in the landed file
    "_run_id": "VARCHAR",  # Dagster run that wrote the row
    "_written_at": "TIMESTAMP",
}

BATCH_LOG = ("quarantine", "batches")
BATCH_LOG_COLUMNS: dict[str, str] = {
    "table_name": "VARCHAR",
    "month": "VARCHAR",
    "stage": "VARCHAR",  # raw (structure) or validated (rows)
    "source_file": "VARCHAR",
    "sha256": "VARCHAR",
    "accepted": "BOOLEAN",
    "rule": "VARCHAR",
    "column_name": "VARCHAR",
    "message": "VARCHAR",
    "rows_landed": "BIGINT",
    "rows_valid": "BIGINT",
    "rows_quarantined": "BIGINT",
    "quarantined_file": "VARCHAR",
    "run_id": "VARCHAR",
    "checked_at": "TIMESTAMP",
}


#: Rows per row group of the warehouse's tables (DuckDB's default: 122,880, ~4 months of flights). A month appended to
#: default groups went through the WAL and was compressed at the checkpoint, at a cost that grew with where the month
#: fell in the table's last, partly filled group: a month's insert and checkpoint took 0.11-0.58 s a table (flights,
#: features). In groups of 16,384 rows a month's full groups are compressed as they are inserted and only the rest
#: waits for the checkpoint: 0.06-0.11 s a table, whatever the month. Reads are as fast, the file a little smaller.
ROW_GROUP_ROWS = 16_384
#: The warehouse's catalog in a connection (``duckdb.connect("warehouse.duckdb")`` named it the same).
WAREHOUSE_CATALOG = "warehouse"


def connect_warehouse(
    path: str | os.PathLike[str], config: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """A read-write connection to the warehouse file, with :data:`ROW_GROUP_ROWS` rows per row group.

    DuckDB takes the row-group size when a database is attached, not from the file, so the file is attached to an
    in-memory database named after its path: ``duckdb.connect`` hands every connection of this process to that name
    the same database (as it does for a file's path), so the run's concurrent steps share one database and its
    transactions, and the file is checkpointed and let go when the last connection closes. Another process holding
    the file raises ``duckdb.IOException``, as ``duckdb.connect(<path>)`` does. What DuckDB spills goes beside the
    file (``<path>.tmp``, as for a file's own database; an in-memory one would spill into the working directory)."""
    resolved = os.path.realpath(path)  # one name per file, however the path is spelled
    name = ":memory:warehouse_" + hashlib.sha256(resolved.encode()).hexdigest()[:16]
    conn = duckdb.connect(name, config={"temp_directory": f"{resolved}.tmp", **(config or {})})
    try:
        conn.execute(f"ATTACH IF NOT EXISTS ? AS {WAREHOUSE_CATALOG} (ROW_GROUP_SIZE {ROW_GROUP_ROWS})", [resolved])
        conn.execute(f"USE {WAREHOUSE_CATALOG}")
    except BaseException:
        conn.close()
        raise
    return conn


def qualified(schema: str, table: str) -> str:
    """``("raw", "flights")`` -> ``"raw"."flights"``, refusing anything that is not a plain identifier."""
    return f"{quote_identifier(schema)}.{quote_identifier(table)}"


def quote_identifier(name: str) -> str:
    """A column or table name, checked and double-quoted for SQL."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a valid SQL identifier")
    return f'"{name}"'


def duckdb_type(dtype: type[pl.DataType] | pl.DataType) -> str:
    name = str(dtype)
    if name not in _DUCKDB_TYPES:
        raise ValueError(f"no DuckDB type for polars dtype {name}")
    return _DUCKDB_TYPES[name]


def ensure_schema(conn: duckdb.DuckDBPyConnection, schema: str) -> None:
    """Create the schema when it is missing. Asked first: DuckDB's ``CREATE SCHEMA IF NOT EXISTS`` of a schema that
    exists still waits to write the catalog, behind the commits of the run's other steps (0.26-0.49 s in a monthly
    refresh), where a read of the catalog does not wait."""
    (found,) = fetch_row(
        conn,
        "SELECT count(*) FROM information_schema.schemata WHERE catalog_name = current_database() AND schema_name = ?",
        [schema],
    )
    if not found:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")


def ensure_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str, columns: Mapping[str, str]) -> str:
    """Create the schema and table when missing; return the qualified name. Inside a :func:`transaction`, a table is
    made sure of once (a step writing 120 months asked ~1,200 times: ~1 s of DDL)."""
    name = qualified(schema, table)
    ensured = _ENSURED.get(id(conn))
    if ensured is not None and name in ensured:
        return name
    if not table_exists(conn, schema, table):
        ensure_schema(conn, schema)
        ddl = ", ".join(f'"{column}" {sql_type}' for column, sql_type in columns.items())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({ddl})")
    if ensured is not None:
        ensured.add(name)
    return name


def ensure_table_like(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pl.DataFrame, add_columns: bool = False
) -> str:
    """Make ``schema.table`` have exactly the columns and types of ``frame``: create it, or recreate it when its shape
    differs (the caller then rebuilds what it needs). Returns the qualified name.

    ``add_columns``: for a table whose rows may gain fields (the live table's ``requests``), columns the frame has
    and the table lacks are added instead (its rows read null in them), whatever order either lists them in (rows
    are inserted by name); a column the frame lacks, or one whose type changed, still recreates it."""
    name = qualified(schema, table)
    ensure_schema(conn, schema)
    conn.register("_shape", frame.head(0).to_arrow())
    try:
        wanted = [(d[0], d[1]) for d in conn.execute("SELECT * FROM _shape LIMIT 0").description]
        if table_exists(conn, schema, table):
            current = [(d[0], d[1]) for d in conn.execute(f"SELECT * FROM {name} LIMIT 0").description]
            if current == wanted:
                return name
            if add_columns and set(current) <= set(wanted):
                known = {column for column, _ in current}
                sql_types = dict(conn.execute("SELECT column_name, column_type FROM (DESCRIBE _shape)").fetchall())
                for column in (column for column, _ in wanted if column not in known):
                    conn.execute(f'ALTER TABLE {name} ADD COLUMN "{column}" {sql_types[column]}')
                return name
            conn.execute(f"DROP TABLE {name}")
            _ENSURED.get(id(conn), set()).discard(name)
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM _shape")
    finally:
        conn.unregister("_shape")
    return name


def fetch_row(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
    """The single row of a query, with its result fully consumed (DuckDB 2 refuses new work on a connection while a
    result is partly fetched)."""
    rows = conn.execute(sql, list(params or [])).fetchall()
    if len(rows) != 1:
        raise ValueError(f"expected one row, got {len(rows)}: {sql}")
    return tuple(rows[0])


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    (found,) = fetch_row(
        conn,
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() AND table_schema = ? "
        "AND table_name = ?",
        [schema, table],
    )
    return bool(found)


_OPEN_TRANSACTIONS: dict[int, int] = {}
#: Tables :func:`ensure_table` made sure of in the connection's open transaction (dropped when it ends: a rollback may
#: undo a CREATE).
_ENSURED: dict[int, set[str]] = {}


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One DuckDB transaction; nested uses join the outermost one, so a step can commit all its months at once
    (each commit costs tens of milliseconds) while each write stays atomic on its own elsewhere."""
    key = id(conn)
    depth = _OPEN_TRANSACTIONS.get(key, 0)
    if depth:
        _OPEN_TRANSACTIONS[key] = depth + 1
        try:
            yield
        finally:
            _OPEN_TRANSACTIONS[key] = depth
        return
    conn.execute("BEGIN TRANSACTION")
    _OPEN_TRANSACTIONS[key], _ENSURED[key] = 1, set()
    try:
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            # a COMMIT that fails (a conflict, a full disk) has usually ended the transaction already: its error is
            # the one to report, not the "no transaction is active" of a ROLLBACK after it
            with suppress(duckdb.Error):
                conn.execute("ROLLBACK")
            raise
    finally:
        _OPEN_TRANSACTIONS.pop(key, None)
        _ENSURED.pop(key, None)


def replace_where(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    frame: pl.DataFrame | None,
    where: str,
    params: Sequence[Any],
) -> None:
    """Delete the rows matching ``where`` and insert ``frame`` in one transaction, so a rerun replaces, never duplicates.

    ``where`` is SQL with ``?`` placeholders for ``params``; it is written by this package, never by a user.
    """
    with transaction(conn):
        conn.execute(f"DELETE FROM {name} WHERE {where}", list(params))
        if frame is not None and frame.height:
            _insert(conn, name, frame)


def _insert(conn: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    # Through a relation over the rows, not ``conn.register``: DuckDB keeps a registered object alive until the
    # transaction ends, unregistered or not, so each insert of a many-insert transaction (a feature table's ten years,
    # raw's 120 months) held its Arrow copy of the rows to the end: +0.3 GiB for ten inserts of a year's features.
    # An INSERT given to ``query`` runs at the call; the relation and its rows go when it does.
    conn.from_arrow(frame.to_arrow()).query("_incoming", f"INSERT INTO {name} BY NAME SELECT * FROM _incoming")


class PartitionWriter:
    """:func:`replace_where` for many partitions of one table, the inserts gathered until ``batch_rows`` rows are
    pending. Made by :func:`partition_writer`, which holds it in one transaction and writes the rest at the end.

    Each DELETE runs at once; the rows follow in batches. DuckDB writes an insert's full row groups straight into the
    table's storage, and the rest into its WAL first and into the table again at the checkpoint: with DuckDB's default
    groups, 120 monthly inserts of a 31-column table took 6.2 s, one insert of the same rows 3.6 s. Nobody reads the
    table before the transaction ends; ``batch_rows`` bounds the rows held in memory.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, name: str, batch_rows: int) -> None:
        self.conn, self.name, self.batch_rows = conn, name, batch_rows
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0

    def replace(self, frame: pl.DataFrame | None, where: str, params: Sequence[Any]) -> None:
        """Delete the rows matching ``where`` now; insert ``frame`` with the next batch."""
        self.conn.execute(f"DELETE FROM {self.name} WHERE {where}", list(params))
        if frame is not None and frame.height:
            self._pending.append(frame)
            self._pending_rows += frame.height
            if self._pending_rows >= self.batch_rows:
                self.flush()

    def flush(self) -> None:
        """Insert the pending rows."""
        if self._pending:
            rows = pl.concat(self._pending, how="diagonal_relaxed") if len(self._pending) > 1 else self._pending[0]
            self._pending, self._pending_rows = [], 0
            _insert(self.conn, self.name, rows)


@contextmanager
def partition_writer(
    conn: duckdb.DuckDBPyConnection, name: str, batch_rows: int = 400_000
) -> Iterator[PartitionWriter]:
    """A :class:`PartitionWriter` for ``name`` in one transaction (joining the caller's), flushed at the end; an error
    rolls all of it back."""
    with transaction(conn):
        writer = PartitionWriter(conn, name, batch_rows)
        yield writer
        writer.flush()


def query_frame(
    conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Run a query with bound parameters and return the result as a polars frame."""
    return conn.sql(sql, params=params).pl()


def append_row(conn: duckdb.DuckDBPyConnection, name: str, row: Mapping[str, Any]) -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    placeholders = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {name} ({columns}) VALUES ({placeholders})", list(row.values()))


def ensure_batch_log(conn: duckdb.DuckDBPyConnection) -> str:
    return ensure_table(conn, *BATCH_LOG, BATCH_LOG_COLUMNS)


#: The schemas of the data every feed goes through; each model adds one of its own (its name).
DATA_SCHEMAS: tuple[str, ...] = ("raw", "validated", "quarantine", "features")


def prepare_catalog(conn: duckdb.DuckDBPyConnection, schemas: Sequence[str]) -> None:
    """Create ``schemas`` and the tables that several steps write (the batch log), each committed at once.

    A run's independent steps write the warehouse concurrently, each in its own transaction. DuckDB lets concurrent
    transactions write different rows and create different tables, but two that both create the same new schema or
    table conflict ("Catalog write-write conflict"): what more than one step might create is created here first."""
    if _OPEN_TRANSACTIONS.get(id(conn)):
        raise RuntimeError("prepare_catalog commits as it goes: call it outside a transaction")
    for schema in schemas:
        ensure_schema(conn, schema)
    ensure_batch_log(conn)
