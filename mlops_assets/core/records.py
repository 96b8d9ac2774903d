"""Typed records of what monitoring and evaluation hand on: to the sensors, to promotion, to rollback.

Each record is a frozen dataclass written by ``to_json`` and read by ``from_json``, nothing else, through one strict
codec driven by the field annotations. Reading refuses, with :class:`RecordError` naming the record, the field and what
was found: a missing field, an unknown one (a renamed field must never read as "absent" and quietly switch a rule
off), a wrong schema name or version, and a value of the wrong type (``None`` where a value is required, a string for
a number, JSON ``true`` for an integer). A value that is not known is ``None`` (JSON null), never a placeholder such as
``-1.0`` or ``"None"``; floats must be finite (JSON has no NaN), so an undefined metric (an AUC on one class) is
``None``. Construction checks the same rules, so a record that exists can always be written and read back.

Top-level records carry ``schema`` and ``schema_version`` beside their fields; nested records (:class:`VariantLive`,
:class:`SliceResult`) are versioned by the record that holds them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    import polars as pl

    from mlops_assets.core.drift import DriftVerdict

SCHEMA_KEY, SCHEMA_VERSION_KEY = "schema", "schema_version"
#: The variants of a live summary: the champion answers, a challenger may answer a share, a shadow is only recorded.
VARIANTS = ("champion", "challenger", "shadow")
#: The metrics every evaluated role (challenger / champion) must have (None when undefined on the test month).
REQUIRED_METRICS = ("roc_auc", "pr_auc", "log_loss", "base_rate")


class RecordError(ValueError):
    """A record (or its JSON) does not match its schema: the message names the record, the field and what was found."""


# --- the codec -----------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _optional_of(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"records support X | None only, not {tp}")
    return None


def _convert(value: Any, tp: Any, where: str, decoding: bool) -> Any:
    """``value`` checked against the annotation ``tp`` and normalized (plain ``float``/``int``, tuples); nested records
    are built from JSON objects when ``decoding``. Raises :class:`RecordError` naming ``where``."""
    inner = _optional_of(tp)
    if inner is not None:
        return None if value is None else _convert(value, inner, where, decoding)

    def wrong(expected: str = "") -> RecordError:
        return RecordError(f"{where}: expected {expected or _type_name(tp)}, found {_describe(value)}")

    if tp is bool:
        if type(value) is not bool:  # 1 is not a bool
            raise wrong()
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):  # JSON true is not an int, nor is 3.0
            raise wrong()
        return int(value)
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise wrong()
        if not math.isfinite(value):
            raise wrong("a finite float (an undefined value is None)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return str(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list | tuple):
            raise wrong("a list")
        return tuple(_convert(v, args[0], f"{where}[{i}]", decoding) for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise wrong("a list")
        return [_convert(v, args[0], f"{where}[{i}]", decoding) for i, v in enumerate(value)]
    if origin is dict and args[0] is str:
        if not isinstance(value, Mapping):
            raise wrong("an object")
        for key in value:
            if not isinstance(key, str):
                raise RecordError(f"{where}: keys must be strings, found {_describe(key)}")
        return {k: _convert(v, args[1], f"{where}[{k!r}]", decoding) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        if isinstance(value, tp):
            return value  # checked when it was built
        if decoding and isinstance(value, Mapping):
            return tp._decode(value, where)
        raise wrong(f"a {tp.__name__} object" if decoding else "")
    raise TypeError(f"{where}: records do not support the annotation {tp}")


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls: type[Record]) -> dict[str, Any]:
    """Field name -> resolved annotation, in declaration order (resolved once per class)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        found = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        if cls.SCHEMA is not None and {SCHEMA_KEY, SCHEMA_VERSION_KEY} & set(found):
            raise TypeError(f"{cls.__name__}: {SCHEMA_KEY!r} and {SCHEMA_VERSION_KEY!r} are reserved field names")
        _HINTS[cls] = found
    return _HINTS[cls]


