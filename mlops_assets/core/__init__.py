"""The platform's logic in plain Python: no Dagster import anywhere below this package, so every piece is testable alone."""
