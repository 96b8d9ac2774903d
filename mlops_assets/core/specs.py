"""What a feed and a model are, as data.

* A :class:`FeedSpec` is what lands: its tables with their contracts, and how a replay lands its months.
* A :class:`FeatureTableSpec` is a point-in-time feature table over a feed's validated tables.
* A :class:`ModelSpec` names its feed, the feature table it trains on (with the label), its gates, slices and training
  parameters.

The platform (ingest, validation, feature store, drift, registry and serving) reads only these specs; the shipped feed
and models live in ``mlops_assets/feeds/`` and ``mlops_assets/models/``, each in its own package with its SQL, and are
registered in ``mlops_assets/catalog.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mlops_assets.core.features.pit import AsOfLookup, TrailingWindow
from mlops_assets.core.landing import LandedFile
from mlops_assets.core.policy import PromotionGates
from mlops_assets.core.store import BATCH_LOG, DATA_SCHEMAS, WAREHOUSE_CATALOG

if TYPE_CHECKING:  # pandera is imported where a contract is built: most processes never build one
    import pandera.polars as pa

#: A model's name is a DuckDB schema, a Dagster asset-key prefix and part of job and sensor names.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: Names a model cannot take, as its schema, key prefix or UI group would be another's: the feeds' stages (``landing/``,
#: the warehouse's data schemas, their asset groups), DuckDB's own schemas and catalogs, and the warehouse's catalog (a schema of the same name
#: makes ``warehouse.x`` ambiguous to DuckDB, as ``memory.x``, ``temp.x`` and ``system.x``: a binder error in a run).
#: The feeds' asset groups in the UI (a model's assets form a group of its name: the same name would merge them).
FEED_GROUPS = ("landing", "ingest", "validate", "features")
RESERVED_MODEL_NAMES = frozenset(
    {"landing", *FEED_GROUPS, *DATA_SCHEMAS, WAREHOUSE_CATALOG}
    | {"main", "information_schema", "pg_catalog", "temp", "system", "memory"}
)
#: Names a feed's table cannot take: the batch log (``quarantine.batches``) sits beside each ``quarantine.<table>``.
RESERVED_TABLE_NAMES = frozenset({BATCH_LOG[1]})


#: The column that holds a row's partition month (``YYYY-MM``) in the frames a contract checks: a contract can hold
#: each row to its own partition, so one call checks many months at once (``core/ingest.validate_partitions``).
PARTITION_COLUMN = "_month"


def of_partition(part: str) -> pa.Check:
    """A pandera check that the column equals the ``year`` or ``month`` (``part``) of the row's partition."""
    import pandera.polars as pa

    start, length = {"year": (0, 4), "month": (5, 2)}[part]
    expected = pl.col(PARTITION_COLUMN).str.slice(start, length).cast(pl.Int64)
    return pa.Check(
        lambda data: data.lazyframe.select((pl.col(data.key) == expected).fill_null(False)), name=f"{part}_of_partition"
    )


@dataclass(frozen=True)
class ContractContext:
    """What a contract may depend on besides the batch: its partition month, the known codes of reference tables and,
    per plausibility rule of the table (:class:`ShareRule`, by name), its share in each accepted month but this one.

    Row rules about the partition read it from each row's :data:`PARTITION_COLUMN` (see :func:`of_partition`), not
    from ``month``: the same contract then checks one month or many in one call.
    """

    month: str | None = None
    codes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    history: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: For a reference table: per column, the codes accepted rows of other tables use (``FeedSpec.code_users``). A
    #: batch that drops one is rejected whole: accepted months would lose rows to a new reference file.
    still_used: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # compared by identity: a polars expression's == builds an expression
