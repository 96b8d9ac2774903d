"""The request schema, built from the feature table's ``OnlineSpec``: every served model gets its schema from its spec,
with no serving code.

A request body is one JSON object (one entity, e.g. a flight) or a JSON list of objects (a batch). Each object has
the spec's ``request_fields`` and an optional ``overrides`` object (feature name -> value, replacing the computed
feature, for what-if questions). Every rule names the field it rejects, and :meth:`RequestSchema.parse` turns any byte
string into either validated requests or a :class:`RequestError` (4xx), never an exception of another kind:

* strings: non-empty after trimming, at most 64 characters, printable (no control characters or lone surrogates);
* codes: a field with a pattern in the spec (``OnlineSpec.field_patterns``, e.g. a carrier's two capital letters or
  digits) must match it whole, and a field with accepted values (``OnlineSpec.accepted_values``, e.g. the origin
  airports the feed serves) must be one of them; both appear in the OpenAPI schema (``pattern``, ``enum``);
* integers: JSON integers (not ``true``, ``1.0`` or ``"1"``), positive and below 2**31 (identifiers such as a flight
  number);
* floats: finite JSON numbers; booleans: JSON ``true``/``false``;
* datetimes: an ISO 8601 string with a time, local time at the place (no UTC offset), year 1900-2100;
* unknown fields are refused (a typo in an optional field would otherwise be silently ignored);
* overrides: known feature names only; numeric features take finite numbers, categorical features strings; ``null``
  means "unknown" (as a missing value is in training).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, Strict, ValidationError, create_model

from mlops_assets.core.specs import FeatureTableSpec

OVERRIDES = "overrides"
MAX_STRING = 64
MAX_INT = 2**31 - 1
YEARS = (1900, 2100)
#: At most this many field errors are listed in one response (a 1000-flight batch of garbage stays readable).
MAX_ERRORS = 20

_POLARS_TYPES: dict[type, pl.DataType] = {
    str: pl.String(),
    int: pl.Int64(),
    float: pl.Float64(),
    bool: pl.Boolean(),
    datetime: pl.Datetime("us"),
    date: pl.Date(),
}


@dataclass(frozen=True)
class FieldError:
    """One rejected field: where (``flight``, ``overrides.temp``, ``[3].origin`` in a batch) and why."""

    field: str
    message: str


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` (4xx), a one-line ``message`` and the fields at fault."""

    def __init__(self, status: int, message: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)[:MAX_ERRORS]

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "errors": [{"field": e.field, "message": e.message} for e in self.errors]}


@dataclass(frozen=True)
class PredictionRequest:
    """One validated request: its fields (absent optional ones are None), its overrides and its entity key (the key
    fields joined by ``|``)."""

    fields: dict[str, Any]
    overrides: dict[str, float | str | None] = field(default_factory=dict)
    key: str = ""

    @property
    def bucket(self) -> float:
        """A stable number in [0, 1) from the key: the same entity always lands in the same A/B arm, in every
        process (Python's ``hash`` is salted per process, sha256 is not)."""
        return int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "big") / 2.0**64


def safe_name(name: str) -> str:
    """A client-chosen name (e.g. an unknown field) fit to echo in a message: short and printable."""
    text = name if name.isprintable() else name.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "..."


def _string(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must be a non-empty string")
    if len(value) > MAX_STRING:
        raise ValueError(f"must be at most {MAX_STRING} characters")
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    return value


def _local_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        # a field's problem is a ValueError (collected by the request's parser), whatever its cause
        raise ValueError("must be an ISO 8601 local date and time string, e.g. 2013-12-24T08:30")  # noqa: TRY004
    text = value.strip()
    if len(text) > MAX_STRING:
        raise ValueError(f"must be at most {MAX_STRING} characters")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"is not an ISO 8601 date and time (e.g. 2013-12-24T08:30): {safe_name(text)!r}") from None
    if len(text) <= 10:  # "2013-12-24" parses as midnight: a departure needs its time
        raise ValueError("needs a time of day, e.g. 2013-12-24T08:30")
    if parsed.tzinfo is not None:
        raise ValueError("must be local time at the place, without a UTC offset")
    if not YEARS[0] <= parsed.year <= YEARS[1]:
        raise ValueError(f"year must be within {YEARS[0]}-{YEARS[1]}")
    return parsed


def _iso_date(value: Any) -> date:
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date string, e.g. 2013-12-24")  # noqa: TRY004 - as above
    try:
        parsed = date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("is not an ISO 8601 date (e.g. 2013-12-24)") from None
    if not YEARS[0] <= parsed.year <= YEARS[1]:
        raise ValueError(f"year must be within {YEARS[0]}-{YEARS[1]}")
    return parsed


