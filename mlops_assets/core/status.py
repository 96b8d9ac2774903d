"""What the platform holds right now, for people (``mlops status``) and machines (``mlops status --json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from mlops_assets.core.ingest import latest_verdicts
from mlops_assets.core.landing import landed_months
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.store import qualified, table_exists


def _counts_by_month(conn: duckdb.DuckDBPyConnection, schema: str, table: str, where: str = "") -> dict[str, int]:
    if not table_exists(conn, schema, table):
        return {}
    rows = conn.execute(
        f"SELECT coalesce(_month, 'reference'), count(*) FROM {qualified(schema, table)} {where} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {str(month): int(n) for month, n in rows}


def store_status(model: ModelSpec, landing_dir: Path, warehouse: Path) -> dict[str, Any]:
    """Landed months, and per table the validated and quarantined rows by month and the rejected batches."""
    status: dict[str, Any] = {
        "landed_months": landed_months(landing_dir, [t.name for t in model.monthly_tables]),
        "tables": {},
        "features": {},
    }
    if not warehouse.exists():
        return status
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        for table in model.tables:
            rejected = [
                {"month": v["month"], "stage": stage, "rule": v["rule"], "column": v["column_name"], "message": v["message"]}
                for stage in ("raw", "validated")
                for v in latest_verdicts(conn, table.name, stage)
                if v.get("accepted") is False
            ]
            status["tables"][table.name] = {
                "validated_rows": _counts_by_month(conn, "validated", table.name),
                "quarantined_rows": _counts_by_month(conn, "quarantine", table.name),
                "rejected_batches": rejected,
            }
        for spec in model.feature_tables:
            status["features"][spec.name] = _counts_by_month(conn, "features", spec.name)
    return status


def format_status(status: dict[str, Any]) -> str:
    """A short human summary of :func:`store_status`."""
    lines = [f"Landed months: {', '.join(status['landed_months']) or 'none (run `mlops replay --through 2013-03`)'}"]
    if not status["tables"]:
        lines.append("Warehouse: not built yet (run `dagster job execute -m mlops_assets.definitions -j feature_pipeline`)")
        return "\n".join(lines)
    lines.append(f"{'table':<16}{'validated rows':>16}{'quarantined':>13}  rejected batches")
    for name, info in status["tables"].items():
        rejected = "; ".join(f"{r['month'] or 'reference'} ({r['stage']}: {r['rule']} on {r['column']})" for r in info["rejected_batches"])
        lines.append(
            f"{name:<16}{sum(info['validated_rows'].values()):>16,}{sum(info['quarantined_rows'].values()):>13,}  {rejected or '-'}"
        )
    for name, by_month in status["features"].items():
        months = ", ".join(f"{m}: {n:,}" for m, n in by_month.items())
        lines.append(f"features.{name}: {sum(by_month.values()):,} rows ({months or 'none'})")
    return "\n".join(lines)
