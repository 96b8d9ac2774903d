"""Monthly partitions that exist only for months that have landed, and the months a run covers.

Months are the platform's calendar: every feed's monthly tables, every feature table and every model's monitoring
share the one ``months`` partition set. Partitions are added by the landing sensor and by ``mlops replay``, never when
the code location loads.
"""

import dagster as dg

MONTHS = dg.DynamicPartitionsDefinition(name="months")

#: Monthly assets take several months in one run (one DuckDB connection, one pass) when asked for a range.
SINGLE_RUN = dg.BackfillPolicy.single_run()

#: The concurrency pool every step that writes the warehouse belongs to (limit 1 in dagster.yaml).
DUCKDB_POOL = "duckdb"


def run_months(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> list[str]:
    """The months a run covers: its partition, its partition range, or a clear error when it has neither."""
    if context.has_partition_key_range or context.has_partition_key:
        return list(context.partition_keys)
    raise dg.Failure(
        description="This run has no month partition. Land data first (`mlops replay --through 2013-03`), then run "
        "the job over the landed months (`make pipeline` does both; by hand: `dagster job execute -m "
        'mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"`), or pick the months to '
        "materialize in the UI."
    )


def register_months(instance: dg.DagsterInstance, months: list[str]) -> list[str]:
    """Add the months that are not partitions yet; return them. Idempotent."""
    known = set(instance.get_dynamic_partitions(MONTHS.name))
    missing = [m for m in months if m not in known]
    if missing:
        instance.add_dynamic_partitions(MONTHS.name, missing)
    return missing
