"""Markdown pieces the report and the model card share: one way to show a value, one table."""

from __future__ import annotations

from collections.abc import Sequence


def cell(value: object, digits: int = 4) -> str:
    """A value as shown to people: floats rounded, a dash for nothing."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "_no folds_\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
