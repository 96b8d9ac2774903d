"""Where the platform keeps its data. One setting, ``MLOPS_DATA_DIR``, decides it; everything else is derived.

The environment is read when :func:`load_settings` is called, never at import time.
"""

from __future__ import annotations

import math
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
#: How many of the newest built months a training set spans, the test month included (default 12; 0 = all): a
#: retrain costs the same however many months have landed.
TRAINING_WINDOW_ENV = "MLOPS_TRAINING_WINDOW_MONTHS"
#: Seconds between two evaluations of each sensor by the daemon (landing, drift, performance, rollback, automation):
#: how soon a landed month or a drifted one is acted on. Dagster's sensor daemon looks about every 5 s, so lower
#: values change nothing.
SENSOR_INTERVAL_ENV = "MLOPS_SENSOR_INTERVAL_S"
DEFAULT_SENSOR_INTERVAL_S = 30
#: A PostgreSQL URL (``postgresql+psycopg2://user:password@host:port/db``): when set, the Dagster instance stores its
#: runs, event logs and schedules there instead of SQLite files in ``$DAGSTER_HOME``. Every Dagster process reads it.
DAGSTER_POSTGRES_URL_ENV = "MLOPS_DAGSTER_POSTGRES_URL"
#: Set in the platform image (Dockerfile): what to do next is said with the image's commands, as it has no Makefile.
IN_IMAGE_ENV = "MLOPS_IN_IMAGE"
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
    training_window_months: int = 12
    sensor_interval_s: int = DEFAULT_SENSOR_INTERVAL_S

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


class SettingsError(ValueError):
    """A setting (environment variable) the platform cannot run with; the message names it and what it accepts."""


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
    if resolved.exists() and not resolved.is_dir():
        raise SettingsError(f"the data directory {resolved} is a file: point ${DATA_DIR_ENV} at a folder")
    home = os.environ.get(DAGSTER_HOME_ENV) if data_dir is None else None
    return Settings(
        data_dir=resolved,
        dagster_home=Path(home).expanduser().resolve() if home else resolved / "dagster_home",
        # a share of 0 would call every month drifted, above 1 none; a negative or NaN margin would retrain every month
        drift_share=_float_env(DRIFT_SHARE_ENV, 0.3, above=0.0, at_most=1.0),
        retrain_auc_margin=_float_env(RETRAIN_AUC_MARGIN_ENV, 0.02, at_least=0.0, at_most=1.0),
        training_window_months=_int_env(TRAINING_WINDOW_ENV, 12),
        sensor_interval_s=_int_env(SENSOR_INTERVAL_ENV, DEFAULT_SENSOR_INTERVAL_S, minimum=1),
    )