def _annotation(python_type: type) -> Any:
    """The pydantic type of a request field of ``python_type``, with the service's rules."""
    if python_type is str:
        return Annotated[str, Strict(), AfterValidator(_string)]
    if python_type is bool:
        return Annotated[bool, Strict()]
    if python_type is int:
        return Annotated[int, Strict(), Field(gt=0, le=MAX_INT)]
    if python_type is float:
        return Annotated[float, Strict(), Field(allow_inf_nan=False)]
    if python_type is datetime:
        return Annotated[datetime, PlainValidator(_local_datetime, json_schema_input_type=str)]
    if python_type is date:
        return Annotated[date, PlainValidator(_iso_date, json_schema_input_type=str)]
    raise TypeError(
        f"request fields of type {python_type.__name__} are not supported (use str, int, float, bool, datetime or date)"
    )


def _code_annotation(pattern: str | None, accepted: tuple[str, ...] | None, description: str) -> Any:
    """A string request field with the spec's rules: the whole trimmed value matches ``pattern``, and is one of
    ``accepted`` when given. Messages never echo the value (it may be anything a client sent)."""
    compiled = re.compile(pattern) if pattern is not None else None
    allowed = frozenset(accepted) if accepted is not None else None

    def check(value: str) -> str:
        if compiled is not None and not compiled.fullmatch(value):
            raise ValueError(f"must match the pattern {pattern}: {description}")
        if allowed is not None and value not in allowed:
            raise ValueError(f"must be one of {', '.join(accepted or ())}")
        return value

    extra: dict[str, Any] = {}
    if pattern is not None:
        extra["pattern"] = f"^{pattern}$"
    if accepted is not None:
        extra["enum"] = list(accepted)
    return Annotated[str, Strict(), AfterValidator(_string), AfterValidator(check), Field(json_schema_extra=extra)]


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, date | datetime) else str(value)


