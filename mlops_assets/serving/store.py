"""The online store in service: the export ``online_store/CURRENT`` names, reloaded when ``CURRENT`` changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from mlops_assets.core.online import OnlineStore, current_version
from mlops_assets.core.settings import train_hint
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.serving.reloading import Reloading
from mlops_assets.serving.rows import RowFeatures


@dataclass(frozen=True)
class ServedStore:
    """A loaded export, the types of the feature table's key columns (the prediction log's schema needs them
    before the first request) and its lookups as Python lists for the few-request path (made once per load)."""

    store: OnlineStore
    key_types: dict[str, pl.DataType]
    rows: RowFeatures = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", RowFeatures(self.store))

    @property
    def version(self) -> str:
        return self.store.version


def load_store(spec: FeatureTableSpec, root: Path, version: str | None) -> ServedStore:
    """The export ``version`` (what ``CURRENT`` said when the change was seen), refusing a missing one."""
    if version is None:
        raise FileNotFoundError(
            f"nothing exported under {root} yet: {train_hint()} (or materialize the model's online_store asset)"
        )
    store = OnlineStore.load(spec, root, version)
    return ServedStore(store, store.key_types)


def reloading_store(spec: FeatureTableSpec, root: Path, model: str) -> Reloading[ServedStore]:
    """A model's online store, rebuilt when ``CURRENT`` names another version (versions are immutable folders)."""
    return Reloading(
        f"{model} online store", lambda: current_version(root), lambda version: load_store(spec, root, version)
    )
