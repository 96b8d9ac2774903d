"""The online store: what serving needs to compute a feature vector at request time, exported from the warehouse.

Training and serving share one feature definition. The export holds the rows the feature SQL gives for the newest
months (with the time each fact became known), the right-hand rows of the as-of lookups (e.g. hourly weather) and the
spec's reference tables. At request time the spec's ``online.entities`` turns requests into the entity rows the SQL
would give, and the same point-in-time engine (``features/pit.py``) adds the lookups and trailing windows as of each
request's prediction time. So a flight scored online gets exactly the vector it has in ``features.<name>``, which the
tests check.

Layout below ``$MLOPS_DATA_DIR/online_store``: ``versions/<id>/`` (Parquet frames + ``manifest.json``), and
``CURRENT`` naming the version to serve. A version folder is written under a temporary name and renamed; ``CURRENT`` is
replaced atomically, so a reader sees the old export or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from mlops_assets.core.features import context_start_for, feature_set_version
from mlops_assets.core.features.pit import add_prepared_lookup, add_prepared_windows, lookup_candidates, window_cumulatives
from mlops_assets.core.landing import month_key, shift_month, write_atomic
from mlops_assets.core.specs import FeatureTableSpec
from mlops_assets.core.store import query_frame

CURRENT = "CURRENT"
_ORDER = "_request_order"


def _used(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if re.search(rf"\$({name})\b", sql)}


@dataclass
class OnlineExport:
    """The frames of one export (before preparation)."""

    events: pl.DataFrame
    lookups: list[pl.DataFrame]
    reference: dict[str, pl.DataFrame]
    manifest: dict[str, Any]


def build_export(conn: duckdb.DuckDBPyConnection, spec: FeatureTableSpec, newest_month: str) -> OnlineExport:
    """What serving needs to compute features for flights after (and during) ``newest_month``: its rows and the
    look-back before it, the lookup rows and the reference tables."""
    if spec.online is None:
        raise ValueError(f"feature table {spec.name} declares no online spec: it cannot be served")
    start = context_start_for(spec, newest_month)
    params = {"context_first": month_key(start.year, start.month), "target_last": newest_month, "context_start": start}
    events = query_frame(conn, spec.sql, _used(spec.sql, params))
    lookups = [events if lookup.sql is None else query_frame(conn, lookup.sql, _used(lookup.sql, params)) for lookup in spec.lookups]
    reference = {name: query_frame(conn, sql) for name, sql in spec.online.reference_sql.items()}
    known = [c for c in (spec.label_known_at, *(w.known_at for w in spec.windows)) if c in events.columns]
    as_of = events.select(pl.max_horizontal(pl.col(c).max() for c in known)).item() if events.height else None
    manifest = {
        "feature_table": spec.name,
        "feature_set_version": feature_set_version(spec),
        "newest_month": newest_month,
        "context_start": start.isoformat(),
        "serves_through": shift_month(newest_month, 1),
        "facts_known_through": as_of.isoformat() if isinstance(as_of, datetime) else None,
        "rows": {"events": events.height, **{f"lookup_{i}": f.height for i, f in enumerate(lookups)},
                 **{f"reference_{n}": f.height for n, f in reference.items()}},  # fmt: skip
    }
    return OnlineExport(events, lookups, reference, manifest)


def write_export(export: OnlineExport, root: Path) -> str:
    """Write an export as a new version folder and point ``CURRENT`` at it; return the version id (content hash)."""
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions))
    try:
        export.events.write_parquet(staging / "events.parquet")
        for i, frame in enumerate(export.lookups):
            frame.write_parquet(staging / f"lookup_{i}.parquet")
        for name, frame in export.reference.items():
            frame.write_parquet(staging / f"reference_{name}.parquet")
        digest = hashlib.sha256()
        for path in sorted(staging.iterdir()):
            digest.update(path.name.encode() + path.read_bytes())
        version = f"{export.manifest['newest_month']}-{digest.hexdigest()[:12]}"
        (staging / "manifest.json").write_text(json.dumps({**export.manifest, "version": version}, indent=1))
        target = versions / version
        if target.exists():
            shutil.rmtree(staging)  # the same content is there already
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomic(root / CURRENT, version.encode())
    return version


def current_version(root: Path) -> str | None:
    path = root / CURRENT
    return path.read_text().strip() if path.exists() else None


@dataclass
class OnlineStore:
    """A loaded export, prepared for request-time lookups (lookup candidates and window sums computed once)."""

    spec: FeatureTableSpec
    version: str
    manifest: dict[str, Any]
    reference: dict[str, pl.DataFrame]
    candidates: list[pl.DataFrame] = field(repr=False)
    cumulatives: list[pl.DataFrame] = field(repr=False)

    @classmethod
    def from_export(cls, spec: FeatureTableSpec, export: OnlineExport, version: str = "unsaved") -> OnlineStore:
        candidates = [lookup_candidates(frame, lookup) for frame, lookup in zip(export.lookups, spec.lookups, strict=True)]
        return cls(spec, version, export.manifest, export.reference, candidates, window_cumulatives(export.events, spec.windows))

    @classmethod
    def load(cls, spec: FeatureTableSpec, root: Path, version: str | None = None) -> OnlineStore:
        """The version ``CURRENT`` names (or ``version``), refusing one built by another feature-set version."""
        version = version or current_version(root)
        if version is None:
            raise FileNotFoundError(f"no online store under {root}: materialize features/online_store first")
        folder = root / "versions" / version
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["feature_set_version"] != feature_set_version(spec):
            raise ValueError(
                f"online store {version} was built by feature-set version {manifest['feature_set_version']}, the code "
                f"has {feature_set_version(spec)}: materialize features/online_store again"
            )
        export = OnlineExport(
            events=pl.read_parquet(folder / "events.parquet"),
            lookups=[pl.read_parquet(folder / f"lookup_{i}.parquet") for i in range(len(spec.lookups))],
            reference={name: pl.read_parquet(folder / f"reference_{name}.parquet") for name in manifest_reference(manifest)},
            manifest=manifest,
        )
        return cls.from_export(spec, export, version)

    def features(self, requests: pl.DataFrame) -> pl.DataFrame:
        """Feature rows for ``requests`` (in request order): the entity columns and every feature, as of each
        request's prediction time, from the facts in this export."""
        assert self.spec.online is not None
        rows = self.spec.online.entities(requests, self.reference).with_row_index(_ORDER)
        time = self.spec.time_column
        rows = rows.sort([time, _ORDER])
        for candidates, lookup in zip(self.candidates, self.spec.lookups, strict=True):
            rows = add_prepared_lookup(rows, candidates, lookup, time)
        rows = add_prepared_windows(self.cumulatives, rows, self.spec.windows, time)
        return rows.sort(_ORDER).drop(_ORDER)


def manifest_reference(manifest: dict[str, Any]) -> list[str]:
    return [name.removeprefix("reference_") for name in manifest["rows"] if name.startswith("reference_")]


def stale_after(manifest: dict[str, Any], prediction_time: datetime, horizon: timedelta = timedelta(days=45)) -> bool:
    """Whether a prediction time lies so far past the export's facts that windows and lookups would be empty."""
    known = manifest.get("facts_known_through")
    return known is not None and prediction_time - datetime.fromisoformat(known) > horizon