class RequestSchema:
    """Validation of prediction requests for one feature table.

    Attributes:
        model: the pydantic model of one request (request fields + ``overrides``), for docs and OpenAPI; named
            ``title`` (default ``<feature table>_request``).
        polars_schema: the request frame's columns and types, as the online store's ``features`` expects them.
        time_fields: the datetime request fields (named when a local time cannot be placed in time).
    """

    def __init__(self, spec: FeatureTableSpec, max_batch: int = 1000, title: str | None = None) -> None:
        if spec.online is None:
            raise ValueError(f"feature table {spec.name} declares no online spec: it cannot be served")
        self.spec = spec
        self.max_batch = max_batch
        self.request_fields = dict(spec.online.request_fields)
        self.key_fields = spec.online.key_fields
        if OVERRIDES in self.request_fields:
            raise ValueError(f"a request field may not be called {OVERRIDES!r}: the name is taken by the overrides")
        online = spec.online
        coded = set(online.field_patterns) | set(online.accepted_values)
        definitions: dict[str, Any] = {}
        for name, (python_type, required, description) in self.request_fields.items():
            if name in coded:
                if python_type is not str:
                    raise TypeError(f"request field {name}: patterns and accepted values apply to strings only")
                rules = online.field_patterns.get(name), online.accepted_values.get(name)
                annotation = _code_annotation(*rules, description)
            else:
                annotation = _annotation(python_type)
            if required:
                definitions[name] = (annotation, Field(description=description))
            else:
                definitions[name] = (annotation | None, Field(default=None, description=description))
        definitions[OVERRIDES] = (
            dict[str, Any] | None,
            Field(
                default=None,
                description="feature name -> value replacing the computed feature (what-if); null = unknown",
            ),
        )
        name = title or f"{spec.name}_request"
        self.model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid"), **definitions)
        self.polars_schema = {name: _POLARS_TYPES[t] for name, (t, _, _) in self.request_fields.items()}
        self.time_fields = tuple(name for name, (t, _, _) in self.request_fields.items() if t is datetime)
        self.numeric = frozenset(spec.numeric)
        self.categorical = frozenset(spec.categorical)

    def json_schema(self) -> dict[str, Any]:
        """OpenAPI body schema: one request object or a list of them."""
        one = self.model.model_json_schema()
        return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": self.max_batch}]}

    # --- parsing -------------------------------------------------------------------------------------------------

    def parse(self, body: bytes) -> tuple[list[PredictionRequest], bool]:
        """Validated requests from a raw body, and whether it was a batch. Raises :class:`RequestError` only."""
        try:
            document = _decode(body)
        except RecursionError:
            raise RequestError(400, "malformed JSON: nested too deeply") from None
        except ValueError as error:  # JSONDecodeError, invalid UTF-8, an integer of more than 4300 digits, NaN
            raise RequestError(400, f"malformed JSON: {safe_name(str(error))}") from None
        if isinstance(document, dict):
            return [self.one(document, "")], False
        if isinstance(document, list):
            if not document:
                raise RequestError(422, "an empty batch: send one request object or a non-empty list of them")
            if len(document) > self.max_batch:
                size = f"a batch of {len(document)} requests"
                raise RequestError(413, f"{size} is larger than the limit of {self.max_batch}; split it")
            requests, errors = [], []
            for index, item in enumerate(document):
                try:
                    requests.append(self.one(item, f"[{index}]."))
                except RequestError as error:
                    errors.extend(error.errors)
                    if len(errors) >= MAX_ERRORS:
                        break
            if errors:
                raise RequestError(422, error_summary(errors), errors)
            return requests, True
        raise RequestError(422, "expected a JSON object (one request) or a JSON list of objects (a batch)")

    def one(self, item: Any, prefix: str = "") -> PredictionRequest:
        """Validate one request object; ``prefix`` locates it in a batch (e.g. ``[3].``)."""
        if not isinstance(item, dict):
            error = FieldError(prefix.rstrip(".") or "body", "must be a JSON object with the request fields")
            raise RequestError(422, error_summary([error]), [error])
        errors: list[FieldError] = []
        validated: dict[str, Any] = {}
        try:
            validated = self.model.model_validate(item).__dict__  # the fields' values, as model_dump copies them
        except ValidationError as error:
            for detail in error.errors(include_url=False, include_input=False, include_context=False):
                location = ".".join(safe_name(str(part)) for part in detail["loc"]) or "body"
                message = detail["msg"].removeprefix("Value error, ")
                if detail["type"] == "extra_forbidden":
                    message = f"unknown field; expected {', '.join(self.request_fields)} (and optionally {OVERRIDES})"
                errors.append(FieldError(prefix + location, message))
        overrides, override_errors = self._overrides(item.get(OVERRIDES), prefix)
        errors.extend(override_errors)
        if errors:
            raise RequestError(422, error_summary(errors), errors)
        fields = {name: validated.get(name) for name in self.request_fields}
        return PredictionRequest(fields, overrides, "|".join(_key_text(fields[name]) for name in self.key_fields))

    def _overrides(self, raw: Any, prefix: str) -> tuple[dict[str, float | str | None], list[FieldError]]:
        if not isinstance(raw, dict):  # None, or a wrong type pydantic already reported
            return {}, []
        where = f"{prefix}{OVERRIDES}"
        if len(raw) > len(self.spec.features):
            return {}, [FieldError(where, f"at most {len(self.spec.features)} overrides (one per feature)")]
        chosen: dict[str, float | str | None] = {}
        errors: list[FieldError] = []
        for name, value in raw.items():
            location = f"{where}.{safe_name(name)}"
            if name in self.numeric:
                number = _finite(value)
                if value is not None and number is None:
                    errors.append(FieldError(location, "a numeric feature: must be a finite number or null"))
                chosen[name] = number
            elif name in self.categorical:
                if value is None:
                    chosen[name] = None
                else:
                    try:
                        chosen[name] = _string(value) if isinstance(value, str) else _raise("must be a string or null")
                    except ValueError as error:
                        errors.append(FieldError(location, f"a categorical feature: {error}"))
            else:
                errors.append(FieldError(location, f"unknown feature; known: {', '.join(self.spec.features)}"))
        return chosen, errors

    def frame(self, requests: Sequence[PredictionRequest]) -> pl.DataFrame:
        """The request rows as the online store's ``features`` takes them (typed columns, request order)."""
        return pl.DataFrame([r.fields for r in requests], schema=self.polars_schema, orient="row")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


#: ``json.loads(..., parse_constant=_no_constant)``'s decoder, made once (``loads`` makes one per call when given a
#: hook).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _decode(body: bytes | str) -> Any:
    """What ``json.loads(body, parse_constant=_no_constant)`` gives (bytes decoded as ``loads`` decodes them)."""
    if not isinstance(body, bytes | bytearray):
        return json.loads(body, parse_constant=_no_constant)
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def _raise(message: str) -> str:
    raise ValueError(message)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return number if math.isfinite(number) else None


def error_summary(errors: Sequence[FieldError]) -> str:
    """A refusal's one-line message: the first field at fault, and how many more there are."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid request: {first.field}: {first.message}{more}"
