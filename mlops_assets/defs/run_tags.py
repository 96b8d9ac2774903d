"""The run tags that make one run cover a range of months: Dagster's own tag names, kept free of a Dagster import so
that ``mlops months --tags`` (run before every ``dagster job execute`` of ``make pipeline``) starts in a fraction of
the time a Dagster import takes."""

RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def range_tags(months: list[str]) -> dict[str, str]:
    """Run tags that make one run cover the months ``months[0]..months[-1]``."""
    return {RANGE_START_TAG: months[0], RANGE_END_TAG: months[-1]}
