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

from mlops_assets.core.store import qualified, table_exists

#: What a row listing shows of each quarantined row, in this order (``row`` is ``row_json`` parsed).
ROW_COLUMNS = ("_month", "stage", "_source_file", "_sha256", "_row", "rule", "column_name", "failures", "row_json")


@dataclass(frozen=True)
class QuarantineFilter:
    """Which quarantined rows: of one month (None: every month and the reference tables), one rule (a check's name
    alone matches it with any arguments), one stage."""

    month: str | None = None
    rule: str | None = None
    stage: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition with ``?`` placeholders, and its parameters."""
        conditions, params = ["true"], []
        for column, value in (("_month", self.month), ("stage", self.stage)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if self.rule is not None:  # a check's name, with or without its arguments: in_range finds in_range(0, 150)
            conditions.append("(rule = ? OR starts_with(rule, ? || '('))")
            params += [self.rule, self.rule]
        return " AND ".join(conditions), params


def quarantine_counts(
    conn: duckdb.DuckDBPyConnection, tables: list[str], only: QuarantineFilter | None = None
) -> list[dict[str, Any]]:
    """Quarantined rows counted by table, month, stage, rule and column, newest month first; each with how many of
    them belong to a batch rejected whole and how many landed versions (sha256) of the month they come from."""
    where, params = (only or QuarantineFilter()).where()
    counts: list[dict[str, Any]] = []
    for table in tables:
        if not table_exists(conn, "quarantine", table):
            continue
        rows = conn.execute(
            f"SELECT _month, stage, rule, column_name, count(*), count(*) FILTER (WHERE batch_rejected), "
            f"count(DISTINCT _sha256) FROM {qualified('quarantine', table)} WHERE {where} "
            "GROUP BY ALL ORDER BY _month DESC NULLS LAST, stage, count(*) DESC, rule, column_name",
            params,
        ).fetchall()
        for month, stage, rule, column, n, in_rejected, versions in rows:
            counts.append(
                {
                    "table": table,
                    "month": month,
                    "stage": stage,
                    "rule": rule,
                    "column": column,
                    "rows": int(n),
                    "rows_of_rejected_batches": int(in_rejected),
                    "landed_versions": int(versions),
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
    where, params = (only or QuarantineFilter()).where()
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
    header = ("table", "month", "stage", "rule", "column", "rows", "of rejected batches", "versions")
    lines = [header] + [
        (
            c["table"],
            c["month"] or "reference",
            c["stage"],
            c["rule"],
            c["column"] or "",
            f"{c['rows']:,}",
            f"{c['rows_of_rejected_batches']:,}",
            str(c["landed_versions"]),
        )
        for c in counts
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def format_rows(table: str, total: int, rows: list[dict[str, Any]], row_width: int = 100) -> str:
    """The rows for people: one block each, the row's values clipped to ``row_width`` characters."""
    out = []
    for r in rows:
        where = f"{r['_source_file']} row {r['_row']}" if r["_row"] is not None else r["_source_file"]
        column = r["column_name"]
        # the failing value up front: the row below is clipped, and the column may come late in it
        value = (
            f" = {json.dumps(r['row'][column], default=str)}"
            if isinstance(r["row"], dict) and column in r["row"]
            else ""
        )
        out.append(
            f"{r['_month'] or 'reference'}  {r['stage']}  {where}  (sha256 {str(r['_sha256'])[:12]})\n"
            f"  {r['rule']} on {column}{value}: {_clip(str(r['failures']), row_width)}\n"
            f"  row: {_clip(json.dumps(r['row'], default=str) if r['row'] is not None else '-', row_width)}"
        )
    shown = f"{len(rows):,} of {total:,} quarantined row(s) of {table}"
    return "\n".join([*out, shown if len(rows) == total else f"{shown} (--limit 0 shows all; --json for scripts)"])
