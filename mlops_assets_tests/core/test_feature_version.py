"""The feature-set version names what the features are, not where the code is installed."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from mlops_assets.catalog import CATALOG
from mlops_assets.core.features import feature_set_version
from mlops_assets.core.specs import FeatureTableSpec


def _installed_at(spec: FeatureTableSpec, folder: Path) -> FeatureTableSpec:
    """The same spec with every SQL file copied under ``folder`` (another checkout, a container's site-packages)."""
    folder.mkdir(parents=True)
    moved = folder / spec.sql_path.name
    shutil.copyfile(spec.sql_path, moved)
    lookups = []
    for lookup in spec.lookups:
        if lookup.sql_path is not None:
            target = folder / f"lookup_{len(lookups)}_{lookup.sql_path.name}"
            shutil.copyfile(lookup.sql_path, target)
            lookup = replace(lookup, sql_path=target)
        lookups.append(lookup)
    return replace(spec, sql_path=moved, lookups=tuple(lookups))


@pytest.mark.parametrize("spec", CATALOG.feature_tables, ids=lambda s: s.name)
def test_the_version_does_not_depend_on_the_install_path(spec: FeatureTableSpec, tmp_path: Path) -> None:
    moved = _installed_at(spec, tmp_path / "elsewhere")
    assert moved.sql_path != spec.sql_path
    assert feature_set_version(moved) == feature_set_version(spec)
    # ...but it does follow the SQL's content
    moved.sql_path.write_text(spec.sql + "\n-- changed\n")
    assert feature_set_version(moved) != feature_set_version(spec)
