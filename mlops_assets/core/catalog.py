"""A set of registered models and the feeds they read, checked for clashes when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from mlops_assets.core.specs import FeatureTableSpec, FeedSpec, ModelSpec, TableSpec


class CatalogError(ValueError):
    """Two registered things claim one name, or a name is unknown."""


@dataclass(frozen=True)
class Catalog:
    """The registered models, in order (the first is the default of every ``--model`` option)."""

    models: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        if not self.models:
            raise CatalogError("register at least one model")
        _unique("model", [(m.name, m) for m in self.models])
        _unique("feed", [(m.feed.name, m.feed) for m in self.models], same_allowed=True)
        _unique("table", [(t.name, t) for f in self.feeds for t in f.tables])
        _unique("feature table", [(m.features.name, m.features) for m in self.models], same_allowed=True)

    @property
    def default(self) -> ModelSpec:
        return self.models[0]

    @property
    def feeds(self) -> tuple[FeedSpec, ...]:
        return tuple({m.feed.name: m.feed for m in self.models}.values())

    @property
    def feature_tables(self) -> tuple[FeatureTableSpec, ...]:
        """Every feature table once, even when several models train on it."""
        return tuple({m.features.name: m.features for m in self.models}.values())

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for f in self.feeds for t in f.tables)

    def model(self, name: str | None) -> ModelSpec:
        """The model called ``name`` (the default one for None), or a clear error naming the known ones."""
        if name is None:
            return self.default
        for model in self.models:
            if model.name == name:
                return model
        raise CatalogError(f"no model {name!r}; registered: {', '.join(m.name for m in self.models)}")

    def feed(self, name: str) -> FeedSpec:
        for feed in self.feeds:
            if feed.name == name:
                return feed
        raise CatalogError(f"no feed {name!r}; registered: {', '.join(f.name for f in self.feeds)}")

    def feed_of_table(self, table: str) -> FeedSpec:
        for feed in self.feeds:
            if any(t.name == table for t in feed.tables):
                return feed
        raise CatalogError(f"no registered feed has a table {table!r}")

    def models_of(self, feed: FeedSpec) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.feed.name == feed.name)


def _unique(what: str, named: list[tuple[str, object]], same_allowed: bool = False) -> None:
    """Refuse two different things under one name (the same object twice is fine where sharing is allowed)."""
    seen: dict[str, object] = {}
    for name, thing in named:
        if name in seen and not (same_allowed and seen[name] is thing):
            raise CatalogError(f"two registered {what}s are called {name!r}: rename one")
        seen[name] = thing
