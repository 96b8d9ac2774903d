"""The warehouse's write helpers on a real DuckDB file: partitions replaced many at a time, never duplicated; the
warehouse's connections (row groups of ``ROW_GROUP_ROWS``, one database per process)."""

from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mlops_assets.core.store import (
    ROW_GROUP_ROWS,
    connect_warehouse,
    ensure_table,
    ensure_table_like,
    partition_writer,
    replace_where,
    table_exists,
    transaction,
)


def _month(month: str, rows: int, value: int) -> pl.DataFrame:
    return pl.DataFrame({"_month": [month] * rows, "_row": list(range(rows)), "value": [value] * rows})


def _table(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    return conn.execute("SELECT _month, count(*), min(value), max(value) FROM t GROUP BY 1 ORDER BY 1").fetchall()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    connection.execute("CREATE TABLE t (_month VARCHAR, _row BIGINT, value BIGINT)")
    for month in ("2013-01", "2013-02", "2013-03"):
        replace_where(connection, "t", _month(month, 5, 0), "_month = ?", [month])
    yield connection
    connection.close()


def test_the_writer_replaces_each_partition_as_replace_where_does(conn: duckdb.DuckDBPyConnection) -> None:
    # batches of 7 rows: the first two months (10 rows) are written with the second, the rest at the end
    with partition_writer(conn, "t", batch_rows=7) as writer:
        writer.replace(_month("2013-02", 4, 1), "_month = ?", ["2013-02"])
        writer.replace(_month("2013-03", 6, 1), "_month = ?", ["2013-03"])
        # 10 rows pending reached 7: written (seen inside the transaction); 2013-01 untouched so far
        assert _table(conn) == [("2013-01", 5, 0, 0), ("2013-02", 4, 1, 1), ("2013-03", 6, 1, 1)]
        writer.replace(_month("2013-04", 3, 1), "_month = ?", ["2013-04"])
        assert ("2013-04", 3, 1, 1) not in _table(conn)  # pending until the end
        writer.replace(None, "_month = ?", ["2013-01"])  # a month emptied
    assert _table(conn) == [("2013-02", 4, 1, 1), ("2013-03", 6, 1, 1), ("2013-04", 3, 1, 1)]


def test_an_error_in_the_middle_rolls_every_partition_back(conn: duckdb.DuckDBPyConnection) -> None:
    before = _table(conn)
    failing = pytest.raises(RuntimeError, match="the third month is unreadable")
    with failing, partition_writer(conn, "t", batch_rows=3) as writer:
        writer.replace(_month("2013-01", 4, 2), "_month = ?", ["2013-01"])  # flushed at once
        writer.replace(_month("2013-02", 2, 2), "_month = ?", ["2013-02"])  # pending
        raise RuntimeError("the third month is unreadable")
    assert _table(conn) == before


def test_a_commit_that_fails_reports_its_own_error_and_leaves_the_connection_usable() -> None:
    db = duckdb.connect()
    db.execute("CREATE TABLE k (id INTEGER PRIMARY KEY)")
    ours, other = db.cursor(), db.cursor()
    other.execute("BEGIN TRANSACTION")
    # the other transaction commits the same key first: ours fails at its COMMIT (a constraint conflict)
    with pytest.raises(duckdb.Error, match="(?i)duplicate key|constraint") as raised, transaction(ours):
        ours.execute("INSERT INTO k VALUES (5)")
        other.execute("INSERT INTO k VALUES (5)")
        other.execute("COMMIT")
    assert "no transaction is active" not in str(raised.value)
    with transaction(ours):  # no transaction left open on it
        ours.execute("INSERT INTO k VALUES (6)")
    assert db.execute("SELECT id FROM k ORDER BY id").fetchall() == [(5,), (6,)]


def test_a_table_made_sure_of_in_a_rolled_back_transaction_is_made_again(conn: duckdb.DuckDBPyConnection) -> None:
    columns = {"_month": "VARCHAR"}
    with pytest.raises(RuntimeError), transaction(conn):
        ensure_table(conn, "quarantine", "t", columns)
        ensure_table(conn, "quarantine", "t", columns)  # once per transaction: the second asks nothing
        raise RuntimeError("the step failed")
    assert not table_exists(conn, "quarantine", "t")  # the rollback undid the CREATE
    with transaction(conn):
        ensure_table(conn, "quarantine", "t", columns)
    assert table_exists(conn, "quarantine", "t")


def _row_groups(conn: duckdb.DuckDBPyConnection, table: str) -> list[int]:
    """The rows of each row group of ``table``, in order."""
    return [
        rows
        for _, rows in conn.execute(
            "SELECT row_group_id, max(count) FROM pragma_storage_info(?) GROUP BY 1 ORDER BY 1", [table]
        ).fetchall()
    ]


def test_the_warehouse_is_written_in_row_groups_of_row_group_rows(tmp_path: Path) -> None:
    """Every writer connects through ``connect_warehouse``, whose groups are small enough that a month's rows are
    written compressed at its insert: DuckDB would put 40,000 rows in one default group (122,880 rows)."""
    path = tmp_path / "warehouse.duckdb"
    months = 40_000
    with connect_warehouse(path) as conn:
        conn.execute("CREATE TABLE t AS SELECT range AS i FROM range(?)", [months])
        first = _row_groups(conn, "t")
        # what DuckDB spills stays beside the file, as for duckdb.connect(<path>), not in the working directory
        assert conn.execute("SELECT current_setting('temp_directory')").fetchall() == [(f"{path.resolve()}.tmp",)]
    with connect_warehouse(path) as conn:  # the size is the connection's, not the file's: set again on reopening
        conn.execute("INSERT INTO t SELECT range FROM range(?)", [months])
        both = _row_groups(conn, "t")
    assert sum(first) == months and len(first) >= months // ROW_GROUP_ROWS and max(first) <= ROW_GROUP_ROWS
    assert sum(both) == 2 * months and max(both) <= ROW_GROUP_ROWS
    with duckdb.connect(str(path), read_only=True) as reader:  # checkpointed and let go when the last one closed
        assert reader.execute("SELECT count(*), count(DISTINCT i) FROM t").fetchall() == [(2 * months, months)]


def test_connections_of_one_process_share_the_warehouse(tmp_path: Path) -> None:
    """Two connections of a process are one database, as two ``duckdb.connect(<path>)`` were: concurrent steps of a
    run see each other's commits, and a second attach of the file never fails, however its path is spelled."""
    path = tmp_path / "warehouse.duckdb"
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    first = connect_warehouse(path)
    second = connect_warehouse(tmp_path / "link" / "warehouse.duckdb")
    try:
        first.execute("CREATE TABLE t AS SELECT 1 AS one")
        assert second.execute("SELECT one FROM t").fetchall() == [(1,)]
        second.execute("BEGIN TRANSACTION")
        second.execute("INSERT INTO t VALUES (2)")
        assert first.execute("SELECT count(*) FROM t").fetchall() == [(1,)]  # not committed yet
        second.execute("COMMIT")
        assert first.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
        assert table_exists(first, "main", "t") and not table_exists(first, "main", "missing")
    finally:
        first.close()
        second.close()


def test_a_table_whose_rows_gained_a_column_keeps_its_history_whatever_the_order(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    """A record that gained a field (the live table's ``requests``): with ``add_columns`` the stored table gains the
    column and keeps its earlier months (null in it), also when the frame lists the columns in another order; a
    frame that changed a column's type still recreates the table."""
    old = pl.DataFrame({"variant": ["champion"], "error_rate": [0.0], "_month": ["2013-04"]})
    name = ensure_table_like(conn, "m", "live", old)
    replace_where(conn, name, old, "_month = ?", ["2013-04"])
    new = pl.DataFrame({"requests": [2], "_month": ["2013-05"], "variant": ["champion"], "error_rate": [0.5]})
    assert ensure_table_like(conn, "m", "live", new, add_columns=True) == name
    columns = [d[0] for d in conn.execute(f"SELECT * FROM {name} LIMIT 0").description]
    assert columns == ["variant", "error_rate", "_month", "requests"]
    replace_where(conn, name, new, "_month = ?", ["2013-05"])
    assert conn.execute(f"SELECT _month, requests FROM {name} ORDER BY 1").fetchall() == [
        ("2013-04", None),
        ("2013-05", 2),
    ]
    ensure_table_like(conn, "m", "live", new, add_columns=True)  # nothing more to add
    assert [d[0] for d in conn.execute(f"SELECT * FROM {name} LIMIT 0").description] == columns
    assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (2,)
    retyped = new.with_columns(pl.col("error_rate").cast(pl.Utf8))
    ensure_table_like(conn, "m", "live", retyped, add_columns=True)
    assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,)  # recreated, as before
