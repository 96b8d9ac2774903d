"""Where the platform keeps its data. One setting, ``MLOPS_DATA_DIR``, decides it; everything else is derived.

The environment is read when :func:`load_settings` is called, never at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "MLOPS_DATA_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    """Paths of everything the platform writes, all below one data directory."""

    data_dir: Path
    dagster_home: Path

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"


def default_data_dir() -> Path:
    """The repo's ``data/`` folder when running from a checkout, else ``./data``."""
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "data"
    return Path.cwd() / "data"


def load_settings(data_dir: str | os.PathLike[str] | None = None) -> Settings:
    """Resolve the data directory (an explicit argument, else ``$MLOPS_DATA_DIR``, else the default) and the Dagster
    home (``$DAGSTER_HOME``, else ``<data dir>/dagster_home``). Both absolute."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or default_data_dir()
    resolved = Path(chosen).expanduser().resolve()
    home = os.environ.get(DAGSTER_HOME_ENV) if data_dir is None else None
    return Settings(data_dir=resolved, dagster_home=Path(home).expanduser().resolve() if home else resolved / "dagster_home")
