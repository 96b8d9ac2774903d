"""Cross-check of the point-in-time flight features against an independent plain-pandas implementation.

A small real slice (January and February 2013, every 10th flight) goes through the production path: landed with the
replay feed, ingested and validated into DuckDB, then February is built alone with ``compute_features`` (so from its
35-day look-back only). The pandas reference (``benchmarks/pandas_baseline.py``) builds every flight of the slice from
the full history with ``merge_asof``; February must agree column by column. The trailing windows are further checked
against a brute-force count over the events, which shares no code or trick (running totals, as-of joins) with either.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlops_assets.core.features import compute_features
from mlops_assets.core.ingest import ingest_raw, validate_partition
from mlops_assets.core.landing import scan_landing
from mlops_assets.feeds.nycflights13 import NYCFLIGHTS13, replay_months
from mlops_assets.models.flight_delay import FLIGHT_FEATURES

MONTHS = ["2013-01", "2013-02"]
TARGET = "2013-02"
KEY = list(FLIGHT_FEATURES.key)
TOLERANCE = 1e-9


def _load_baseline() -> ModuleType:
    """``benchmarks/pandas_baseline.py`` of this checkout, loaded from its path (``benchmarks`` is a folder of scripts,
    not an installed package, and loading by path leaves ``sys.path`` alone)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "pandas_baseline.py"
    spec = importlib.util.spec_from_file_location("pandas_baseline", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


baseline = _load_baseline()


@pytest.fixture(scope="module")
def slice_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """January and February 2013 (every 10th flight, all weather) landed, ingested and validated, shared by the
    module's tests (the conftest ``warehouse`` is per test and loads only the reference tables)."""
    root = tmp_path_factory.mktemp("pandas_reference")
    landing, quarantine = root / "landing", root / "quarantine"
    replay_months(landing, MONTHS, every=10)
    conn = duckdb.connect(str(root / "warehouse.duckdb"))
    files = scan_landing(landing)
    now = datetime(2024, 1, 1)
    for table in ("airlines", "airports", "planes", "flights", "weather"):  # codes before the tables checked on them
        spec = NYCFLIGHTS13.table(table)
        for landed in sorted((f for f in files if f.table == table), key=lambda f: str(f.month)):
            assert ingest_raw(conn, spec, landed, landing, quarantine, "test", now).accepted
            assert validate_partition(conn, spec, landed.month, "test", now).accepted
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def both(slice_store: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """February as built by the platform (alone) and by pandas (from all history), and the input tables."""
    ours = compute_features(slice_store, FLIGHT_FEATURES, TARGET).to_pandas()
    tables = baseline.load_validated(slice_store)
    reference = baseline.build_features_pandas(**tables)
    reference = reference[reference["_month"] == TARGET]
    return ours, reference, tables


def test_same_rows_and_columns(both: tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]) -> None:
    ours, reference, _ = both
    assert len(ours) > 2000, "the slice should hold a few thousand February flights"
    assert list(reference.columns) == [c for c in FLIGHT_FEATURES.output_columns if c in reference.columns]
    assert set(FLIGHT_FEATURES.output_columns) - set(reference.columns) == set()
    assert not ours.duplicated(KEY).any() and not reference.duplicated(KEY).any()
    assert sorted(map(tuple, ours[KEY].astype(str).to_numpy())) == sorted(
        map(tuple, reference[KEY].astype(str).to_numpy())
    )
    # same order too: prediction time, then carrier, flight, origin, dest
    assert ours["prediction_time"].is_monotonic_increasing
    assert (ours[KEY].to_numpy() == reference[KEY].to_numpy()).all()


@pytest.mark.parametrize("column", [c for c in FLIGHT_FEATURES.output_columns if c not in KEY])
def test_column_agrees(both: tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]], column: str) -> None:
    ours, reference, _ = both
    merged = ours[[*KEY, column]].merge(reference[[*KEY, column]], on=KEY, how="inner", suffixes=("_ours", "_pandas"))
    assert len(merged) == len(ours)
    left, right = merged[f"{column}_ours"], merged[f"{column}_pandas"]
    null_mismatch = left.isna() != right.isna()
    assert not null_mismatch.any(), (
        f"{column}: nulls differ on {int(null_mismatch.sum())} rows:\n{merged[null_mismatch].head(10)}"
    )
    present = left.notna()
    if pd.api.types.is_float_dtype(left) or pd.api.types.is_float_dtype(right):
        a, b = left[present].astype("float64").to_numpy(), right[present].astype("float64").to_numpy()
        bad = ~np.isclose(a, b, rtol=TOLERANCE, atol=TOLERANCE)
    else:
        bad = (left[present].astype(object) != right[present].astype(object)).to_numpy()
    assert not bad.any(), f"{column}: values differ on {int(bad.sum())} rows:\n{merged[present][bad].head(10)}"


def test_windows_against_brute_force(both: tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]) -> None:
    """Every trailing window, recomputed by testing each event of the key against ``[t - window, t)``."""
    ours, _, tables = both
    events = baseline.flight_rows(tables["flights"], tables["airports"])
    for mean_name, count_name, by, known_at, value, window in baseline.WINDOWS:
        by = list(by)
        known = events[events[known_at].notna() & events[value].notna()]
        groups = {key: frame for key, frame in known.groupby(by)}
        for key, targets in ours.groupby(by):
            group = groups.get(key)
            t = targets["prediction_time"].to_numpy()[:, None]
            if group is None:
                n, total = np.zeros(len(targets)), np.zeros(len(targets))
            else:
                at = group[known_at].to_numpy()[None, :]
                inside = (at >= t - np.timedelta64(window)) & (at < t)
                n, total = inside.sum(axis=1), inside @ group[value].to_numpy(dtype="float64")
            np.testing.assert_array_equal(targets[count_name].to_numpy(), n, err_msg=f"{count_name} {key}")
            mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
            np.testing.assert_allclose(
                targets[mean_name].to_numpy(), mean, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"{mean_name} {key}"
            )
