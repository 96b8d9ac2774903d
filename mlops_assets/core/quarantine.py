"""Finding rejected rows again: what ``quarantine.<table>`` holds, counted or row by row (``mlops quarantine``).

Every row a stage set aside is in ``quarantine.<table>`` with its rule, column, what failed, the landed file, the
file's sha256, its position in that file and the whole row as JSON (``core/ingest.py``). This reads it for people
and scripts, so nobody has to know the table's columns to find a row again. Values reach the SQL as bound parameters;
table names come from the catalog, never from the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from mlops_assets.core.ingest import latest_verdicts
from mlops_assets.core.store import qualified, table_exists

#: What a row listing shows of each quarantined row, in this order (``row`` is ``row_json`` parsed).
ROW_COLUMNS = ("_month", "stage", "_source_file", "_sha256", "_row", "rule", "column_name", "failures", "row_json")


@dataclass(frozen=True)
class QuarantineFilter:
    """Which quarantined rows: of one month (None: every month and the reference tables), one rule (a check's name
    alone matches it with any arguments), one stage; ``newest``: only of each month's newest landed version (the rows
    of a version replaced since stay in quarantine, and are listed otherwise)."""

    month: str | None = None
    rule: str | None = None
    stage: str | None = None
    newest: bool = False

    def where(self, newest_versions: list[str] | None = None) -> tuple[str, list[Any]]:
        """The SQL condition with ``?`` placeholders, and its parameters (``newest_versions``: the sha256 of each
        month's newest landed file, for ``newest``)."""
        conditions, params = ["true"], []
        if self.newest:
            conditions.append("list_contains(?, _sha256)")
            params.append(list(newest_versions or []))
        for column, value in (("_month", self.month), ("stage", self.stage)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if self.rule is not None:  # a check's name, with or without its arguments: in_range finds in_range(0, 150)
            conditions.append("(rule = ? OR starts_with(rule, ? || '('))")
            params += [self.rule, self.rule]
        return " AND ".join(conditions), params


def newest_versions(conn: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The sha256 of each month's newest landed file of ``table``, as the batch log knows them."""
    return [str(v["sha256"]) for v in latest_verdicts(conn, table, ("raw", "validated")) if v.get("sha256")]


def quarantine_counts(
    conn: duckdb.DuckDBPyConnection, tables: list[str], only: QuarantineFilter | None = None
) -> list[dict[str, Any]]:
    """Quarantined rows counted by table, month, version (the month's newest landed file, or an earlier one replaced
    since), stage, rule and column, newest month first; each with how many of them belong to a batch rejected
    whole."""
    only = only or QuarantineFilter()
    counts: list[dict[str, Any]] = []
    for table in tables:
        if not table_exists(conn, "quarantine", table):
            continue
        newest = newest_versions(conn, table)
        where, params = only.where(newest)
        rows = conn.execute(
            f"SELECT _month, list_contains(?, _sha256) AS newest, stage, rule, column_name, count(*), "
            f"count(*) FILTER (WHERE batch_rejected) FROM {qualified('quarantine', table)} WHERE {where} "
            "GROUP BY ALL ORDER BY _month DESC NULLS LAST, newest DESC, stage, count(*) DESC, rule, column_name",
            [newest, *params],
        ).fetchall()
        for month, is_newest, stage, rule, column, n, in_rejected in rows:
            counts.append(
                {
                    "table": table,
                    "month": month,
                    "version": "newest" if is_newest else "earlier",
                    "stage": stage,
                    "rule": rule,
                    "column": column,
                    "rows": int(n),
                    "rows_of_rejected_batches": int(in_rejected),
                }
            )
    return counts


def quarantined_rows(
    conn: duckdb.DuckDBPyConnection, table: str, only: QuarantineFilter | None = None, limit: int | None = 20
) -> tuple[int, list[dict[str, Any]]]:
    """How many rows of ``quarantine.<table>`` match, and the first ``limit`` of them (None: all) in landed order
    (month, file, position), each with its row parsed from JSON."""
    if not table_exists(conn, "quarantine", table):
        return 0, []
    newest = newest_versions(conn, table)
    where, params = (only or QuarantineFilter()).where(newest)
    name = qualified("quarantine", table)
    (total,) = conn.execute(f"SELECT count(*) FROM {name} WHERE {where}", params).fetchone() or (0,)
    limit_sql = "" if limit is None else " LIMIT ?"
    found = conn.execute(
        f"SELECT {', '.join(ROW_COLUMNS)} FROM {name} WHERE {where} "
        f"ORDER BY _month NULLS FIRST, _source_file, _row, stage, rule{limit_sql}",
        [*params, *([] if limit is None else [limit])],
    ).fetchall()
    rows = []
    for values in found:
        row = dict(zip(ROW_COLUMNS, values, strict=True))
        row["version"] = "newest" if row["_sha256"] in newest else "earlier"
        text = row.pop("row_json")
        try:
            row["row"] = json.loads(text) if text is not None else None
        except json.JSONDecodeError:  # kept as it was written: a row is never lost to its own formatting
            row["row"] = text
        rows.append(row)
    return int(total), rows


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_counts(counts: list[dict[str, Any]]) -> str:
    """The counts as a table for people."""
    header = ("table", "month", "version", "stage", "rule", "column", "rows", "of rejected batches")
    lines = [header] + [
        (
            c["table"],
            c["month"] or "reference",
            c["version"],
            c["stage"],
            c["rule"],
            c["column"] or "",
            f"{c['rows']:,}",
            f"{c['rows_of_rejected_batches']:,}",
        )
        for c in counts
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def format_rows(table: str, total: int, rows: list[dict[str, Any]], row_width: int = 100) -> str:
    """The rows for people: one block each (its position in the landed file counted from 0), the row's values
    clipped to ``row_width`` characters."""
    out = []
    for r in rows:
        where = f"{r['_source_file']} row {r['_row']}" if r["_row"] is not None else r["_source_file"]
        if r.get("version") == "earlier":
            where += " (an earlier version of the month, replaced since)"
        column = r["column_name"]
        # the failing value up front: the row below is clipped, and the column may come late in it
        value = (
            f" = {json.dumps(r['row'][column], default=str)}"
            if isinstance(r["row"], dict) and column in r["row"]
            else ""
        )
        out.append(
            f"{r['_month'] or 'reference'}  {r['stage']}  {where}  (sha256 {str(r['_sha256'])[:12]})\n"
            f"  {r['rule']}{f' on {column}' if column else ''}{value}: {_clip(str(r['failures']), row_width)}\n"
            f"  row: {_clip(json.dumps(r['row'], default=str) if r['row'] is not None else '-', row_width)}"
        )
    shown = f"{len(rows):,} of {total:,} quarantined row(s) of {table}"
    return "\n".join([*out, shown if len(rows) == total else f"{shown} (--limit 0 shows all; --json for scripts)"])
