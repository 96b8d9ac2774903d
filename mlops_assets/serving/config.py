"""The prediction service's settings. The environment is read here and nowhere else in the service
(:func:`load_serve_config`), when the service starts, never at import time; command-line flags win over it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

#: Share of traffic (0..1) sent to the ``challenger`` alias, by a stable hash of the entity key. 0 (default) = off.
AB_SHARE_ENV = "MLOPS_AB_SHARE"


@dataclass(frozen=True)
class ServeConfig:
    """How the service listens, routes and protects itself.

    Attributes:
        host, port: where uvicorn binds; loopback by default, so nothing is exposed unless asked for.
        ab_share: share of entity keys answered by the challenger (when it exists and differs from the champion).
        max_body_bytes: larger request bodies get 413 (before JSON parsing, so memory stays bounded).
        max_batch: most entities in one batch request (413 beyond).
        reload_seconds: how often the registry aliases and the online store's ``CURRENT`` are checked for a change.
        log_flush_rows, log_flush_seconds: when the prediction log writes a Parquet batch (and always on shutdown).
        graceful_shutdown_seconds: how long SIGTERM waits for requests in flight before closing the log.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    ab_share: float = 0.0
    max_body_bytes: int = 1 << 20
    max_batch: int = 1000
    reload_seconds: float = 0.5
    log_flush_rows: int = 2000
    log_flush_seconds: float = 2.0
    graceful_shutdown_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not (
            isinstance(self.ab_share, int | float) and math.isfinite(self.ab_share) and 0.0 <= self.ab_share <= 1.0
        ):
            raise ValueError(f"the A/B share must be a number in [0, 1], got {self.ab_share!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"the port must be in 0..65535, got {self.port}")
        if self.max_body_bytes <= 0 or self.max_batch <= 0 or self.reload_seconds <= 0:
            raise ValueError("max_body_bytes, max_batch and reload_seconds must be positive")


def load_serve_config(host: str | None = None, port: int | None = None, ab_share: float | None = None) -> ServeConfig:
    """The service's config: explicit arguments (the CLI flags), else ``$MLOPS_AB_SHARE``, else the defaults."""
    if ab_share is None:
        raw = os.environ.get(AB_SHARE_ENV, "").strip()
        try:
            ab_share = float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(f"${AB_SHARE_ENV} must be a number in [0, 1], got {raw!r}") from None
    defaults = ServeConfig()
    return ServeConfig(host=host or defaults.host, port=defaults.port if port is None else port, ab_share=ab_share)
