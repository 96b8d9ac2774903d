"""Shared fixtures: small real slices of nycflights13 landed and loaded into a DuckDB file under ``tmp_path``.

Nothing is mocked: the feed writes real parquet files, the stages write a real DuckDB file, Dagster runs on an
ephemeral instance. Nothing is written outside ``tmp_path``.
"""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from mlops_assets.core.ingest import ingest_raw, validate_partition
from mlops_assets.core.landing import find_landed
from mlops_assets.core.settings import Settings, load_settings
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months

#: Every 10th flight: a real, still representative slice (about 2,700 flights a month).
EVERY = 10


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the repo's data/ or a real Dagster home."""
    monkeypatch.setenv("MLOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster_home"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "data")


def load_month(conn: duckdb.DuckDBPyConnection, settings: Settings, month: str | None, tables: list[str]) -> None:
    """Ingest and validate the landed files of ``tables`` for ``month`` (reference tables when ``month`` is None)."""
    for name in tables:
        spec = NYCFLIGHTS13.table(name)
        landed = find_landed(settings.landing_dir, name, month if spec.monthly else None)
        assert landed is not None, f"{name} {month} has not landed"
        ingest_raw(
            conn, spec, landed, settings.landing_dir, settings.data_dir / "quarantine", "test-run", datetime(2026, 1, 1)
        )
        validate_partition(conn, spec, month if spec.monthly else None, "test-run", datetime(2026, 1, 1))


REFERENCE = ["airlines", "airports", "planes"]
MONTHLY = ["flights", "weather"]


@pytest.fixture
def warehouse(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB feature store in ``tmp_path`` with the reference tables loaded (months are loaded by each test)."""
    replay_months(settings.landing_dir, [], every=EVERY)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(settings.warehouse_path))
    load_month(conn, settings, None, REFERENCE)
    yield conn
    conn.close()