@dataclass(frozen=True)
class Record:
    """Base of the records: strict construction, ``to_json`` and ``from_json``. Subclasses are frozen dataclasses;
    top-level ones set ``SCHEMA`` and ``VERSION``."""

    SCHEMA: ClassVar[str | None] = None
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field_name, tp in _field_types(type(self)).items():
            value = _convert(getattr(self, field_name), tp, f"{name}.{field_name}", decoding=False)
            object.__setattr__(self, field_name, value)  # normalized: plain floats, tuples
        self._check()

    def _check(self) -> None:
        """Rules across fields (raise :class:`RecordError`); none by default."""

    @classmethod
    def _upgrade(cls, version: int, values: dict[str, Any], where: str) -> dict[str, Any]:
        """The fields of a record written at an earlier ``version``, as this version has them. Refused by default: a
        record whose shape changed says here how to read its earlier versions."""
        raise RecordError(f"{where}: {cls.SCHEMA} {SCHEMA_VERSION_KEY} is {version}, this code reads {cls.VERSION}")

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (``schema`` and ``schema_version`` first for top-level records)."""
        header = {SCHEMA_KEY: self.SCHEMA, SCHEMA_VERSION_KEY: self.VERSION} if self.SCHEMA is not None else {}
        return {**header, **{name: _encode(getattr(self, name)) for name in _field_types(type(self))}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The record from what :meth:`to_json` wrote; :class:`RecordError` on any mismatch (see the module doc)."""
        return cls._decode(data, cls.__name__)

    @classmethod
    def _decode(cls, data: Any, where: str) -> Self:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected a JSON object, found {_describe(data)}")
        values = dict(data)
        if cls.SCHEMA is not None:
            schema, version = values.pop(SCHEMA_KEY, None), values.pop(SCHEMA_VERSION_KEY, None)
            if schema != cls.SCHEMA:
                raise RecordError(f"{where}: {SCHEMA_KEY} is {schema!r}, expected {cls.SCHEMA!r}")
            if type(version) is not int or version > cls.VERSION or version < 1:
                raise RecordError(
                    f"{where}: {cls.SCHEMA} {SCHEMA_VERSION_KEY} is {version!r}, this code reads {cls.VERSION}"
                )
            if version < cls.VERSION:  # written by earlier code: brought up to this version, or refused by name
                values = cls._upgrade(version, values, where)
        expected = _field_types(cls)
        missing = [n for n in expected if n not in values]
        unknown = [n for n in values if n not in expected]
        if missing or unknown:
            problems = [f"missing field(s) {', '.join(missing)}"] if missing else []
            if unknown:
                problems.append(f"unknown field(s) {', '.join(map(str, unknown))} (renamed, or another version?)")
            raise RecordError(f"{where}: " + "; ".join(problems))
        return cls(**{n: _convert(values[n], tp, f"{where}.{n}", decoding=True) for n, tp in expected.items()})


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float inside it (dicts, lists, tuples) made None, so that it is strict JSON
    (``allow_nan=False``): a metric that could not be computed, such as the AUC of validation weeks holding one class,
    is null to a JSON parser, never the ``NaN`` token that only Python reads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _defined(value: float | None, digits: int | None = None) -> float | None:
    """None for a missing or undefined (NaN) number, else the float (rounded when ``digits`` is given)."""
    if value is None or math.isnan(value):
        return None
    return round(float(value), digits) if digits is not None else float(value)


# --- drift ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftSummary(Record):
    """A month's drift verdict against the champion that scored it (what the drift sensor reads).

    ``champion_version`` is None when there was no champion (then nothing was compared: ``drift_share`` is None);
    ``score_drift`` is None when no scores were compared, ``label_rate`` when the month had no labels.
    """

    SCHEMA = "drift_summary"
    VERSION = 1

    month: str
    champion_version: str | None
    drifted: bool
    drift_share: float | None
    drifted_features: tuple[str, ...]
    top_drifted: str
    score_drift: float | None
    label_rate: float | None
    reason: str

    @classmethod
    def from_verdict(cls, month: str, version: str, verdict: DriftVerdict) -> DriftSummary:
        """The summary of a verdict against champion ``version``'s reference profile."""
        label_rate = verdict.label.current_mean if verdict.label else None
        return cls(
            month=month,
            champion_version=version,
            drifted=bool(verdict.drifted),
            drift_share=round(verdict.drift_share, 4),
            drifted_features=tuple(verdict.drifted_features),
            top_drifted=", ".join(f"{c.column} ({c.statistic:.2f})" for c in verdict.top(3)),
            score_drift=_defined(verdict.scores.statistic, 4) if verdict.scores else None,
            label_rate=_defined(label_rate, 4),
            reason=verdict.reason,
        )

    @classmethod
    def no_champion(cls, month: str) -> DriftSummary:
        """No champion, so no reference profile: nothing compared, no drift."""
        return cls(month, None, False, None, (), "", None, None, "no champion yet")

    @classmethod
    def trained_on(cls, month: str, version: str) -> DriftSummary:
        """The champion learnt from the month (nobody scored it): its training rows are its reference, so nothing
        is compared and no model is judged on it (``champion_version`` None, as with no champion)."""
        return cls(month, None, False, None, (), "", None, None, f"{version} trained on {month}: nothing compared")


