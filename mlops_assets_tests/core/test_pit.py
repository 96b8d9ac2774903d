"""Point-in-time windows: windows that share their key, time and value share one cumulative sum."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from mlops_assets.core.features.pit import TrailingWindow, add_trailing_windows, window_cumulatives


def _events_and_targets() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(7)
    start = datetime(2013, 3, 1)
    n = 2_000
    events = pl.DataFrame(
        {
            "origin": rng.choice(["EWR", "JFK", "LGA"], n).tolist(),
            "known_at": [start + timedelta(minutes=int(m)) for m in rng.integers(0, 14 * 24 * 60, n)],
            "cancelled": rng.integers(0, 2, n).tolist(),
            "dep_delay": rng.normal(10, 30, n).tolist(),
        }
    )
    targets = pl.DataFrame(
        {
            "origin": rng.choice(["EWR", "JFK", "LGA"], 300).tolist(),
            "t": sorted(start + timedelta(minutes=int(m)) for m in rng.integers(0, 15 * 24 * 60, 300)),
        }
    )
    return events, targets


def test_windows_of_one_source_share_a_cumulative_and_equal_each_window_built_alone() -> None:
    events, targets = _events_and_targets()
    windows = (
        TrailingWindow("rate_3h", "n_3h", ("origin",), "known_at", "cancelled", timedelta(hours=3)),
        TrailingWindow("delay_24h", "m_24h", ("origin",), "known_at", "dep_delay", timedelta(hours=24)),
        TrailingWindow("rate_24h", "n_24h", ("origin",), "known_at", "cancelled", timedelta(hours=24)),
        TrailingWindow("rate_7d", "n_7d", ("origin",), "known_at", "cancelled", timedelta(days=7)),
    )
    cumulatives = window_cumulatives(events, windows)
    assert cumulatives[0] is cumulatives[2] is cumulatives[3]  # one cumulative sum for the three rates
    assert cumulatives[1] is not cumulatives[0]  # another value: its own

    together = add_trailing_windows(events, targets, windows, "t")
    for window in windows:
        alone = add_trailing_windows(events, targets, (window,), "t")
        assert together.select(window.outputs).equals(alone.select(window.outputs)), window.mean_name
    # the windows differ, so sharing did not copy one window's figures into another's
    assert not together["n_3h"].equals(together["n_24h"])
    assert (together["n_3h"] <= together["n_24h"]).all() and (together["n_24h"] <= together["n_7d"]).all()
