"""A throwaway third model on its own tiny feed, built only from its own files (this spec and ``features.sql``): is a
machine reading followed by a failure? It proves that registering a model wires everything else.

The feed ``toy_sensors`` lands monthly ``readings`` (device, time, temperature, whether the device failed within the
hour) and a reference table ``devices`` (device, site). Failures get likelier with heat and at one site, so a model
can learn them; the data is generated with a fixed seed.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandera.polars as pa
import polars as pl

from mlops_assets.core.features.pit import TrailingWindow
from mlops_assets.core.landing import LandedFile, land_file, month_range, parse_month
from mlops_assets.core.specs import (
    ContractContext,
    FeatureTableSpec,
    FeedSpec,
    ModelSpec,
    ReplayProgress,
    TableSpec,
    of_partition,
)

DEVICES = 12
READINGS_PER_MONTH = 1500


def _parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def readings(month: str, every: int = 1) -> pl.DataFrame:
    """One month of readings, the same for the same month (seeded by it)."""
    year, mon = parse_month(month)
    rng = np.random.default_rng(year * 100 + mon)
    start = datetime(year, mon, 1)
    minutes = np.sort(rng.integers(0, 28 * 24 * 60, READINGS_PER_MONTH))
    device = rng.integers(0, DEVICES, READINGS_PER_MONTH)
    temp = rng.normal(60 + 3 * mon, 12, READINGS_PER_MONTH).round(1)
    risk = 1 / (1 + np.exp(-((temp - 75) / 6 + (device % 3 == 0) * 1.5 - 1)))
    frame = pl.DataFrame(
        {
            "device": [f"D{d:02d}" for d in device],
            "read_at": [(start + timedelta(minutes=int(m))).strftime("%Y-%m-%dT%H:%M:%S") for m in minutes],
            "temp": temp,
            "failed": (rng.random(READINGS_PER_MONTH) < risk).astype(np.int64),
            "month": [mon] * READINGS_PER_MONTH,
        }
    )
    return frame.gather_every(every)


def replay(
    landing_dir: Path, months: list[str], every: int = 1, progress: ReplayProgress | None = None
) -> list[tuple[LandedFile, str]]:
    devices = pl.DataFrame(
        {"device": [f"D{d:02d}" for d in range(DEVICES)], "site": [f"S{d % 3}" for d in range(DEVICES)]}
    )
    landed = [land_file(landing_dir, "devices", None, _parquet(devices))]
    landed += [land_file(landing_dir, "readings", month, _parquet(readings(month, every))) for month in months]
    return landed


def readings_rules(context: ContractContext) -> dict[str, pa.Column]:
    return {
        "device": pa.Column(pl.String, pa.Check.str_matches(r"^D\d{2}$")),
        "read_at": pa.Column(pl.String, pa.Check.str_matches(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")),
        "temp": pa.Column(pl.Float64, pa.Check.in_range(-50, 200)),
        "failed": pa.Column(pl.Int64, pa.Check.isin([0, 1])),
        "month": pa.Column(pl.Int64, of_partition("month")),
    }


def devices_rules(context: ContractContext) -> dict[str, pa.Column]:
    return {"device": pa.Column(pl.String), "site": pa.Column(pl.String)}


TOY_FEED = FeedSpec(
    name="toy_sensors",
    tables=(
        TableSpec(
            "readings",
            {"device": pl.String, "read_at": pl.String, "temp": pl.Float64, "failed": pl.Int64, "month": pl.Int64},
            ("device", "read_at"),
            True,
            readings_rules,
        ),
        TableSpec("devices", {"device": pl.String, "site": pl.String}, ("device",), False, devices_rules),
    ),
    replay=replay,
    first_month="2024-01",
    last_month="2024-12",
)

TOY_FEATURES = FeatureTableSpec(
    name="reading_features",
    description="One row per reading with its temperature, site and the device's recent failure rate.",
    sql_path=Path(__file__).parent / "features.sql",
    inputs=("readings", "devices"),
    id_columns=("device", "read_local"),
    key=("device", "read_local"),
    label="failed",
    label_known_at="label_known_at",
    time_column="prediction_time",
    local_time_column="read_local",
    time_zone="Europe/Berlin",
    lookback_days=8,
    categorical=("site",),
    numeric=("temp", "device_failure_rate_7d", "device_readings_7d"),
    windows=(
        TrailingWindow(
            "device_failure_rate_7d", "device_readings_7d", ("device",), "label_known_at", "failed", timedelta(days=7)
        ),
    ),
)

TOY_MODEL = ModelSpec(
    name="toy_failures",
    feed=TOY_FEED,
    features=TOY_FEATURES,
    description="Does a device fail within the hour after a reading?",
    positive="failing",
    slices={"site": pl.col("site")},
    params={"num_leaves": 7, "min_data_in_leaf": 20},
)

MONTHS = month_range("2024-01", "2024-03")
