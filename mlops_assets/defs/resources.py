"""Resources and settings: the one place where the environment is read (through ``core.settings``)."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog
from mlops_assets.core.drift import DriftThresholds
from mlops_assets.core.kept_connection import KeptConnection
from mlops_assets.core.policy import RollbackPolicy
from mlops_assets.core.registry import Registry
from mlops_assets.core.settings import ModelPaths, Settings, load_settings
from mlops_assets.core.store import DATA_SCHEMAS, connect_warehouse, prepare_catalog
from mlops_assets.recovery import on_run_start


class PlatformStorage(dg.ConfigurableResource):
    """The platform's data directory (``$MLOPS_DATA_DIR``): landing zone, quarantined files, and each model's
    registry, online store, reports and serving log. The paths themselves are defined once, in ``core.settings``."""

    data_dir: str

    @property
    def settings(self) -> Settings:
        return Settings.for_data_dir(Path(self.data_dir))

    @property
    def landing_dir(self) -> Path:
        return self.settings.landing_dir

    @property
    def quarantine_dir(self) -> Path:
        return self.settings.quarantine_dir

    def model(self, name: str) -> ModelPaths:
        """One model's registry, online store, reports and serving log folders."""
        return self.settings.model(name)

    def registry(self, name: str) -> Registry:
        """One model's registry (its own folder: versions, aliases, events, evaluations)."""
        return Registry(self.model(name).registry_dir)


class MonitoringPolicy(dg.ConfigurableResource):
    """When a month counts as drifted, when live quality asks for a retrain (``$MLOPS_DRIFT_SHARE``,
    ``$MLOPS_RETRAIN_AUC_MARGIN``) and when it takes the champion out (rollback)."""

    drift_share: float = 0.3
    numeric_threshold: float = 0.1
    categorical_threshold: float = 0.1
    score_threshold: float = 0.1
    # fewer rows than this in a month: compared and reported, not judged drifted
    drift_min_rows: int = DriftThresholds.min_rows
    retrain_auc_margin: float = 0.02
    # the rollback rule's own defaults (core.policy.RollbackPolicy), settable here
    rollback_auc_drop: float = RollbackPolicy.max_auc_drop
    rollback_max_error_rate: float = RollbackPolicy.max_error_rate
    rollback_min_requests: int = RollbackPolicy.min_requests

    def rollback(self) -> RollbackPolicy:
        return RollbackPolicy(
            max_auc_drop=self.rollback_auc_drop,
            max_error_rate=self.rollback_max_error_rate,
            min_requests=self.rollback_min_requests,
        )

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(
            numeric=self.numeric_threshold,
            categorical=self.categorical_threshold,
            scores=self.score_threshold,
            drift_share=self.drift_share,
            min_rows=self.drift_min_rows,
        )


class TrainingPolicy(dg.ConfigurableResource):
    """What a training set spans: the newest ``window_months`` built months, the test month included
    (``$MLOPS_TRAINING_WINDOW_MONTHS``; 0 = every built month). The window keeps a retrain's cost flat as months
    land; a run can override it (the training set's ``window_months`` config)."""

    window_months: int = 12


class Warehouse(DuckDBResource):
    """The DuckDB feature store. Every step that opens it needs this resource, so its setup is where a run starts:
    there the run records its process and recovers runs whose process died (marked failed, their ``duckdb`` pool slot
    freed; ``mlops_assets.recovery``), before its first step asks for a slot, and keeps watching while it runs.

    Consecutive steps share one connection, closed a quarter of a second after the last use and at the run's end
    (``core.kept_connection``): opening and closing the file cost ~45 ms per step."""

    schemas: list[str] = Field(
        default_factory=lambda: list(DATA_SCHEMAS),
        description="Schemas created before the run's first use, with the tables several steps write "
        "(``store.prepare_catalog``): the run's steps may write concurrently.",
    )
    _watch: Any = PrivateAttr(default=None)
    _kept: Any = PrivateAttr(default=None)
    _prepared: bool = PrivateAttr(default=False)
    _prepare_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._watch = on_run_start(context)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the warehouse: the one the previous step released if it is still open, else a new one.
        A block that fails closes it (its transaction rolled back), so a failed step never holds the file."""
        if self._kept is None:
            with self._prepare_lock:  # one kept connection, also when the run's first steps start at once
                if self._kept is None:
                    self._kept = KeptConnection(self.connect)
        if not self._prepared:
            with self._prepare_lock:  # the run's first concurrent steps wait for the one that prepares
                if not self._prepared:
                    with self._kept.connection() as conn:
                        prepare_catalog(conn, self.schemas)
                    self._prepared = True
        with self._kept.connection() as conn:
            yield conn

    def connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file (``store.connect_warehouse``: the warehouse's row groups) as ``DuckDBResource`` does: while
        another process holds it, retry after 0.1, 0.2, 0.4 ... s (~100 s in all), then raise."""
        config = {"custom_user_agent": "dagster", **self.connection_config}
        delay = 0.1
        for _ in range(CONNECT_RETRIES):
            try:
                return connect_warehouse(self.database, config)
            except (RuntimeError, duckdb.IOException):
                time.sleep(delay)
                delay *= 2
        return connect_warehouse(self.database, config)

    def close_kept(self) -> None:
        """Close the kept connection now (the run's end)."""
        if self._kept is not None:
            self._kept.close()

    @property
    def holds_connection(self) -> bool:
        """Whether this process holds the file through the kept connection (in use or idle)."""
        return self._kept is not None and self._kept.is_open

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close_kept()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None


#: Retries of opening the warehouse while another process holds it (dagster_duckdb's own count).
CONNECT_RETRIES = 10


def warehouse(
    settings: Settings, memory_limit: str = "4GB", threads: int = 2, catalog: Catalog | None = None
) -> Warehouse:
    """The DuckDB feature store, with a memory limit so a large rebuild spills to disk instead of exhausting RAM;
    the schemas of the data and of each of the catalog's models."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    models = [model.name for model in catalog.models] if catalog is not None else []
    return Warehouse(
        database=str(settings.warehouse_path),
        connection_config={"memory_limit": memory_limit, "threads": threads},
        schemas=[*DATA_SCHEMAS, *models],
    )


def build_resources(
    settings: Settings | None = None, catalog: Catalog | None = None
) -> dict[str, dg.ConfigurableResource]:
    """All resources, from the given settings or from the environment (``MLOPS_DATA_DIR``), for the catalog's models
    (default: the registered catalog)."""
    settings = settings or load_settings()
    return {
        "duckdb": warehouse(settings, catalog=catalog or CATALOG),
        "storage": PlatformStorage(data_dir=str(settings.data_dir)),
        "policy": MonitoringPolicy(drift_share=settings.drift_share, retrain_auc_margin=settings.retrain_auc_margin),
        "training": TrainingPolicy(window_months=settings.training_window_months),
    }
