"""mlops_assets: a self-maintaining ML platform built from Dagster software-defined assets over a DuckDB feature store."""

import atexit
import gc
import os

__version__ = "0.1.0"

# LightGBM's two OpenMP threads wait for each other thousands of times per tree. How long a waiting thread spins before
# it sleeps decides the training time (the year's delay model, 82 trees, measured on 2 cores):
#   libgomp's default (~3 ms of spinning): 1.9 s on a quiet machine, 10-13 s with the other core busy (the spinning
#     thread takes the core the working one needs);
#   no spinning (OMP_WAIT_POLICY=PASSIVE): 3.3 s quiet (every wait pays a wake-up: two threads barely beat one),
#     3.8 s busy;
#   ~10 us of spinning (GOMP_SPINCOUNT=1000): 2.0 s quiet, 5.0 s busy. The default here.
# libgomp reads these once, when it is loaded (with LightGBM), so they are set before anything here imports LightGBM;
# either variable set by the user wins (the tests, two workers on two cores, wait passively: conftest.py).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Python's cyclic garbage collector runs its young generation every 700 allocations and, every 100 of those, walks
# every object alive: the ~260k of a process that loaded the definitions, ~0.25 s a walk. A run worker refreshing a
# month spent 0.87 s in it, a year's training run 0.86 s. Collecting the young generation every 10,000 allocations
# instead takes a cold refresh to 0.34 s; cyclic garbage lives a little longer, reference counting frees the rest as
# before.
gc.set_threshold(10_000, 10, 10)

# At exit, Python's last garbage collection walks every object still alive: ~0.7 s for a process that loaded the
# definitions (~260k objects), paid by every `dagster job execute`, run worker, `mlops` command and test subprocess
# (measured 0.71 s -> 0.06 s from the last line to the exit). Freezing them first (at exit, after every handler
# registered later: the warehouse connection's close, logging's flush) skips that walk. Objects are still freed by
# reference counting; only objects in reference cycles are left to the operating system, and nothing here relies on a
# finalizer to persist data (commits and closes are explicit).
atexit.register(gc.freeze)