# --- live performance ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantLive(Record):
    """One source's and variant's live numbers on a month's labelled rows (a row of ``live_performance``).

    ``rows`` are the labelled rows it answered, ``requests`` every prediction asked of it in the month, answered or
    failed, labelled or not (so never fewer than ``rows``; read from a live_summary version 1, which did not count
    them, it is the least its rows and error rate imply). ``live_roc_auc`` is None when the month's labelled rows
    have one class; ``evaluation_roc_auc`` when the version was never evaluated; ``auc_drop`` (evaluation minus live
    AUC) when either is None.
    """

    version: str
    rows: int
    requests: int
    live_roc_auc: float | None
    live_log_loss: float | None
    score_std: float
    share_above_0_99: float
    share_below_0_01: float
    error_rate: float
    evaluation_roc_auc: float | None
    auc_drop: float | None

    def _check(self) -> None:
        if self.requests < self.rows:
            raise RecordError(f"VariantLive.requests: {self.requests} requests cannot have answered {self.rows} rows")
        if self.auc_drop is not None and (self.live_roc_auc is None or self.evaluation_roc_auc is None):
            raise RecordError(f"VariantLive.auc_drop: {self.auc_drop} without both a live and an evaluation AUC")


@dataclass(frozen=True)
class FallbackLive(Record):
    """The version a rollback of the month's champion would go to, scored on the same labelled rows as the champion's
    batch (``live_roc_auc`` None when they have one class): whether going back would help on this month. Its scores'
    spread and extreme shares there (live_summary version 4; None in a record from before) tell a month that moves
    every model's scores from a champion whose outputs broke."""

    version: str
    rows: int
    live_roc_auc: float | None
    score_std: float | None
    share_above_0_99: float | None
    share_below_0_01: float | None

    def scores_reference(self) -> dict[str, float | None]:
        """Its scores on the month's rows in the shape of a reference profile's ``scores`` (what the rollback rule
        judges a champion's outputs against)."""
        return {
            "std": self.score_std,
            "share_above_0_99": self.share_above_0_99,
            "share_below_0_01": self.share_below_0_01,
        }


