"""A plain pandas implementation of ``features.flight_features``: the reference the real build is checked and timed
against.

It computes the same columns as ``mlops_assets.core.features.compute_features(conn, FLIGHT_FEATURES, ...)`` (minus
``feature_set_version``) for every flight it is given, from the validated tables as pandas frames. The logic is written
from the description of the features (``flight_features.sql`` and ``pit.py``), with pandas only: ``merge_asof`` for
the as-of lookups (weather, previous leg) and for the trailing windows, ``tz_localize`` for the destination time zones.
DuckDB is used at most to read the validated tables (``load_validated``).

Times are naive ``datetime64[us]`` in UTC, as in the feature table. Rules, restated:

* prediction time = the flight's ``time_hour`` (UTC hour of the scheduled departure) + ``minute``;
* scheduled arrival = flight date + ``sched_arr_time`` read in the destination's time zone (airports ``tzone``;
  'America/Puerto_Rico' when the code is missing or has no zone), plus one day when that is before the departure;
  a repeated local time (DST ends) is read as standard time and a skipped one (DST starts) with the offset in force
  before the change, as DuckDB (ICU) does;
* a departure delay is known at the actual departure (for the origin window never before the scheduled one); the
  label (arrival delay > 15 min, or no arrival) when the outcome is known: scheduled departure if cancelled,
  scheduled arrival + max(dep_delay, 0) if diverted, actual arrival otherwise, and never before the actual departure
  nor the scheduled one;
* weather: the latest hourly observation at the origin known (at the end of its hour) by the prediction time, if
  known for at most 3 hours;
* previous leg: the plane's latest scheduled departure strictly before this one (duplicates merged with max), if at
  most 72 hours before; its delay only if it had actually left before the prediction time;
* trailing windows: mean and count over the events of the same key known in ``[t - window, t)``.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

#: Destination time zone used when the airport is missing from ``airports`` (BQN, PSE, SJU, STT) or has no zone.
DEFAULT_TZONE = "America/Puerto_Rico"
TS = "datetime64[us]"

#: (mean column, count column, key columns, known-at column, value column, window)
WINDOWS: tuple[tuple[str, str, tuple[str, ...], str, str, timedelta], ...] = (
    (
        "origin_dep_delay_mean_3h",
        "origin_departures_3h",
        ("origin",),
        "dep_known_utc",
        "dep_delay",
        timedelta(hours=3),
    ),
    ("carrier_delay_rate_7d", "carrier_flights_7d", ("carrier",), "label_known_at", "is_delayed", timedelta(days=7)),
    (
        "route_delay_rate_30d",
        "route_flights_30d",
        ("origin", "dest"),
        "label_known_at",
        "is_delayed",
        timedelta(days=30),
    ),
)

WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")

#: Output columns, in the order of ``FLIGHT_FEATURES.output_columns`` (without ``feature_set_version``).
OUTPUT_COLUMNS = (
    "carrier",
    "flight",
    "tailnum",
    "origin",
    "dest",
    "sched_dep_local",
    "prediction_time",
    "plane_engine",
    "distance",
    "sched_hour",
    "sched_weekday",
    *WEATHER_COLUMNS,
    "plane_age",
    "plane_seats",
    "plane_engines",
    "origin_dep_delay_mean_3h",
    "origin_departures_3h",
    "carrier_delay_rate_7d",
    "carrier_flights_7d",
    "route_delay_rate_30d",
    "route_flights_30d",
    "prev_leg_dep_delay",
    "prev_leg_gap_hours",
    "is_delayed",
    "label_known_at",
    "_month",
)


#: The columns of each validated table that the features read.
INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "flights": (
        "year",
        "month",
        "day",
        "hour",
        "minute",
        "sched_arr_time",
        "dep_delay",
        "arr_delay",
        "carrier",
        "flight",
        "tailnum",
        "origin",
        "dest",
        "distance",
        "time_hour",
        "_month",
    ),
    "weather": ("origin", "time_hour", *WEATHER_COLUMNS),
    "planes": ("tailnum", "year", "seats", "engines", "engine"),
    "airports": ("faa", "tzone"),
}


def load_validated(conn) -> dict[str, pd.DataFrame]:
    """The validated tables (the columns the features read) as pandas frames: DuckDB only reads them."""
    return {
        name: conn.execute(f'SELECT {", ".join(columns)} FROM validated."{name}"').df()
        for name, columns in INPUT_COLUMNS.items()
    }


def _utc(time_hour: pd.Series) -> pd.Series:
    return pd.to_datetime(time_hour, format="%Y-%m-%dT%H:%M:%SZ").astype(TS)


def _minutes(values: pd.Series) -> pd.Series:
    """Whole minutes as a timedelta (NaN -> NaT); DuckDB casts the delay to BIGINT, i.e. rounds it."""
    return pd.to_timedelta(values.round(), unit="min")


def _local_to_utc(local: pd.Series, tzone: pd.Series) -> pd.Series:
    """Naive local times, each in its own zone, as naive UTC."""
    out = pd.Series(pd.NaT, index=local.index, dtype=TS)
    for zone, index in local.groupby(tzone, sort=False).groups.items():
        part = local.loc[index]
        aware = part.dt.tz_localize(zone, ambiguous=np.zeros(len(part), dtype=bool), nonexistent=pd.Timedelta(hours=1))
        out.loc[index] = aware.dt.tz_convert("UTC").dt.tz_localize(None).astype(TS)
    return out


def flight_rows(flights: pd.DataFrame, airports: pd.DataFrame) -> pd.DataFrame:
    """One row per flight with its times (UTC) and the facts the windows aggregate, in prediction-time order."""
    f = flights.copy()
    f["sched_dep_utc"] = _utc(f["time_hour"]) + pd.to_timedelta(f["minute"], unit="min")
    f["sched_dep_local"] = pd.to_datetime(f[["year", "month", "day", "hour", "minute"]]).astype(TS)

    zones = airports.set_index("faa")["tzone"]
    tzone = f["dest"].map(zones).fillna(DEFAULT_TZONE)
    arr_minutes = (f["sched_arr_time"] // 100) * 60 + f["sched_arr_time"] % 100
    arr_local = pd.to_datetime(f[["year", "month", "day"]]).astype(TS) + pd.to_timedelta(arr_minutes, unit="min")
    arr_same_day = _local_to_utc(arr_local, tzone)
    arr_next_day = _local_to_utc(arr_local + pd.Timedelta(days=1), tzone)  # the next local day (DST-safe)
    f["sched_arr_utc"] = arr_same_day.where(arr_same_day >= f["sched_dep_utc"], arr_next_day)

    f["dep_actual_utc"] = f["sched_dep_utc"] + _minutes(f["dep_delay"])
    # for the windows: not before the schedule (a flight's own early departure is no fact of its own features)
    f["dep_known_utc"] = f["dep_actual_utc"].where(
        f["dep_actual_utc"].isna() | (f["dep_actual_utc"] >= f["sched_dep_utc"]), f["sched_dep_utc"]
    )
    f["is_delayed"] = (f["arr_delay"].isna() | (f["arr_delay"] > 15)).astype("int64")
    outcome = f["sched_arr_utc"] + _minutes(f["arr_delay"])  # arrived
    diverted = f["sched_arr_utc"] + _minutes(f["dep_delay"].clip(lower=0))
    outcome = outcome.where(f["arr_delay"].notna(), diverted)
    outcome = outcome.where(f["dep_delay"].notna(), f["sched_dep_utc"])  # cancelled
    f["label_known_at"] = np.maximum(
        np.maximum(outcome, f["dep_actual_utc"].fillna(f["sched_dep_utc"])), f["sched_dep_utc"]
    )
    f = f.sort_values(["sched_dep_utc", "carrier", "flight", "origin", "dest"], kind="stable", ignore_index=True)
    f["rid"] = np.arange(len(f))
    return f


def _weather(f: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    obs = weather[["origin", "time_hour", *WEATHER_COLUMNS]].copy()
    # an hourly row is known at the end of its hour (it is built from the reports within the hour)
    obs["known_at"] = _utc(obs.pop("time_hour")) + pd.Timedelta(hours=1)
    queries = f[["rid", "origin", "sched_dep_utc"]].sort_values("sched_dep_utc")
    joined = pd.merge_asof(
        queries,
        obs.sort_values("known_at"),
        left_on="sched_dep_utc",
        right_on="known_at",
        by="origin",
        direction="backward",
        allow_exact_matches=True,
    )
    fresh = joined["sched_dep_utc"] - joined["known_at"] <= pd.Timedelta(hours=3)
    out = joined[["rid"]].copy()
    for column in WEATHER_COLUMNS:
        out[column] = joined[column].where(fresh)
    return out


def _previous_leg(f: pd.DataFrame) -> pd.DataFrame:
    flown = f[f["tailnum"].notna()]
    legs = (
        flown.groupby(["tailnum", "sched_dep_utc"], as_index=False)
        .agg(leg_dep_delay=("dep_delay", "max"), leg_dep_actual_utc=("dep_actual_utc", "max"))
        .rename(columns={"sched_dep_utc": "leg_sched_utc"})
        .sort_values("leg_sched_utc")
    )
    joined = pd.merge_asof(
        flown[["rid", "tailnum", "sched_dep_utc"]].sort_values("sched_dep_utc"),
        legs,
        left_on="sched_dep_utc",
        right_on="leg_sched_utc",
        by="tailnum",
        direction="backward",
        allow_exact_matches=False,
    )
    gap = joined["sched_dep_utc"] - joined["leg_sched_utc"]
    recent = gap <= pd.Timedelta(hours=72)
    left_before = joined["leg_dep_actual_utc"] < joined["sched_dep_utc"]  # NaT compares False
    return pd.DataFrame(
        {
            "rid": joined["rid"],
            "prev_leg_dep_delay": joined["leg_dep_delay"].where(recent & left_before),
            "prev_leg_gap_hours": (gap.dt.total_seconds() / 3600.0).where(recent),
        }
    )


def trailing_window(
    events: pd.DataFrame, queries: pd.DataFrame, by: list[str], known_at: str, value: str, window: timedelta
) -> pd.DataFrame:
    """Sum and count of ``value`` over the events of the same key known in ``[t - window, t)``, for each query
    (``rid``, keys, ``t``): the per-key running totals just before ``t`` minus those just before ``t - window``."""
    known = events.loc[events[known_at].notna() & events[value].notna(), [*by, known_at, value]]
    totals = (
        known.groupby([*by, known_at], as_index=False)
        .agg(_sum=(value, "sum"), _n=(value, "size"))
        .sort_values([*by, known_at])
    )
    grouped = totals.groupby(by, sort=False)
    totals["_sum"] = grouped["_sum"].cumsum()
    totals["_n"] = grouped["_n"].cumsum()
    totals = totals.rename(columns={known_at: "_ts"}).sort_values("_ts")

    def before(at: str) -> pd.DataFrame:
        q = queries[["rid", *by, at]].sort_values(at)
        joined = pd.merge_asof(
            q, totals, left_on=at, right_on="_ts", by=by, direction="backward", allow_exact_matches=False
        )
        return joined.set_index("rid")[["_sum", "_n"]].fillna(0)

    queries = queries.assign(_since=queries["t"] - window)
    upto_t, upto_start = before("t"), before("_since")
    upto_start = upto_start.reindex(upto_t.index)
    n = upto_t["_n"] - upto_start["_n"]
    return pd.DataFrame({"_sum": upto_t["_sum"] - upto_start["_sum"], "_n": n}, index=upto_t.index)


def build_features_pandas(
    flights: pd.DataFrame, weather: pd.DataFrame, planes: pd.DataFrame, airports: pd.DataFrame
) -> pd.DataFrame:
    """Features of every flight given with a tail number (its whole history is both the events and the targets), in
    prediction-time order (then carrier, flight, origin, dest), with the columns of ``features.flight_features``."""
    f = flight_rows(flights, airports)
    out = f[["rid", "carrier", "flight", "tailnum", "origin", "dest", "sched_dep_local", "_month"]].copy()
    out["prediction_time"] = f["sched_dep_utc"]
    out["distance"] = f["distance"].astype("float64")
    out["sched_hour"] = f["hour"]
    out["sched_weekday"] = f["sched_dep_local"].dt.day_of_week + 1  # ISO: Monday = 1
    out["is_delayed"] = f["is_delayed"]
    out["label_known_at"] = f["label_known_at"]

    out = out.merge(_weather(f, weather), on="rid", how="left")
    p = planes.set_index("tailnum")
    plane = f["tailnum"].map
    out["plane_age"] = (f["year"] - plane(p["year"])).astype("float64")
    out["plane_seats"] = plane(p["seats"]).astype("float64")
    out["plane_engines"] = plane(p["engines"]).astype("float64")
    out["plane_engine"] = plane(p["engine"])

    queries = f[["rid", "origin", "carrier", "dest", "sched_dep_utc"]].rename(columns={"sched_dep_utc": "t"})
    for mean_name, count_name, by, known_at, value, window in WINDOWS:
        totals = trailing_window(f, queries, list(by), known_at, value, window).reindex(out["rid"])
        n = totals["_n"].to_numpy()
        out[mean_name] = np.where(n > 0, totals["_sum"].to_numpy() / np.where(n > 0, n, 1), np.nan)
        out[count_name] = n.astype("float64")

    out = out.merge(_previous_leg(f), on="rid", how="left")
    out = out[out["tailnum"].notna()]  # flights with a recorded aircraft only, every flight an event above
    return out.sort_values("rid", ignore_index=True)[list(OUTPUT_COLUMNS)]