def _int_env(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"${name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        allowed = "0 (no limit) or positive" if minimum == 0 else f"at least {minimum}"
        raise SettingsError(f"${name} must be {allowed}, got {value}")
    return value


def _float_env(
    name: str, default: float, *, above: float | None = None, at_least: float | None = None, at_most: float
) -> float:
    """A finite number from ``$name`` within its bounds (``above`` excludes its bound), else ``default`` if unset."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low_ok = (above is None or value > above) and (at_least is None or value >= at_least)
    if not (math.isfinite(value) and low_ok and value <= at_most):
        low = f"above {above:g}" if above is not None else f"at least {at_least:g}"
        raise SettingsError(f"${name} must be a number {low} and at most {at_most:g}, got {raw!r}")
    return value


#: The instance settings ``prepare_dagster_home`` copies: the embedded default (SQLite) and the same on PostgreSQL.
SQLITE_INSTANCE_YAML, POSTGRES_INSTANCE_YAML = "dagster.yaml", "dagster.postgres.yaml"


def instance_yaml_source(postgres: bool) -> Path:
    """The repo's instance settings file for the chosen storage: ``dagster.postgres.yaml`` or ``dagster.yaml``."""
    return REPO_ROOT / (POSTGRES_INSTANCE_YAML if postgres else SQLITE_INSTANCE_YAML)


def check_postgres_url(url: str) -> None:
    """Fail now, with the fix, when SQLAlchemy (under dagster-postgres) could not open ``url``, rather than in every
    Dagster process at its first connection. The message never repeats the URL: it holds a password.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as the psycopg 3 driver, which is not installed: dagster-postgres
    brings psycopg2, so the URL to give is ``postgresql+psycopg2://user:password@host:5432/database``.
    """
    import sqlalchemy.engine  # a dependency of Dagster's; only this check needs it
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    fix = f"set ${DAGSTER_POSTGRES_URL_ENV} to postgresql+psycopg2://user:password@host:5432/database"
    try:
        parsed = sqlalchemy.engine.make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise SettingsError(f"${DAGSTER_POSTGRES_URL_ENV} is not a database URL SQLAlchemy reads: {fix}") from None
    if dialect.name != "postgresql":
        raise SettingsError(f"${DAGSTER_POSTGRES_URL_ENV} names a {dialect.name} database, not PostgreSQL: {fix}")
    try:
        dialect.import_dbapi()
    except ImportError:
        raise SettingsError(
            f"${DAGSTER_POSTGRES_URL_ENV} ({parsed.drivername}://...) needs the driver {dialect.driver}, which is "
            f"not installed (dagster-postgres brings psycopg2): {fix}"
        ) from None


def prepare_dagster_home(home: Path, postgres: bool | None = None) -> Path:
    """Create the Dagster home with the repo's instance settings (run queue, DuckDB pool, freshness, run monitoring
    and retries) as its dagster.yaml; return it.

    Args:
        postgres: PostgreSQL storage (``dagster.postgres.yaml``) or the embedded SQLite default (``dagster.yaml``).
            None (the default): PostgreSQL exactly when ``$MLOPS_DAGSTER_POSTGRES_URL`` is set. The URL itself is
            never written: the file names the variable, and Dagster reads it whenever a process opens the instance.
    """
    if postgres is None:
        url = os.environ.get(DAGSTER_POSTGRES_URL_ENV, "")
        postgres = bool(url)
        if postgres:
            check_postgres_url(url)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # it, or a folder above it, is a file
        raise SettingsError(
            f"the Dagster home {home} is a file or under one: point $DAGSTER_HOME at a folder"
        ) from None
    except PermissionError:
        raise SettingsError(
            f"the Dagster home {home} cannot be made here: point $DAGSTER_HOME at a writable folder"
        ) from None
    source, target = instance_yaml_source(postgres), home / "dagster.yaml"
    if postgres and not source.exists():
        # the SQLite default may be absent outside a checkout (Dagster's defaults then apply); PostgreSQL may not
        raise FileNotFoundError(f"{source} is missing: it holds the PostgreSQL instance settings")
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        # atomically: every container of a stack prepares the same home on the shared volume, and a reader must
        # never see half a file
        staging = target.with_name(f".dagster.yaml.{os.getpid()}.tmp")
        shutil.copyfile(source, staging)
        os.replace(staging, target)
    return home


def in_image() -> bool:
    """Whether this process runs in the platform image (a container of the compose stack, a one-off ``mlops``)."""
    return bool(os.environ.get(IN_IMAGE_ENV))


def train_hint() -> str:
    """How to train and promote the first models, in this checkout or in the image (deploy/README.md)."""
    if in_image():
        return (
            "land months and train them (`mlops replay --through YYYY-MM`, then `dagster job launch -w "
            '/app/deploy/workspace.yaml -j training_pipeline --tags "$(mlops months --tags)"`: deploy/README.md)'
        )
    return "run `make pipeline`"


def refresh_hint() -> str:
    """Who refreshes a landed month's features and online stores."""
    if in_image():
        return "the stack's landing sensor does it by itself"
    return "`make ui`'s landing sensor does it, or `make pipeline THROUGH=YYYY-MM`"
