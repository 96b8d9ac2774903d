"""Point-in-time feature tables: run a spec's feature SQL and trailing windows for some months into ``features.<name>``.

A month is built from its own rows plus a capped look-back (``lookback_days`` before the month starts), so the cost of
a monthly build stays flat as history grows, and building month by month gives exactly what one full build gives.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import polars as pl

from mlops_assets.core.cores import all_cores
from mlops_assets.core.features.pit import add_lookup, add_trailing_windows
from mlops_assets.core.landing import month_key, parse_month, shift_month
from mlops_assets.core.store import (
    ensure_table_like,
    qualified,
    query_frame,
    replace_where,
    table_exists,
    transaction,
)

if TYPE_CHECKING:  # specs imports the point-in-time engine from this package: import the type only for checkers
    from mlops_assets.core.specs import FeatureTableSpec, FeedSpec

VERSION_COLUMN = "feature_set_version"
#: Whether a row of the feature SQL is one the table covers (``FeatureTableSpec.entity_filter``); never stored.
COVERED = "_covered"


def feature_set_version(spec: FeatureTableSpec) -> str:
    """A short hash of the feature SQL, the lookups and windows, and the declared columns: it changes whenever the
    features can change."""
    digest = hashlib.sha256(spec.sql.encode())
    for lookup in spec.lookups:
        digest.update((lookup.sql or "").encode())
    # the lookups' SQL files by content (above), never by path: the same code installed elsewhere (a container, another
    # checkout) builds the same features and must carry the same version
    lookups = [replace(lookup, sql_path=None) for lookup in spec.lookups]
    digest.update(repr((spec.output_columns, lookups, spec.windows, spec.lookback_days)).encode())
    if spec.entity_filter:  # only when set: a table without one keeps the version it had before the field existed
        digest.update(spec.entity_filter.encode())
    return digest.hexdigest()[:12]


def context_start_for(spec: FeatureTableSpec, first: str) -> datetime:
    """The earliest scheduled time a build of ``first`` (and later months) may read: ``lookback_days`` before it."""
    year, month = parse_month(first)
    return datetime(year, month, 1) - timedelta(days=spec.lookback_days)


def months_reading(month: str, later: list[str], specs: list[FeatureTableSpec]) -> list[str]:
    """The months of ``later`` whose build of any of ``specs`` reads ``month``: their look-back begins before it ends
    (35 days reach back one month, two from a short one: April reads the end of February). When ``month`` lands late
    or is corrected, their features were built without it, or with what it held before, and must be built again."""
    year, number = parse_month(shift_month(month, 1))
    end = datetime(year, number, 1)
    return [m for m in sorted(later) if m > month and any(context_start_for(spec, m) < end for spec in specs)]


def lookback_gaps(
    conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, months: list[str], monthly_inputs: list[str]
) -> dict[str, dict[str, list[str]]]:
    """For each of ``months`` whose look-back reads a month without validated rows of one of ``monthly_inputs`` (its
    batch rejected, or not landed yet) after the first month that has some: ``{month: {table: missing months}}``.

    Such a month built now would count nothing in the gap: a carrier's 7-day count of ~40 flights instead of ~800, no
    previous leg for most planes; its scores, drift and live quality, and the models retrained on it, would read that.
    """
    present: dict[str, set[str]] = {}
    for table in monthly_inputs:
        found = []
        if table_exists(conn, "validated", table):
            found = conn.execute(f"SELECT DISTINCT _month FROM {qualified('validated', table)}").fetchall()
        present[table] = {row[0] for row in found}
    gaps: dict[str, dict[str, list[str]]] = {}
    for month in sorted(months):
        start = context_start_for(spec, month)
        read, reads = month_key(start.year, start.month), []
        while read < month:
            reads.append(read)
            read = shift_month(read, 1)
        for table, landed in present.items():
            missing = [m for m in reads if landed and m > min(landed) and m not in landed]
            if missing:
                gaps.setdefault(month, {})[table] = missing
    return gaps


def compute_features(
    conn: duckdb.DuckDBPyConnection,
    spec: FeatureTableSpec,
    first: str,
    last: str | None = None,
    context_start: datetime | None = None,
) -> pl.DataFrame:
    """Features of every row in months ``first``..``last`` (default: just ``first``), in prediction-time order.

    Args:
        context_start: how far back inputs are read; default ``lookback_days`` before ``first``. A full rebuild from
            all history passes an early date.
    """
    last = last or first
    start = context_start if context_start is not None else context_start_for(spec, first)
    params = {"context_first": month_key(start.year, start.month), "target_last": last, "context_start": start}
    rows = feature_rows(conn, spec, params)
    targets = rows.filter(pl.col("_month").is_between(pl.lit(first), pl.lit(last)) & covered(spec))
    # as events the lookups and windows read a few columns: the full-width rows beside the targets were the peak
    # (a ten-year build: 3.6 GiB with both, 2.9 when the targets were all the rows and shared their memory)
    rows = rows.select(event_columns(spec, rows.columns))
    for lookup in spec.lookups:
        right = rows if lookup.sql is None else query_frame(conn, lookup.sql, used_params(lookup.sql, params))
        targets = add_lookup(targets, right, lookup, spec.time_column)
    targets = add_trailing_windows(rows, targets, spec.windows, spec.time_column)
    return targets.select(spec.output_columns).with_columns(pl.lit(feature_set_version(spec)).alias(VERSION_COLUMN))


def feature_rows(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, params: dict[str, object]) -> pl.DataFrame:
    """The feature SQL's rows in prediction-time order (then key): every one an event of the lookups and windows,
    marked :data:`COVERED` when the spec has an ``entity_filter``."""
    sql = spec.sql
    if spec.entity_filter:
        sql = f"SELECT *, coalesce(({entity_condition(spec)}), false) AS {COVERED} FROM (\n{as_subquery(sql)}\n)"
    return query_frame(conn, sql, used_params(sql, params)).sort([spec.time_column, *spec.key])


def as_subquery(sql: str) -> str:
    """One SELECT statement's text without its closing semicolon and the comments after it, which cannot stand inside
    a subquery (``SELECT 1; -- note``). DuckDB's tokenizer tells a semicolon from one inside a string or comment."""
    if len(duckdb.extract_statements(sql)) != 1:
        raise ValueError(f"a feature SQL must be one SELECT statement; this one has several:\n{sql}")
    code = [(position, kind) for position, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    if code and sql[code[-1][0]] == ";":
        return sql[: code[-1][0]]
    return sql


def entity_condition(spec: FeatureTableSpec) -> str:
    """The spec's ``entity_filter`` as a condition to place inside parentheses: on lines of its own, so that a
    trailing ``-- comment`` ends there; a semicolon (outside strings and comments) is refused, naming the spec."""
    condition = spec.entity_filter
    if any(condition[position] == ";" for position, _ in duckdb.tokenize(condition)):
        raise ValueError(f"{spec.name}: entity_filter {condition!r} must be one condition, without a semicolon")
    return f"\n{condition}\n"


def event_columns(spec: FeatureTableSpec, columns: list[str]) -> list[str]:
    """The columns of the SQL's rows that its own-row lookups and its trailing windows read, in their order."""
    wanted: set[str] = set()
    for lookup in spec.lookups:
        if lookup.sql is None:
            wanted |= {*lookup.by, lookup.known_at, *lookup.columns, *lookup.value_known_at.values()}
    for window in spec.windows:
        wanted |= {*window.by, window.known_at, window.value}
    return [c for c in columns if c in wanted]


def covered_rows(spec: FeatureTableSpec) -> str:
    """The entity rows the table covers, in words, to follow "rows of": ``flights`` or ``flights where `tailnum IS
    NOT NULL```."""
    return f"{spec.inputs[0]} where `{spec.entity_filter}`" if spec.entity_filter else spec.inputs[0]


def covered(spec: FeatureTableSpec) -> pl.Expr:
    """Which rows of :func:`feature_rows` get a feature row (all of them without an ``entity_filter``)."""
    return pl.col(COVERED) if spec.entity_filter else pl.lit(True)


#: What the point-in-time columns of every feature table are: naive UTC instants (the local time naive at the
#: spec's zone). A string or a zoned timestamp there failed deep in the engine's as-of joins.
TIME_TYPE = "TIMESTAMP"


def sql_problems(spec: FeatureTableSpec, feed: FeedSpec) -> list[str]:
    """What is wrong with ``spec``'s SQL (and its lookups' SQL) against the feed's declared tables: it does not run
    (a syntax error, a column the tables lack), a column the spec names and the engine does not add is missing, or a
    time column is no TIMESTAMP. Runs the SQL on empty copies of the ``validated`` tables, in memory (~20 ms): the
    definitions refuse a broken spec when they load, not a run's feature step after the ingest."""
    from mlops_assets.core.ingest import data_table_columns

    params = {"context_first": "2000-01", "target_last": "2000-01", "context_start": datetime(2000, 1, 1)}
    with duckdb.connect() as conn:
        conn.execute("CREATE SCHEMA validated")
        for table in feed.tables:
            columns = ", ".join(f'"{c}" {t}' for c, t in data_table_columns(table).items())
            conn.execute(f"CREATE TABLE validated.{table.name} ({columns})")

        def shape(sql: str, what: str) -> dict[str, str] | str:
            try:
                relation = conn.sql(sql, params=used_params(sql, params) or None)
                return {c: str(t) for c, t in zip(relation.columns, relation.types, strict=True)}
            except duckdb.Error as error:
                return f"{what} does not run on the feed's validated tables: {str(error).splitlines()[0]}"

        made = shape(spec.sql, f"its SQL ({spec.sql_path})")
        if isinstance(made, str):
            return [made]
        engine = {c for lookup in spec.lookups for c in lookup.outputs} | {c for w in spec.windows for c in w.outputs}
        needed = [c for c in spec.output_columns if c not in engine and c != "_month"] + ["_month"]
        needed += [c for w in spec.windows for c in (*w.by, w.known_at, w.value)]
        problems = []
        for lookup in spec.lookups:
            right = made if lookup.sql is None else shape(lookup.sql, f"lookup {lookup.name}'s SQL ({lookup.sql_path})")
            if isinstance(right, str):
                problems.append(right)
                continue
            wanted = (*lookup.by, lookup.known_at, *lookup.columns, *lookup.value_known_at.values())
            lacking = sorted({c for c in wanted if c not in right})
            if lacking:
                problems.append(f"lookup {lookup.name} reads {lacking}, which its rows lack")
            needed += [c for c in lookup.by if c not in needed]
        lacking = sorted({c for c in needed if c not in made})
        if lacking:
            problems.append(f"its SQL ({spec.sql_path.name}) gives no column {', '.join(lacking)}")
        for column in dict.fromkeys((spec.time_column, spec.label_known_at, spec.local_time_column)):
            if column in made and made[column] != TIME_TYPE:
                problems.append(
                    f"{column} is {made[column]}, not {TIME_TYPE} (a naive UTC instant; the local time naive at "
                    f"{spec.time_zone})"
                )
        return problems


def used_params(sql: str, params: dict[str, object]) -> dict[str, object]:
    """The parameters a query names (DuckDB refuses unused named parameters)."""
    return {name: value for name, value in params.items() if re.search(rf"\${name}\b", sql)}


def write_month(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, month: str) -> pl.DataFrame:
    """Build one month and replace its partition in ``features.<name>`` in one transaction; return the rows written.

    When the output's shape changed (a new feature-set version with other columns), the table is recreated with the
    new shape, and other months are gone from it until they are materialized again.
    """
    frame = compute_features(conn, spec, month)
    name = ensure_table_like(conn, "features", spec.name, frame)
    replace_where(conn, name, frame, "_month = ?", [month])
    return frame


class FeatureBuildError(RuntimeError):
    """A build whose rows break the one-row rule: rolled back, never published."""

    def __init__(self, spec: FeatureTableSpec, problems: list[str]) -> None:
        super().__init__(
            f"features.{spec.name} not published (the months keep their last good build): {'; '.join(problems)}"
        )
        self.problems = problems


def one_row_problems(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, months: list[str]) -> list[str]:
    """What breaks the one-row rule in ``months`` of ``features.<name>``: exactly one row per validated entity row
    (through the spec's ``entity_filter``), unique keys, a label of 0 or 1 on every row, the current feature-set
    version."""
    entity_table = spec.inputs[0]
    version = feature_set_version(spec)
    features, source = qualified("features", spec.name), qualified("validated", entity_table)
    keys = ", ".join(f'"{k}"' for k in spec.key)
    # one grouped query per table for all the months (a query per month scanned the tables each time)
    counted = {
        month: rest
        for month, *rest in conn.execute(
            f"""SELECT _month, count(*), count(DISTINCT ({keys})), count(*) FILTER ({spec.label} IS NULL),
                       count(*) FILTER ({VERSION_COLUMN} <> ?),
                       count(*) FILTER ({spec.label} IS NOT NULL
                                       AND coalesce(TRY_CAST({spec.label} AS DOUBLE) NOT IN (0, 1), true))
                FROM {features} WHERE list_contains(?, _month) GROUP BY _month""",
            [version, months],
        ).fetchall()
    }
    in_scope = f"AND ({entity_condition(spec)})" if spec.entity_filter else ""
    validated = dict(
        conn.execute(
            f"SELECT _month, count(*) FROM {source} WHERE list_contains(?, _month) {in_scope} GROUP BY _month",
            [months],
        ).fetchall()
    )
    rows = covered_rows(spec)
    problems: list[str] = []
    for month in months:
        built, distinct, unlabeled, stale, not_binary = counted.get(month, (0, 0, 0, 0, 0))
        expected = validated.get(month, 0)
        if built != expected:
            problems.append(f"{month}: {built} feature rows for {expected} validated rows of {rows}")
        if distinct != built:
            problems.append(f"{month}: {built - distinct} duplicate keys")
        if unlabeled:
            problems.append(f"{month}: {unlabeled} rows without a label")
        if not_binary:
            # a label of minutes or hours trains, and even passes the gates, with metrics that mean nothing
            problems.append(
                f"{month}: {not_binary} rows whose label {spec.label} is not 0 or 1 (models here are binary "
                f"classifiers: the feature SQL of {spec.name} gives 1 for the outcome, 0 otherwise)"
            )
        if stale:
            problems.append(f"{month}: {stale} rows from another feature-set version")
    return problems


def write_months(
    conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, months: list[str], chunk: int = 12
) -> dict[str, int]:
    """Build several months and replace their partitions; return rows per month.

    Consecutive months are built together, up to ``chunk`` at a time (one query and one pass of the engine instead of
    one per month): the result is the same as month by month, which the tests hold every feature table to. The rows
    are checked (:func:`one_row_problems`) before the transaction commits: a build that breaks the rule raises
    :class:`FeatureBuildError` and is rolled back, so no reader ever sees it and the last good build stays.
    """
    rows: dict[str, int] = {}
    # one transaction for every month of the call, a table recreated for a new shape included (DuckDB's DDL is
    # transactional): a run killed half-way leaves the table as it was. A build of many months uses every core and
    # the most memory of a run: one at a time; a month's build (the monthly refresh: flat as history grows) is light
    with all_cores() if len(months) > 1 else nullcontext(), transaction(conn):
        for group in _consecutive_groups(sorted(months), chunk):
            frame = compute_features(conn, spec, group[0], group[-1])
            name = ensure_table_like(conn, "features", spec.name, frame)
            # the group's months are consecutive, so the range names exactly them; one insert of the group instead of
            # one per month (DuckDB: 120 monthly inserts of a feature table took 6.2 s, one insert of the same rows 3.6)
            replace_where(conn, name, frame, "_month BETWEEN ? AND ?", [group[0], group[-1]])
            counts = dict(frame.group_by("_month").len().iter_rows())
            rows.update({month: counts.get(month, 0) for month in group})
        problems = one_row_problems(conn, spec, sorted(months))
        if problems:
            raise FeatureBuildError(spec, problems)  # inside the transaction: rolled back
    return rows


def _consecutive_groups(months: list[str], chunk: int) -> list[list[str]]:
    groups: list[list[str]] = []
    for month in months:
        if groups and len(groups[-1]) < chunk and shift_month(groups[-1][-1], 1) == month:
            groups[-1].append(month)
        else:
            groups.append([month])
    return groups
