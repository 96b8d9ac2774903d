"""Small Markdown renderings for materialization metadata (the Dagster UI renders them)."""

from __future__ import annotations

import polars as pl


def frame_to_markdown(frame: pl.DataFrame, max_rows: int = 10, float_digits: int = 3) -> str:
    """A Markdown table of the first ``max_rows`` rows."""
    head = frame.head(max_rows)

    def cell(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.{float_digits}f}"
        return str(value).replace("|", "/")

    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * head.width]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)
