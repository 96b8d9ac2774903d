"""mlops_assets: a self-maintaining ML platform built from Dagster software-defined assets over a DuckDB feature store."""

__version__ = "0.1.0"
