"""The warehouse resource: each step opens the DuckDB file for its own work and lets it go, so another process can
open it as soon as the run is over, and a step that fails leaves nothing half-written.

(Holding one connection for a whole run was tried: 5% faster at 1x, but DuckDB's cache of the early steps then stayed
resident through training, and the 10x run went from 2.18 to 2.49 GiB against a 2.5 GiB budget.)"""

import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from mlops_assets.core.settings import Settings
from mlops_assets.core.store import transaction
from mlops_assets.defs.resources import Warehouse, warehouse
from mlops_assets_tests.conftest import instance_for_test

OPEN_IN_ANOTHER_PROCESS = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def _opens_elsewhere(settings: Settings) -> bool:
    """Whether another process can open the file for writing now (DuckDB allows one writing process per file)."""
    opened = subprocess.run(
        [sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(settings.warehouse_path)], capture_output=True, check=False
    )
    return opened.returncode == 0


def _definitions(settings: Settings, seen: dict[str, object]) -> dg.Definitions:
    @dg.asset
    def first(duckdb: Warehouse) -> None:
        with duckdb.get_connection() as conn, transaction(conn):
            conn.execute("CREATE TABLE numbers AS SELECT range AS n FROM range(3)")

    @dg.asset(deps=[first])
    def second(duckdb: Warehouse) -> None:
        with duckdb.get_connection() as conn:
            seen["rows"] = conn.execute("SELECT count(*) FROM numbers").fetchall()[0][0]

    @dg.asset(deps=[second])
    def failing(duckdb: Warehouse) -> None:
        with duckdb.get_connection() as conn, transaction(conn):
            conn.execute("INSERT INTO numbers VALUES (99)")
            raise RuntimeError("a step that fails half-way")

    return dg.Definitions(assets=[first, second, failing], resources={"duckdb": warehouse(settings)})


def test_a_run_lets_the_file_go_at_the_end_and_a_failed_step_leaves_nothing(settings: Settings) -> None:
    seen: dict[str, object] = {}
    defs = _definitions(settings, seen)
    with instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not result.success  # `failing` failed, after `first` and `second` succeeded
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["first", "second"]
    assert seen["rows"] == 3
    assert _opens_elsewhere(settings), "the run ended but the DuckDB file is still held"
    with duckdb.connect(str(settings.warehouse_path)) as conn:  # the failed step's insert was rolled back
        assert conn.execute("SELECT count(*) FROM numbers").fetchall()[0][0] == 3


def test_each_use_opens_and_closes_the_file(settings: Settings) -> None:
    """A step (or a check invoked directly) gets a connection of its own, closed after use."""
    resource = warehouse(settings)
    with resource.get_connection() as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS one")
    assert _opens_elsewhere(settings)
    with pytest.raises(duckdb.ConnectionException):
        conn.execute("SELECT 1")


def test_a_failed_block_closes_its_connection_while_it_is_still_referenced(settings: Settings) -> None:
    """dagster_duckdb closes its connection only when the block ends normally; a failed step's connection, kept
    alive by the error's traceback, held the file (this test's ``conn`` keeps it alive the same way)."""
    resource = warehouse(settings)
    with pytest.raises(RuntimeError, match="fails half-way"), resource.get_connection() as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS one")
        raise RuntimeError("a step that fails half-way")
    assert conn is not None and _opens_elsewhere(settings)
