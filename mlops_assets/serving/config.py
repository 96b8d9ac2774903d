"""The prediction service's settings. The environment is read here and nowhere else in the service
(:func:`load_serve_config`), when the service starts, never at import time; command-line flags win over it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

#: Share of traffic (0..1) sent to the ``challenger`` alias, by a stable hash of the entity key. 0 (default) = off.
AB_SHARE_ENV = "MLOPS_AB_SHARE"
#: How many hours past the online store's newest fact a request may be before it is refused (default 24).
MAX_FEATURE_AGE_ENV = "MLOPS_MAX_FEATURE_AGE_HOURS"
DEFAULT_MAX_FEATURE_AGE_HOURS = 24.0


@dataclass(frozen=True)
class ServeConfig:
    """How the service listens, routes and protects itself.

    Attributes:
        host, port: where uvicorn binds; loopback by default, so nothing is exposed unless asked for.
        ab_share: share of entity keys answered by the challenger (when it exists and differs from the champion).
        max_body_bytes: larger request bodies get 413 (before JSON parsing, so memory stays bounded).
        body_timeout_seconds: a body not whole within this many seconds of its first read gets 408 and the connection
            is closed (a client that declares more bytes than it sends would otherwise hold it open for ever).
        max_batch: most entities in one batch request (413 beyond).
        reload_seconds: how often the registry aliases and the online store's ``CURRENT`` are checked for a change.
        log_flush_rows, log_flush_seconds: when the prediction log writes a Parquet batch (and always on shutdown).
        graceful_shutdown_seconds: how long SIGTERM waits for requests in flight before closing the log.
        max_feature_age_hours: a request whose prediction time lies more than this past the online store's newest
            fact (``facts_known_through``) is refused (422): its features would be that old. Up to it, the request
            is answered with features as of that fact, and the answer says how old they are.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    ab_share: float = 0.0
    max_body_bytes: int = 1 << 20
    body_timeout_seconds: float = 30.0
    max_batch: int = 1000
    reload_seconds: float = 0.5
    log_flush_rows: int = 2000
    log_flush_seconds: float = 2.0
    graceful_shutdown_seconds: float = 10.0
    max_feature_age_hours: float = DEFAULT_MAX_FEATURE_AGE_HOURS

    def __post_init__(self) -> None:
        age = self.max_feature_age_hours
        if isinstance(age, bool) or not isinstance(age, int | float) or not (math.isfinite(age) and age >= 0):
            raise ValueError(f"the maximum feature age (${MAX_FEATURE_AGE_ENV}) must be hours >= 0, got {age!r}")
        if not (
            isinstance(self.ab_share, int | float) and math.isfinite(self.ab_share) and 0.0 <= self.ab_share <= 1.0
        ):
            raise ValueError(f"the A/B share must be a number in [0, 1], got {self.ab_share!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"the port must be in 0..65535, got {self.port}")
        if (
            self.max_body_bytes <= 0
            or self.max_batch <= 0
            or self.reload_seconds <= 0
            or self.body_timeout_seconds <= 0
        ):
            raise ValueError("max_body_bytes, max_batch, reload_seconds and body_timeout_seconds must be positive")


def load_serve_config(
    host: str | None = None,
    port: int | None = None,
    ab_share: float | None = None,
    max_feature_age_hours: float | None = None,
) -> ServeConfig:
    """The service's config: explicit arguments (the CLI flags), else ``$MLOPS_AB_SHARE`` and
    ``$MLOPS_MAX_FEATURE_AGE_HOURS``, else the defaults."""
    if ab_share is None:
        ab_share = _env_number(AB_SHARE_ENV, 0.0, "a number in [0, 1]")
    if max_feature_age_hours is None:
        max_feature_age_hours = _env_number(
            MAX_FEATURE_AGE_ENV, DEFAULT_MAX_FEATURE_AGE_HOURS, "a number of hours >= 0"
        )
    defaults = ServeConfig()
    return ServeConfig(
        host=host or defaults.host,
        port=defaults.port if port is None else port,
        ab_share=ab_share,
        max_feature_age_hours=max_feature_age_hours,
    )


def _env_number(name: str, default: float, expected: str) -> float:
    """``$name`` as a float (unset or blank: ``default``); a ValueError naming the variable otherwise."""
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"${name} must be {expected}, got {raw!r}") from None
