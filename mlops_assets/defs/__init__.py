"""Dagster wiring, one module per stage. Every asset reads its inputs, calls one function of ``core``, writes, and
returns metadata; the logic stays in ``core``."""