class ShareRule:
    """A batch-level rule: the share of a batch's rows that meet ``rows`` must be plausible against the same share in
    the months accepted so far. Meant for outcome columns (labels and what they are computed from), whose nulls or
    rates no row rule can judge: an all-null ``arr_delay`` is valid row by row, yet turns every label into 1.

    A batch is implausible when its share is above ``min_share`` (small shares move a lot from month to month) and
    above ``max_ratio`` x the median of the history; with ``two_sided``, also when it is below the median /
    ``max_ratio`` while that median is above ``min_share`` (a rate that collapses). With fewer than ``min_history``
    accepted months there is nothing to compare with: only a share above ``max_share_without_history`` is implausible.

    Feature inputs too: a month of all-null weather is valid row by row, yet every model would score, monitor and
    retrain on a month without weather (its drift looked like the model's collapse, and took it out of service).

    Attributes:
        name: what is counted, for people, e.g. ``"arr_delay is null"``; also the key of the history.
        rows: a boolean polars expression over the table's columns; a null counts as false.
        label: whether the columns are labels (rule ``label_implausible``) or feature inputs (``values_implausible``).
    """

    name: str
    rows: pl.Expr
    max_ratio: float = 3.0
    min_share: float = 0.10
    max_share_without_history: float = 0.5
    min_history: int = 1
    two_sided: bool = False
    label: bool = True

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the rule reads (its history is read from these columns of the validated table)."""
        return tuple(dict.fromkeys(self.rows.meta.root_names()))


@dataclass(frozen=True)
class TableSpec:
    """A source table: its landed schema, its key, its row rules and where its known codes come from.

    Attributes:
        name: table name in every schema (``raw.<name>``, ``validated.<name>``, ``quarantine.<name>``).
        columns: the landed schema, column -> polars dtype. A batch whose columns or types differ is rejected whole.
        key: columns that identify a row. Exact copies of a row are quarantined and the row itself flows; rows that
            share a key but differ are all quarantined (which one is true is unknown).
        monthly: True for a monthly batch (one partition per month), False for a reference table replaced whole.
        rules: builds the pandera row rules (column -> ``pa.Column``) for a batch; the key and schema are added for you.
        code_sources: code name -> (reference table, column), e.g. ``{"carrier": ("airlines", "carrier")}``; the codes
            are read from the validated reference table and handed to ``rules`` through the context.
        max_bad_share: a batch with a larger share of bad rows is rejected whole.
        plausibility: batch-level rules held against the history of accepted months (see :class:`ShareRule`); a batch
            that breaks one is rejected whole. Not compared (a polars expression has no equality).
        keeps: for a reference table, column -> the (table, column) pairs of other tables that look its values up:
            a new version must keep every value it held that their accepted rows use (``codes_still_used``), as it
            must for the codes other tables are checked against (``code_sources``). E.g. an airports file that drops
            an airport flights fly to would move those flights' features to another time zone.
    """

    name: str
    columns: Mapping[str, type[pl.DataType] | pl.DataType]
    key: tuple[str, ...]
    monthly: bool
    rules: Callable[[ContractContext], dict[str, pa.Column]]
    code_sources: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    max_bad_share: float = 0.01
    description: str = ""
    plausibility: tuple[ShareRule, ...] = field(default=(), compare=False)
    keeps: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def contract(self, context: ContractContext) -> pa.DataFrameSchema:
        """The pandera schema of one batch: the row rules per column.

        Key uniqueness is judged by the contract's caller (``core/contracts.py``), not by pandera: pandera flags every
        row of a repeated key alike, while an exact copy (drop it, keep the row) and a conflict (keep neither) differ.
        """
        import pandera.polars as pa

        return pa.DataFrameSchema(self.rules(context), name=self.name)


@dataclass(frozen=True)
class OnlineSpec:
    """Serving a feature table: the request fields, the reference tables exported for them, and the mapping from
    requests to entity rows.

    Attributes:
        request_fields: field -> (python type, required, description) of one prediction request.
        key_fields: request fields that identify an entity (logged, and hashed for A/B assignment), in the order of
            the feature table's ``key`` when there are as many (a failed request is logged under that key).
        reference_sql: name -> SQL over the validated tables, exported with the online store (e.g. route distances).
        entities: (requests, reference frames) -> entity rows with the columns the feature SQL returns for the time
            and the features known in advance. The tests hold it to the SQL: same flight, same values.
        index: optional; builds lookups from the reference frames once, when a store loads.
        entity_rows: optional; the same rows for a few requests (as dicts) from that index, without data-frame
            joins (a served request costs microseconds instead of a millisecond). Tested equal to ``entities``.
        entity_dicts: optional; ``entity_rows`` as a list of dicts with the values its frame would hold (the
            service's few-request path skips building the frame). Tested equal to ``entity_rows``.
        field_patterns: request field -> regular expression the whole (trimmed) value must match, e.g. a code's
            form; anything else is refused (422 naming the field) before it reaches a lookup or the log.
        accepted_values: request field -> the only values accepted (a closed set, e.g. the airports the feed
            serves); anything else is refused.
        known_values: request field -> (reference frame, column) of the online store's export holding the values
            seen so far (an open set: new destinations appear). A well-formed value outside it is answered, and the
            answer and the prediction log name the field (``unknown_codes``).
        known_combinations: name -> (reference frame, request fields that are also its columns): values each known
            alone whose combination the export has never seen (a route flown from another airport), flagged under
            ``name`` in ``unknown_codes``: the features of that combination (a route's distance, its windows) are
            missing.
    """

    request_fields: Mapping[str, tuple[type, bool, str]]
    key_fields: tuple[str, ...]
    reference_sql: Mapping[str, str]
    entities: Callable[[pl.DataFrame, Mapping[str, pl.DataFrame]], pl.DataFrame]
    index: Callable[[Mapping[str, pl.DataFrame]], Any] | None = None
    entity_rows: Callable[[list[dict[str, Any]], Any], pl.DataFrame] | None = None
    entity_dicts: Callable[[list[dict[str, Any]], Any], list[dict[str, Any]]] | None = None
    field_patterns: Mapping[str, str] = field(default_factory=dict)
    accepted_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    known_values: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    known_combinations: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rules in (self.field_patterns, self.accepted_values, self.known_values):
            unknown = sorted(set(rules) - set(self.request_fields))
            if unknown:
                raise ValueError(f"online spec: rules for {unknown}, which are not request fields")
        for name, pattern in self.field_patterns.items():
            re.compile(pattern)  # a typo in a pattern fails when the spec is defined, not on the first request
            refused = [v for v in self.accepted_values.get(name, ()) if not re.fullmatch(pattern, v)]
            if refused:
                raise ValueError(f"online spec: accepted {name} values {refused} do not match {pattern}")
        for name, (frame, _) in self.known_values.items():
            if frame not in self.reference_sql:
                raise ValueError(f"online spec: known {name} values come from {frame!r}, not a reference frame")
        for name, (frame, fields) in self.known_combinations.items():
            if frame not in self.reference_sql or not set(fields) <= set(self.request_fields):
                raise ValueError(
                    f"online spec: known {name} combinations need a reference frame ({frame!r}) and request fields "
                    f"({list(fields)})"
                )


@dataclass(frozen=True)
class FeatureTableSpec:
    """A point-in-time feature table: one SQL file over validated tables plus declarative as-of lookups and trailing
    windows.

    The SQL returns one row per entity and prediction time for every month it is asked to read, with the features known
    in advance and the times at which its facts became known. It gets the bound parameters ``$context_first`` /
    ``$target_last`` (first and last month to read) and ``$context_start`` (timestamp before which no row may be read).
    The engine (``features/pit.py``) then adds the as-of lookups and the trailing windows, keeps the target months and
    the declared columns, and stamps the feature-set version.

    Features of one month must depend only on rows inside the look-back, so that building month by month equals one
    full build; the tests hold every feature table to that.

    Attributes:
        name: ``features.<name>``.
        sql_path: the feature SQL.
        inputs: source tables (validated) the SQL reads; the first is the entity table (one feature row per row).
        id_columns: columns that identify the entity (kept for joins and people, not all of them features).
        key: columns that make a row unique.
        label: the target column (not a feature); ``label_known_at`` says when it became known.
        time_column: the prediction time (UTC) every feature is computed as of.
        local_time_column: the entity's local time (e.g. the scheduled departure at the origin) that the training
            split cuts by, so that the test month is the feature table's ``_month``.
        time_zone: the zone of ``local_time_column`` (IANA name): split boundaries become UTC instants for the purge.
        lookback_days: how far before the month's first prediction time any feature may look.
        categorical / numeric: the feature columns, for training and drift.
        lookups: as-of lookups (another table's latest row, or the entity's own previous row) added by the engine.
        windows: trailing-window aggregates added by the engine.
        online: how a prediction request becomes the entity row the SQL would give (see :class:`OnlineSpec`);
            the as-of lookups and windows are then added by the same engine, from the online store's export.
        entity_filter: a DuckDB condition naming the entity rows the table covers (one feature row each), on columns
            the entity table and the SQL's output share (e.g. ``tailnum IS NOT NULL``); empty: every row. The others
            get no feature row, so no model of the table trains on, scores or is evaluated on them, while they still
            count as events of the trailing windows and lookups. For rows whose missing facts would give the label
            away; the one-row check counts the validated rows through it.
    """

    name: str
    sql_path: Path
    inputs: tuple[str, ...]
    id_columns: tuple[str, ...]
    key: tuple[str, ...]
    label: str
    label_known_at: str
    time_column: str
    local_time_column: str
    time_zone: str
    lookback_days: int
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    lookups: tuple[AsOfLookup, ...] = ()
    windows: tuple[TrailingWindow, ...] = ()
    online: OnlineSpec | None = None
    description: str = ""
    entity_filter: str = ""

    def __post_init__(self) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"feature table {self.name}: time_zone {self.time_zone!r} is no IANA time zone (e.g. "
                "'America/New_York'): fix its FeatureTableSpec"
            ) from None
        # a month is built from its own rows and lookback_days of context before it: a window or lookup reaching
        # further would see less in a monthly build than in a full one (the CATALOG test also catches what the label's
        # delay adds to that reach)
        lookback = timedelta(days=self.lookback_days)
        reaches = [(w.mean_name, w.window) for w in self.windows]
        reaches += [(lookup.name, lookup.max_age) for lookup in self.lookups if lookup.max_age is not None]
        too_far = [f"{name} ({reach})" for name, reach in reaches if reach > lookback]
        if too_far:
            raise ValueError(
                f"feature table {self.name}: lookback_days={self.lookback_days} is shorter than what "
                f"{', '.join(too_far)} reaches back: raise lookback_days in its FeatureTableSpec"
            )

    @property
    def sql(self) -> str:
        return self.sql_path.read_text()

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.categorical, *self.numeric)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Columns of ``features.<name>`` in order: ids, time, features, label, bookkeeping."""
        ordered = (*self.id_columns, self.time_column, *self.features, self.label, self.label_known_at, "_month")
        return tuple(dict.fromkeys(ordered))


ReplayProgress = Callable[[LandedFile, str, int], None]
#: (landing dir, months, every n-th entity row, progress) -> each landed file and what happened to it.
Replay = Callable[[Path, list[str], int, ReplayProgress | None], list[tuple[LandedFile, str]]]


@dataclass(frozen=True)
class FeedSpec:
    """What lands: source tables with their contracts, and (optionally) a replay that lands real months.

    The feed's ``raw.*``, ``validated.*`` and ``quarantine.*`` tables are built once, whatever the number of models
    reading them; its monthly tables share one dynamic partition set, ``<name>_months``.

    Attributes:
        name: the feed's name (lower case, digits and ``_``).
        tables: its tables; names are unique across every registered feed (they name DuckDB tables and landing folders).
        replay: lands months of real data as production would (``mlops replay``); None for a feed fed from outside.
        first_month / last_month: the months a replay can land.
    """

    name: str
    tables: tuple[TableSpec, ...]
    replay: Replay | None = None
    first_month: str | None = None
    last_month: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"feed name {self.name!r} must match {NAME_PATTERN.pattern}")
        for table in self.tables:
            if not NAME_PATTERN.match(table.name) or table.name in RESERVED_TABLE_NAMES:
                raise ValueError(
                    f"feed {self.name}: table name {table.name!r} must match {NAME_PATTERN.pattern} and not be "
                    f"{', '.join(sorted(RESERVED_TABLE_NAMES))} (the quarantine's batch log): rename the table"
                )

    @property
    def partitions_name(self) -> str:
        return f"{self.name}_months"

    def months_without_data(self, months: list[str]) -> list[str]:
        """Those of ``months`` outside the months a replay can land (none when the feed declares no bounds)."""
        return [m for m in months if not (self.first_month or m) <= m <= (self.last_month or m)]

    def table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"feed {self.name} has no table {name!r}; known: {[t.name for t in self.tables]}")

    def code_users(self, table: str) -> dict[str, list[tuple[str, str]]]:
        """Per column of the reference table ``table``: the (table, column) pairs whose values it vouches for
        (``code_sources`` of the other tables, for a code named as the column that holds it, and its own ``keeps``)."""
        users: dict[str, list[tuple[str, str]]] = {}
        for user in self.tables:
            for code, (source, column) in user.code_sources.items():
                if source == table and code in user.columns:
                    users.setdefault(column, []).append((user.name, code))
        for column, pairs in self.table(table).keeps.items():
            users.setdefault(column, []).extend(pair for pair in pairs if pair not in users.get(column, []))
        return users

    @property
    def monthly_tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if t.monthly)

    @property
    def reference_tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for t in self.tables if not t.monthly)


