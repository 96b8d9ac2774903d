"""mlops_assets: a self-maintaining ML platform built from Dagster software-defined assets over a DuckDB feature store."""

import os

__version__ = "0.1.0"

# LightGBM's OpenMP threads spin while they wait by default. On a machine whose cores are shared (a daemon, a webserver,
# another run, the test workers), spinning threads steal the cores the working ones need: a 6 s training measured 17 s.
# Passive waiting costs next to nothing when the cores are free. libgomp reads this once, when it is loaded (with
# LightGBM), so it is set before anything here imports LightGBM; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
