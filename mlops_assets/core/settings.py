"""Where the platform keeps its data. One setting, ``MLOPS_DATA_DIR``, decides it; everything else is derived.

The environment is read when :func:`load_settings` is called, never at import time.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "MLOPS_DATA_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
#: Share of features that must drift for a month to count as drifted (default 0.3).
DRIFT_SHARE_ENV = "MLOPS_DRIFT_SHARE"
#: How far the champion's live AUC may fall below its evaluation AUC before the performance sensor retrains (0.02).
RETRAIN_AUC_MARGIN_ENV = "MLOPS_RETRAIN_AUC_MARGIN"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ModelPaths:
    """Where one model keeps its state, each folder named after the model (two models never share one)."""

    model: str
    registry_dir: Path
    online_store_dir: Path
    reports_dir: Path
    predictions_dir: Path


@dataclass(frozen=True)
class Settings:
    """Paths of everything the platform writes, all below one data directory."""

    data_dir: Path
    dagster_home: Path
    drift_share: float = 0.3
    retrain_auc_margin: float = 0.02

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def quarantine_dir(self) -> Path:
        """Bytes of rejected batches and misnamed files."""
        return self.data_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        """Reports for people (Markdown and PNG); no decision reads them."""
        return self.data_dir / "reports"

    def model(self, name: str) -> ModelPaths:
        """One model's folders: ``registry/<name>``, ``online_store/<name>``, ``reports/<name>`` and the serving log
        ``predictions/<name>``."""
        return ModelPaths(
            model=name,
            registry_dir=self.data_dir / "registry" / name,
            online_store_dir=self.data_dir / "online_store" / name,
            reports_dir=self.reports_dir / name,
            predictions_dir=self.data_dir / "predictions" / name,
        )

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Settings:
        """Settings of a data directory with its own Dagster home and the default thresholds (no environment read)."""
        return cls(data_dir=data_dir, dagster_home=data_dir / "dagster_home")


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
    return Settings(
        data_dir=resolved,
        dagster_home=Path(home).expanduser().resolve() if home else resolved / "dagster_home",
        drift_share=_float_env(DRIFT_SHARE_ENV, 0.3),
        retrain_auc_margin=_float_env(RETRAIN_AUC_MARGIN_ENV, 0.02),
    )


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number, got {raw!r}") from None


def prepare_dagster_home(home: Path) -> Path:
    """Create the Dagster home with the repo's dagster.yaml (run queue, DuckDB pool, freshness); return it."""
    home.mkdir(parents=True, exist_ok=True)
    source, target = REPO_ROOT / "dagster.yaml", home / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
    return home