@dataclass(frozen=True)
class ModelSpec:
    """One model: the feed it reads, the feature table it trains on (its label and prediction time come with it), the
    promotion gates, the slices its evaluation and promotion judge separately (name -> expression over the feature
    rows) and its training parameters (overrides of the platform's defaults).

    Everything per model (asset keys, DuckDB schema, jobs, sensors, registry, online store, reports, prediction log,
    run tags) is scoped by ``name``.

    Attributes:
        positive: what a positive prediction means, in one word (``delayed``, ``cancelled``), for people.
    """

    name: str
    feed: FeedSpec
    features: FeatureTableSpec
    description: str
    positive: str
    slices: Mapping[str, pl.Expr] = field(default_factory=dict)
    gates: PromotionGates = field(default_factory=PromotionGates)
    params: Mapping[str, float | int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"model name {self.name!r} must match {NAME_PATTERN.pattern} (a schema and key prefix)")
        if self.name in RESERVED_MODEL_NAMES:
            raise ValueError(
                f"model name {self.name!r} is taken by the platform (a schema and key prefix of its own): choose "
                f"another; reserved: {', '.join(sorted(RESERVED_MODEL_NAMES))}"
            )
        missing = [t for t in self.features.inputs if t not in {s.name for s in self.feed.tables}]
        if missing:
            raise ValueError(
                f"model {self.name}: feature table {self.features.name} reads {missing}, not in feed {self.feed.name}"
            )
        # a slice is judged on the test rows of features.<name>: a column it lacks failed the evaluation only after
        # a challenger was registered
        columns = set(self.features.output_columns)
        for slice_name, expression in self.slices.items():
            unknown = sorted(set(expression.meta.root_names()) - columns)
            if unknown:
                raise ValueError(
                    f"model {self.name}: slice {slice_name!r} reads {unknown}, not columns of features."
                    f"{self.features.name} (its ids, time, features and label: {', '.join(sorted(columns))})"
                )
