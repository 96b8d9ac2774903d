"""A value rebuilt when its source changes, swapped in without a failed request.

The source is summarised by a token (e.g. the bytes of ``registry/aliases.json``, or the version ``CURRENT`` names).
:meth:`Reloading.refresh` compares it with the token of the value in service; on a change it builds the new value
completely, off to the side, and only then replaces one reference. A request reads the reference once and keeps that
value to the end, so it sees the old value or the new one, never a mix, and nothing is torn down under it (the old
value is freed when its last request finishes). A build that fails leaves the old value serving and is reported
until the source is fixed or back to what serves (then :attr:`Reloading.error` clears).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger("mlops_assets.serving")


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """A value in service, the token it was built from and when it was swapped in."""

    value: T
    token: str | None
    loaded_at: datetime


class Reloading(Generic[T]):
    """``token()`` says what the source is now; ``build(token)`` makes the value for it (may raise); ``describe``
    says what a built value is, for the log (default: the token's start)."""

    def __init__(
        self,
        name: str,
        token: Callable[[], str | None],
        build: Callable[[str | None], T],
        retry_seconds: float = 10.0,
        describe: Callable[[T], str] | None = None,
    ) -> None:
        self.name = name
        self._token = token
        self._build = build
        self._describe = describe
        self.retry_seconds = retry_seconds
        self._current: Loaded[T] | None = None
        self._failed: tuple[str | None, float] | None = None  # (token, monotonic time) of the last failed build
        self.error: str | None = None
        self.reloads = 0
        self._lock = threading.Lock()  # one build at a time (the watcher thread and a first request may both try)

    @property
    def current(self) -> Loaded[T] | None:
        return self._current

    def refresh(self) -> bool:
        """Rebuild if the source changed; return whether a new value was swapped in. Never raises."""
        with self._lock:
            try:
                token = self._token()
            except Exception as error:  # noqa: BLE001 - e.g. a permission error: keep serving what we have
                self._record_failure(None, f"cannot read the {self.name}'s source: {error}")
                return False
            if self._current is not None and token == self._current.token:
                if self.error is not None:  # e.g. the aliases moved to a broken version and back: nothing is wrong
                    logger.info("the %s's source is back to what serves; the earlier failure is gone", self.name)
                    self._failed, self.error = None, None
                return False
            if (
                self._failed is not None
                and self._failed[0] == token
                and time.monotonic() - self._failed[1] < self.retry_seconds
            ):
                return False  # the same broken source: retry now and then, not on every poll
            try:
                value = self._build(token)
            except Exception as error:  # noqa: BLE001 - a broken new source never stops serving the current one
                self._record_failure(token, f"{type(error).__name__}: {error}")
                return False
            self._current = Loaded(value, token, datetime.now(UTC))  # the swap: one reference assignment
            self._failed, self.error = None, None
            self.reloads += 1
            about = self._describe(value) if self._describe else (token or "")[:80].replace("\n", " ")
            logger.info("serving a new %s (%s)", self.name, about)
            return True

    def _record_failure(self, token: str | None, message: str) -> None:
        if self.error != message:
            if self._current is None:  # nothing loaded yet (a fresh data directory): nothing to keep serving
                logger.warning("no %s to serve yet: %s", self.name, message)
            else:
                logger.error("could not load the %s; still serving the previous one: %s", self.name, message)
        self._failed, self.error = (token, time.monotonic()), message
