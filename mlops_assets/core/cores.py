"""Work that keeps every core busy by itself runs one at a time in a process.

A run's independent steps run at once (``mlops_assets/threaded_executor.py``), which pays where a step keeps one core
busy or waits (Python, pandera, matplotlib, the event log). A feature table's build of many months (DuckDB and polars
on every core; a month's build is light) and a LightGBM training (``num_threads`` the cores) gain nothing from a
second one beside them: they take turns on the same cores and hold their largest frames at the same time. Measured on
the year's ``training_pipeline``: the delay model's challenger step took 5.3 s beside the cancellation model's (its
training takes ~2.3 s alone); at 10x the data, the two feature tables built at once took the run's peak memory from
2.2 to 3.5 GiB. The users: ``features.write_months`` (builds of many months) and the challenger asset (its training
set's read and its training, ``defs/train.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# reentrant: a use inside another on the same thread (a build that trains) does not wait for itself
_ALL_CORES = threading.RLock()


@contextmanager
def all_cores() -> Iterator[None]:
    """Hold the process's cores for one piece of work that uses them all; other such work waits its turn."""
    with _ALL_CORES:
        yield
