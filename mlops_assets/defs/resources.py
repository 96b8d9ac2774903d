"""Resources and settings: the one place where the environment is read (through ``core.settings``)."""

import os
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlops_assets.core.settings import Settings, load_settings


class PlatformStorage(dg.ConfigurableResource):
    """The platform's data directory (``$MLOPS_DATA_DIR``): landing zone, quarantined files, model registry, reports."""

    data_dir: str

    @property
    def landing_dir(self) -> Path:
        return Path(self.data_dir) / "landing"

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.data_dir) / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def registry_dir(self) -> Path:
        return Path(self.data_dir) / "registry"


def warehouse(settings: Settings, memory_limit: str = "4GB", threads: int = 2) -> DuckDBResource:
    """The DuckDB feature store, with a memory limit so a large rebuild spills to disk instead of exhausting RAM."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DuckDBResource(
        database=str(settings.warehouse_path),
        connection_config={"memory_limit": memory_limit, "threads": threads},
    )


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """All resources, from the given settings or from the environment (``MLOPS_DATA_DIR``)."""
    settings = settings or load_settings()
    return {"duckdb": warehouse(settings), "storage": PlatformStorage(data_dir=str(settings.data_dir))}


def persistent_instance() -> dg.DagsterInstance | None:
    """The Dagster instance under ``$DAGSTER_HOME``, or None when there is none (tests, ephemeral runs)."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    return dg.DagsterInstance.get()
