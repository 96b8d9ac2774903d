"""mlops_assets: a self-maintaining ML platform built from Dagster software-defined assets over a DuckDB feature store."""

import atexit
import gc
import os

__version__ = "0.1.0"

# LightGBM's OpenMP threads spin while they wait by default. On a machine whose cores are shared (a daemon, a webserver,
# another run, the test workers), spinning threads steal the cores the working ones need: a 6 s training measured 17 s.
# Passive waiting costs next to nothing when the cores are free. libgomp reads this once, when it is loaded (with
# LightGBM), so it is set before anything here imports LightGBM; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# At exit, Python's last garbage collection walks every object still alive: ~0.7 s for a process that loaded the
# definitions (~260k objects), paid by every `dagster job execute`, run worker, `mlops` command and test subprocess
# (measured 0.71 s -> 0.06 s from the last line to the exit). Freezing them first (at exit, after every handler
# registered later: the warehouse connection's close, logging's flush) skips that walk. Objects are still freed by
# reference counting; only objects in reference cycles are left to the operating system, and nothing here relies on a
# finalizer to persist data (commits and closes are explicit).
atexit.register(gc.freeze)
