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


def row_count_metadata(rows: dict[str, int]) -> dict[str, int]:
    """The row count of a monthly asset's materialization: Dagster's ``dagster/row_count`` (shown as the month's
    size) for a run of one month; for a range, whose metadata Dagster attaches to every month alike, the run's total
    under its own name (each month showed the whole run's count: January, three times its size)."""
    if len(rows) == 1:
        return {"dagster/row_count": sum(rows.values())}
    return {"rows_in_run": sum(rows.values())}


def calendar_order(known: list[str], months: list[str]) -> tuple[list[str], list[str]]:
    """The partitions to delete and to add (in this order) so that ``known`` plus ``months`` end up in calendar order.

    Dynamic partitions keep the order they were added in, and a run over a range of months covers the partitions
    between its ends in that order: April landed after May (or December 2012 after 2013) would be left out of
    ``make pipeline``'s range, or make it empty. The known partitions from the first one out of place on are deleted
    and added again after the new ones; a partition's materializations and checks are kept by key, so nothing is
    lost."""
    wanted = sorted(set(known) | set(months))
    first_out_of_place = next((i for i, (k, w) in enumerate(zip(known, wanted, strict=False)) if k != w), len(known))
    return known[first_out_of_place:], wanted[first_out_of_place:]


def register_months(instance: dg.DagsterInstance, months: list[str]) -> list[str]:
    """Add the months that are not partitions yet, keeping every partition in calendar order
    (:func:`calendar_order`); return the new ones. Idempotent."""
    known = instance.get_dynamic_partitions(MONTHS.name)
    missing = sorted(set(months) - set(known))
    delete, add = calendar_order(known, months)
    for month in delete:
        instance.delete_dynamic_partition(MONTHS.name, month)
    if add:
        instance.add_dynamic_partitions(MONTHS.name, add)
    return missing
