"""``flight_delay``: will a 2013 NYC flight arrive more than 15 minutes late? Predicted at its scheduled departure.

Its own files: this spec and ``flight_features.sql`` (the flight rows, the label and when it became known); the
hourly-weather lookup, the request mapping and the slices come from the feed (``mlops_assets/feeds/nycflights13``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from mlops_assets.core.features.pit import AsOfLookup, TrailingWindow
from mlops_assets.core.specs import FeatureTableSpec, ModelSpec
from mlops_assets.feeds.nycflights13 import (
    FLIGHT_SLICES,
    NYCFLIGHTS13,
    TIME_ZONE,
    WEATHER_AT_ORIGIN,
    WEATHER_FEATURES,
    flight_online,
)

FLIGHT_FEATURES = FeatureTableSpec(
    name="flight_features",
    description="One row per flight with a recorded aircraft (tailnum), with features as of its scheduled departure "
    "(UTC) and the label is_delayed.",
    sql_path=Path(__file__).parent / "flight_features.sql",
    inputs=("flights", "weather", "planes", "airports"),
    id_columns=("carrier", "flight", "tailnum", "origin", "dest", "sched_dep_local"),
    key=("carrier", "flight", "origin", "sched_dep_local"),
    # Flights with a recorded aircraft only: nycflights13 records no tail number for a third of the cancelled flights
    # and for no flight that left (a cancellation counts as delayed), so the plane facts and the previous leg, all
    # missing without one, gave the label away. Measured on 2013 (trained Jan-Nov, tested on December): those rows had
    # a mean score of 0.79, and a flight's request sent without its tailnum scored 0.19 -> 0.37 on average. Still
    # events of the windows (a carrier's delays count its cancellations).
    entity_filter="tailnum IS NOT NULL",
    label="is_delayed",
    label_known_at="label_known_at",
    time_column="prediction_time",
    local_time_column="sched_dep_local",
    time_zone=TIME_ZONE,
    # 30 days of route window + up to 2 days between a flight's schedule and its known outcome, rounded up
    lookback_days=35,
    categorical=("carrier", "origin", "dest", "plane_engine"),
    numeric=(
        "distance",
        "sched_hour",
        "sched_weekday",
        *WEATHER_FEATURES,
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
    ),
    lookups=(
        WEATHER_AT_ORIGIN,
        AsOfLookup(
            name="the plane's previous NYC departure within 72 h: its delay once it has left, and the scheduled gap",
            by=("tailnum",),
            known_at="prediction_time",  # a leg's schedule is known in advance; the previous one is scheduled before
            columns={"dep_delay": "prev_leg_dep_delay"},
            value_known_at={"prev_leg_dep_delay": "dep_actual_utc"},
            max_age=timedelta(hours=72),
            age_hours="prev_leg_gap_hours",
        ),
    ),
    windows=(
        TrailingWindow(  # known once a flight has left, and not before its schedule: never its own departure
            "origin_dep_delay_mean_3h",
            "origin_departures_3h",
            ("origin",),
            "dep_known_utc",
            "dep_delay",
            timedelta(hours=3),
        ),
        TrailingWindow(
            "carrier_delay_rate_7d",
            "carrier_flights_7d",
            ("carrier",),
            "label_known_at",
            "is_delayed",
            timedelta(days=7),
        ),
        TrailingWindow(
            "route_delay_rate_30d",
            "route_flights_30d",
            ("origin", "dest"),
            "label_known_at",
            "is_delayed",
            timedelta(days=30),
        ),
    ),
    online=flight_online(),
)

FLIGHT_DELAY = ModelSpec(
    name="flight_delay",
    feed=NYCFLIGHTS13,
    features=FLIGHT_FEATURES,
    description="Will the flight arrive more than 15 minutes late (or not at all)? Scored at its scheduled departure.",
    positive="delayed",
    slices=FLIGHT_SLICES,
)