@dataclass(frozen=True)
class LiveSummary(Record):
    """A month's live quality (what the performance and rollback sensors read): ``batch`` from the month's batch
    scores (every flight, scored by the models serving when it landed), ``online`` from the serving log; each by
    variant (champion / challenger / shadow). ``rows`` is the batch's labelled rows. ``fallback``: the rollback
    target on the champion's rows (None: no champion scored the month, no target, or the target trained on it)."""

    SCHEMA = "live_summary"
    VERSION = 4  # 2: each variant's ``requests``; 3: ``fallback``; 4: the fallback's score spread and extreme shares

    month: str
    rows: int
    batch: dict[str, VariantLive]
    online: dict[str, VariantLive]
    fallback: FallbackLive | None = None

    def _check(self) -> None:
        for source, variants in (("batch", self.batch), ("online", self.online)):
            unknown = sorted(set(variants) - set(VARIANTS))
            if unknown:
                raise RecordError(f"LiveSummary.{source}: unknown variant(s) {unknown}, expected some of {VARIANTS}")

    @classmethod
    def _upgrade(cls, version: int, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Version 1 did not count requests: each variant gets the least number its answered rows and error rate
        imply (``rows / (1 - error_rate)``, at least 1 with a failure), so its error rate is judged only when that
        bound reaches the rule's floor: a version-1 total outage (no answered row) is not. A version-1 variant that
        has ``requests`` is refused (not version 1). Versions 1 and 2 scored no rollback target: ``fallback`` None
        (the rollback rule then goes back as it did before). Version 3 did not keep the target's scores: their spread
        and shares None (the rule then rolls back for broken outputs, as version 3's did)."""
        if version == 3:
            fallback = values.get("fallback")
            if not isinstance(fallback, Mapping):
                return values  # None, or refused by the strict reading that follows
            scored = {"score_std", "share_above_0_99", "share_below_0_01"}
            if scored & set(fallback):
                raise RecordError(
                    f"{where}.fallback: unknown field(s) {', '.join(sorted(scored & set(fallback)))} in a live_summary "
                    "version 3 (another version?)"
                )
            return {**values, "fallback": {**fallback, **dict.fromkeys(sorted(scored))}}
        if version not in (1, 2):
            return super()._upgrade(version, values, where)
        if "fallback" in values:
            raise RecordError(
                f"{where}: unknown field(s) fallback in a live_summary version {version} (another version?)"
            )
        upgraded = {**values, "fallback": None}
        if version == 2:
            return upgraded
        for source in ("batch", "online"):
            variants = values.get(source)
            if not isinstance(variants, Mapping):
                continue  # refused by the strict reading that follows
            upgraded[source] = {
                name: _version_1_variant(v, f"{where}.{source}[{name!r}]") for name, v in variants.items()
            }
        return upgraded

    @property
    def champion(self) -> VariantLive | None:
        """The champion's batch numbers (None: no champion scored the month)."""
        return self.batch.get("champion")

    @property
    def champion_version(self) -> str | None:
        """The champion that scored the month's batch (None: none did)."""
        return self.champion.version if self.champion else None

    @property
    def online_champion(self) -> VariantLive | None:
        """The champion's numbers in the serving log (None: it served no labelled request that month)."""
        return self.online.get("champion")

    @classmethod
    def empty(cls, month: str) -> LiveSummary:
        """Nothing scored (or nothing labelled) in ``month``."""
        return cls(month, 0, {}, {})

    @classmethod
    def from_table(cls, month: str, table: pl.DataFrame) -> LiveSummary:
        """The summary of ``core.monitoring.live_performance`` tables concatenated over sources (columns ``source``,
        ``variant``, ``model_version``, ``rows``, ``requests``, ``roc_auc``, ``log_loss``, ``score_std``,
        ``share_above_0_99``, ``share_below_0_01``, ``error_rate``, ``evaluation_roc_auc``, ``auc_drop``).

        A variant that served two versions in the month (online: a promotion or rollback mid-month) keeps the later
        row, which is the version that served last (``live_performance`` orders them so). AUCs are rounded to 4
        digits, shares to 6.
        """
        if table.height == 0:
            return cls.empty(month)
        by_source: dict[str, dict[str, VariantLive]] = {"batch": {}, "online": {}}
        for row in table.iter_rows(named=True):
            if row["source"] not in by_source:
                raise RecordError(
                    f"LiveSummary: unknown source {row['source']!r} in the live table (expected batch or online)"
                )
            by_source[row["source"]][row["variant"]] = VariantLive(
                version=row["model_version"],
                rows=int(row["rows"]),
                requests=int(row["requests"]),
                live_roc_auc=_defined(row["roc_auc"], 4),
                live_log_loss=_defined(row["log_loss"], 4),
                score_std=round(float(row["score_std"]), 6),
                share_above_0_99=round(float(row["share_above_0_99"]), 6),
                share_below_0_01=round(float(row["share_below_0_01"]), 6),
                error_rate=round(float(row["error_rate"]), 6),
                evaluation_roc_auc=_defined(row["evaluation_roc_auc"], 4),
                auc_drop=_defined(row["auc_drop"], 4),  # NaN (one class) or null (never evaluated): None
            )
        rows = max((v.rows for v in by_source["batch"].values()), default=0)
        return cls(month, rows, by_source["batch"], by_source["online"])


def _version_1_variant(variant: Any, where: str) -> Any:
    """A live_summary version 1 variant with the least ``requests`` its rows and error rate imply."""
    if not isinstance(variant, Mapping):
        return variant  # refused by the strict reading that follows
    if "requests" in variant:
        raise RecordError(
            f"{where}: unknown field(s) requests in a live_summary version 1 (renamed, or another version?)"
        )
    rows, rate = variant.get("rows"), variant.get("error_rate")
    if type(rows) is not int or not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        # the strict reading that follows refuses the variant, naming the field that is wrong
        return {**variant, "requests": rows if type(rows) is int else 0}
    # version 1 rounded the rate to 6 digits: the least it stood for, so the count is never more than it was
    least_rate = max(0.0, rate - 5e-7)
    implied = math.floor(rows / (1 - least_rate)) if least_rate < 1 else rows
    return {**variant, "requests": max(implied, rows, 1 if rate > 0 else 0)}  # a failure is a request


# --- evaluation ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceResult(Record):
    """One slice value on the test month: rows, positives and each model's AUC and log loss (AUC None when the slice
    has one class; champion None without a champion)."""

    slice: str
    value: str
    rows: int
    positives: int
    base_rate: float
    challenger_auc: float | None
    champion_auc: float | None
    challenger_log_loss: float
    champion_log_loss: float | None


@dataclass(frozen=True)
class EvaluationResult(Record):
    """The challenger and the champion it was compared with, scored on the same held-out month: what promotion and
    the live-quality rules read.

    ``metrics`` maps role (challenger / champion) to ``core.evaluation.metrics`` (an open set: metric -> value, None
    when undefined on the test month); the champion role is there exactly when ``champion_version`` is set (None: no
    champion yet). ``challenger_score_problem`` is ``core.policy.scores_are_sane`` of the challenger's scores.
    """

    SCHEMA = "evaluation"
    VERSION = 1

    model: str
    challenger_version: str
    champion_version: str | None
    test_month: str
    metrics: dict[str, dict[str, float | None]]
    slices: tuple[SliceResult, ...]
    challenger_score_problem: str | None

    def _check(self) -> None:
        roles = set(self.metrics)
        expected = {"challenger", *(["champion"] if self.champion_version is not None else [])}
        if roles != expected:
            raise RecordError(
                f"EvaluationResult.metrics: roles {sorted(roles)}, expected {sorted(expected)} "
                f"(champion_version is {self.champion_version!r})"
            )
        for role, values in self.metrics.items():
            missing = [m for m in REQUIRED_METRICS if m not in values]
            if missing:
                raise RecordError(f"EvaluationResult.metrics[{role!r}]: missing metric(s) {', '.join(missing)}")

    @classmethod
    def from_evaluation(
        cls,
        model: str,
        challenger_version: str,
        champion_version: str | None,
        test_month: str,
        metrics: Mapping[str, Mapping[str, float]],
        slices: pl.DataFrame | Iterable[Mapping[str, Any]],
        challenger_score_problem: str | None,
    ) -> EvaluationResult:
        """The record of an evaluation run: ``metrics`` by role from ``core.evaluation.metrics`` and ``slices`` as
        ``core.evaluation.slice_metrics`` returns them (NaN becomes None)."""
        rows = slices.to_dicts() if hasattr(slices, "to_dicts") else list(slices)
        return cls(
            model=model,
            challenger_version=challenger_version,
            champion_version=champion_version,
            test_month=test_month,
            metrics={role: {k: _defined(v) for k, v in values.items()} for role, values in metrics.items()},
            slices=tuple(
                SliceResult(
                    slice=s["slice"],
                    value=s["value"],
                    rows=int(s["rows"]),
                    positives=int(s["positives"]),
                    base_rate=float(s["base_rate"]),
                    challenger_auc=_defined(s["challenger_auc"]),
                    champion_auc=_defined(s.get("champion_auc")),
                    challenger_log_loss=float(s["challenger_log_loss"]),
                    champion_log_loss=_defined(s.get("champion_log_loss")),
                )
                for s in rows
            ),
            challenger_score_problem=challenger_score_problem,
        )

    def metric(self, role: str, name: str) -> float:
        """One metric of one role; :class:`RecordError` when the role was not evaluated or the metric is absent or
        undefined (None)."""
        values = self.metrics.get(role)
        if values is None:
            raise RecordError(
                f"EvaluationResult: no {role!r} in the evaluation of {self.challenger_version} "
                f"(roles: {', '.join(self.metrics)})"
            )
        value = values.get(name)
        if value is None:
            state = "undefined on the test month" if name in values else "absent"
            raise RecordError(f"EvaluationResult.metrics[{role!r}][{name!r}]: {state}")
        return value

    def roc_auc(self, role: str) -> float:
        """The ROC AUC of ``role`` (see :meth:`metric`)."""
        return self.metric(role, "roc_auc")

    def pr_auc(self, role: str) -> float:
        """The PR AUC (average precision) of ``role`` (see :meth:`metric`)."""
        return self.metric(role, "pr_auc")
