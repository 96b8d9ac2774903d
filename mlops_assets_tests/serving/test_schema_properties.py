"""Property-based tests of the request schema on a real server: no body, however odd, makes the service answer 500.

Each field gets any JSON value, or a plausible one of its type (so the examples reach deep into scoring: unknown
destinations and carriers, malformed codes, far-away years and times past the online store's facts, daylight-saving
gaps, overrides of every feature), with fields dropped and arbitrary extra fields added, alone or in batches; and raw
bytes. Every answer is a 200 with probabilities, or a 4xx saying why.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.core.settings import Settings
from mlops_assets.serving.schema import RequestError, RequestSchema
from mlops_assets_tests.serving.conftest import FLIGHT, SPEC, running

assert SPEC.online is not None
FIELDS = list(SPEC.online.request_fields)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
#: Well-formed codes (some the store has never seen: ZZ, ZZZ), then codes of the wrong form or outside the served set.
CARRIERS = st.sampled_from(["UA", "AA", "B6", "9E", "ZZ", " UA "])
ORIGINS = st.sampled_from(["EWR", "JFK", "LGA", " JFK "])
DESTS = st.sampled_from(["IAH", "ORD", "SJU", "EWR", "ZZZ"])
TAILNUMS = st.sampled_from(["N14228", "N1", "N0EGMQ", "UA"]) | st.none()
ODD_CODES = st.sampled_from(["XXX", "ua", "ewr", "UAL", "I A H", "../../etc/passwd", "'; drop table x;--"]) | st.text(
    max_size=70
)
#: Within the session store's facts (January to March 2013), so most plausible flights are answered.
VALID_TIMES = st.datetimes(min_value=datetime(2013, 1, 1), max_value=datetime(2013, 3, 31)).map(
    lambda t: t.isoformat(timespec="minutes")
)
ODD_TIMES = (
    st.datetimes(min_value=datetime(1800, 1, 1), max_value=datetime(2300, 1, 1)).map(lambda t: t.isoformat())
    # past the store's facts: answered up to the maximum feature age, refused beyond
    | st.datetimes(min_value=datetime(2013, 3, 31), max_value=datetime(2015, 1, 1)).map(
        lambda t: t.isoformat(timespec="minutes")
    )
    | st.builds(
        lambda t, minutes: t.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
        st.datetimes(min_value=datetime(2012, 1, 1), max_value=datetime(2015, 1, 1)),
        st.integers(-600, 600),
    )
    | st.sampled_from(
        ["2013-03-10T02:30", "2013-11-03T01:30", "2013-03-02", "20130302T0900", "2013-W09-6T09:00", "2013-03-02 09:00"]
    )
)
#: per field of the flights request: (plausible and valid, plausible but odd)
PLAUSIBLE = {
    "carrier": (CARRIERS, ODD_CODES),
    "origin": (ORIGINS, ODD_CODES),
    "dest": (DESTS, ODD_CODES),
    "tailnum": (TAILNUMS, ODD_CODES),
    "flight": (st.integers(1, 9999), st.integers(-3, 3) | st.integers()),
    "scheduled_departure": (VALID_TIMES, ODD_TIMES),
}
OVERRIDE_VALUES = st.floats() | st.integers() | st.text(max_size=10) | st.none() | JSON


def _sometimes(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


@st.composite
def flights(draw: st.DrawFn) -> Any:
    """A flight object: mostly plausible (so scoring is reached), each part sometimes wild."""
    flight = {}
    for name in FIELDS:
        valid, odd = PLAUSIBLE[name]
        flight[name] = draw(JSON if _sometimes(draw, 25) else odd if _sometimes(draw, 12) else valid)
    if _sometimes(draw, 8):
        for name in draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=2)):
            del flight[name]
    if _sometimes(draw, 8):
        flight.update(draw(st.dictionaries(st.text(max_size=12), JSON, min_size=1, max_size=2)))
    if _sometimes(draw, 3):
        names = (
            st.sampled_from(SPEC.features) | st.text(max_size=12)
            if _sometimes(draw, 4)
            else st.sampled_from(SPEC.features)
        )
        values = (
            OVERRIDE_VALUES
            if _sometimes(draw, 4)
            else st.floats(-1e6, 1e6) | st.sampled_from(["UA", "JFK", "Turbo-fan"]) | st.none()
        )
        flight["overrides"] = draw(JSON if _sometimes(draw, 10) else st.dictionaries(names, values, max_size=4))
    return flight


BODIES = flights() | st.lists(flights(), min_size=0, max_size=6) | JSON


def _check(status: int, body: Any) -> None:
    assert status in (200, 400, 413, 422), (status, body)
    if status == 200:
        items = [body["prediction"]] if "prediction" in body else body["predictions"]
        assert items and all(0.0 <= i["probability"] <= 1.0 and i["variant"] == "champion" for i in items)
        assert all(
            0.0 <= i["feature_age_hours"] <= 24.0 and set(i["unknown_codes"]) <= {"carrier", "dest", "route"}
            for i in items
        )
    else:
        assert isinstance(body["detail"], str) and body["detail"]


def test_no_request_makes_the_service_answer_500(served: Settings) -> None:
    with running(served) as server:
        client = server.client
        answered: dict[int, int] = {}

        @settings(max_examples=800, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(BODIES)
        def any_json(payload: Any) -> None:
            status, body = client.request("POST", "/predict", json.dumps(payload).encode())  # NaN/Infinity included
            _check(status, body)
            answered[status] = answered.get(status, 0) + 1

        @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
        def any_bytes(raw: bytes) -> None:
            _check(*client.request("POST", "/predict", raw))

        any_json()
        any_bytes()
        assert answered.get(200, 0) > 10 and answered.get(422, 0) > 10, answered  # both paths were exercised
        assert client.post(FLIGHT)[0] == 200


SCHEMA = RequestSchema(SPEC)


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(BODIES)
def test_the_schema_accepts_typed_flights_or_refuses_naming_a_field(payload: Any) -> None:
    """In process and faster, so many more examples: parsing raises nothing but a 4xx ``RequestError``; what it
    accepts is typed as the online store expects, and each 422 names the fields at fault."""
    try:
        requests, batch = SCHEMA.parse(json.dumps(payload).encode())
    except RequestError as error:
        assert error.status in (400, 413, 422) and error.message
        if error.status == 422 and error.errors:
            assert all(e.field and e.message for e in error.errors) and error.errors[0].field in error.message
        return
    assert batch == isinstance(payload, list) and len(requests) == (len(payload) if batch else 1)
    frame = SCHEMA.frame(requests)  # the typed request frame builds for everything accepted
    assert frame.height == len(requests) and frame.schema == SCHEMA.polars_schema
    for request in requests:
        assert isinstance(request.fields["flight"], int) and request.fields["flight"] > 0
        assert (
            isinstance(request.fields["scheduled_departure"], datetime)
            and request.fields["scheduled_departure"].tzinfo is None
        )
        assert all(
            isinstance(request.fields[f], str) and request.fields[f].isprintable()
            for f in ("carrier", "origin", "dest")
        )
        assert 0.0 <= request.bucket < 1.0 and request.key.count("|") == len(SPEC.online.key_fields) - 1
