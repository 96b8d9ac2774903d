"""Registering models: names that would clash with another model or with the platform's own schemas are refused when
the catalog is built, with what to do, not deep inside a run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import Catalog, CatalogError
from mlops_assets.core.features import sql_problems
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import RESERVED_MODEL_NAMES, RESERVED_TABLE_NAMES, FeatureTableSpec
from mlops_assets.core.store import BATCH_LOG, DATA_SCHEMAS, WAREHOUSE_CATALOG
from mlops_assets_tests.toy_model import TOY_FEED, TOY_MODEL


@pytest.mark.parametrize("name", sorted(RESERVED_MODEL_NAMES))
def test_a_model_cannot_take_a_name_the_platform_uses(name: str) -> None:
    with pytest.raises(ValueError, match=f"model name '{name}' is taken by the platform.*choose another"):
        dataclasses.replace(TOY_MODEL, name=name)


def test_the_reserved_names_cover_every_schema_and_the_warehouse_catalog(tmp_path: Path) -> None:
    # a model's schema beside the feed's stages, and the catalog the warehouse file is attached as
    assert set(DATA_SCHEMAS) <= RESERVED_MODEL_NAMES
    assert Settings.for_data_dir(tmp_path).warehouse_path.stem in RESERVED_MODEL_NAMES
    assert WAREHOUSE_CATALOG in RESERVED_MODEL_NAMES
    assert not {model.name for model in CATALOG.models} & RESERVED_MODEL_NAMES
    assert BATCH_LOG[1] in RESERVED_TABLE_NAMES  # quarantine.<table> beside the batch log


def test_every_asset_group_but_the_models_is_a_name_no_model_can_take(tmp_path: Path) -> None:
    """A model's assets are a UI group of its name: a model named like a feed's group (``validate``) would merge into
    it."""
    from mlops_assets.definitions import build_definitions

    graph = build_definitions(CATALOG, Settings.for_data_dir(tmp_path)).resolve_asset_graph()
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups - {model.name for model in CATALOG.models} <= RESERVED_MODEL_NAMES


def test_a_slice_on_a_column_the_feature_table_lacks_is_refused_when_the_model_is_defined() -> None:
    """Found at the evaluation before, after a challenger was registered."""
    with pytest.raises(
        ValueError, match=r"model toy_failures: slice 'hub' reads \['no_such_column'\], not columns of features"
    ):
        dataclasses.replace(TOY_MODEL, slices={**TOY_MODEL.slices, "hub": pl.col("no_such_column") == "x"})


def test_a_time_zone_that_does_not_exist_is_refused_when_the_feature_table_is_defined() -> None:
    """Found at the training set's step before, after the feature table and online store were built."""
    with pytest.raises(ValueError, match=r"time_zone 'America/NewYork' is no IANA time zone"):
        dataclasses.replace(TOY_MODEL.features, time_zone="America/NewYork")


def test_a_lookback_shorter_than_a_window_or_a_lookup_is_refused_when_the_feature_table_is_defined() -> None:
    """Caught only by the month-alone build of a registered table before: a monthly build would see less context."""
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES

    with pytest.raises(
        ValueError,
        match=r"lookback_days=7 is shorter than what route_delay_rate_30d \(30 days, 0:00:00\) reaches back",
    ):
        dataclasses.replace(FLIGHT_FEATURES, lookback_days=7)
    with pytest.raises(ValueError, match=r"lookback_days=2 is shorter than .*previous NYC departure within 72 h"):
        dataclasses.replace(FLIGHT_FEATURES, lookback_days=2, windows=())
    assert dataclasses.replace(FLIGHT_FEATURES, lookback_days=30).lookback_days == 30  # a window of 30 days fits


@pytest.mark.parametrize("spec", CATALOG.feature_tables, ids=lambda s: s.name)
def test_every_registered_feature_sql_fits_its_spec(spec: FeatureTableSpec) -> None:
    """Run on empty copies of the feed's validated tables: every column the spec names and the engine does not add,
    and naive UTC timestamps for its time columns (a model added to the catalog is held to it too)."""
    assert sql_problems(spec, CATALOG.feed_of_table(spec.inputs[0])) == []


def _edited(tmp_path: Path, spec: FeatureTableSpec, old: str, new: str) -> FeatureTableSpec:
    edited = tmp_path / spec.sql_path.name
    assert old in spec.sql
    edited.write_text(spec.sql.replace(old, new))
    return dataclasses.replace(spec, sql_path=edited)


def test_a_feature_sql_that_does_not_fit_its_spec_is_named_with_what_to_fix(tmp_path: Path) -> None:
    """What failed deep in a run (a polars ColumnNotFoundError, a DuckDB binder error naming no file, a SchemaError on
    the engine's internal join keys) is said in the spec's terms."""
    from mlops_assets.models.flight_delay import FLIGHT_FEATURES

    feed = CATALOG.feed_of_table(FLIGHT_FEATURES.inputs[0])
    wrong_label = dataclasses.replace(FLIGHT_FEATURES, label="is_delayed_typo")
    assert sql_problems(wrong_label, feed) == ["its SQL (flight_features.sql) gives no column is_delayed_typo"]
    typo = _edited(tmp_path, FLIGHT_FEATURES, "t.distance", "t.distnce")
    [problem] = sql_problems(typo, feed)
    assert problem.startswith(f"its SQL ({typo.sql_path}) does not run on the feed's validated tables: Binder Error")
    assert "distnce" in problem
    text_time = _edited(tmp_path, FLIGHT_FEATURES, "AS prediction_time", "::VARCHAR AS prediction_time")
    assert sql_problems(text_time, feed) == [
        "prediction_time is VARCHAR, not TIMESTAMP (a naive UTC instant; the local time naive at America/New_York)"
    ]


def test_every_sql_file_of_the_package_is_in_a_built_wheel() -> None:
    """The feeds' and models' SQL is package data: a wheel built without it has no feature table."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlops_assets"]
    package = root / "mlops_assets"
    sql = [path.relative_to(package).as_posix() for path in package.rglob("*.sql")]
    assert sql and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in sql), (sql, globs)


@pytest.mark.parametrize("name", ["batches", "Readings", "readings; drop table raw.readings"])
def test_a_feed_table_cannot_take_the_batch_logs_name_or_one_that_is_no_identifier(name: str) -> None:
    renamed = dataclasses.replace(TOY_FEED.tables[0], name=name)
    with pytest.raises(ValueError, match=rf"table name '{re.escape(name)}' must match .*rename the table"):
        dataclasses.replace(TOY_FEED, tables=(renamed, *TOY_FEED.tables[1:]))


def test_two_models_of_one_name_are_refused() -> None:
    twin = dataclasses.replace(TOY_MODEL, description="another model under the same name")
    with pytest.raises(CatalogError, match=f"two registered models are called '{TOY_MODEL.name}': rename one"):
        Catalog(models=(TOY_MODEL, twin))
