"""Result tables: built once, shown in the terminal with rich, and written as Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A titled table of rows; ``key`` names it in files (``6.1``, ``localisation``, ...)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marked: int | None = None  # a row to mark (the best of a ranking): bold in Markdown and the terminal

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "columns": self.columns,
                "rows": [[_plain(v) for v in row] for row in self.rows], "notes": self.notes}


def _plain(value: Any) -> Any:
    """JSON has no NaN: undefined values are null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def format_value(value: Any) -> str:
    """Numbers as people read them in the thesis' tables: FIDs to two decimals, scores to four."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def to_markdown(tables: list[Table]) -> str:
    parts = []
    for table in tables:
        lines = [f"## {table.title}", "", "| " + " | ".join(table.columns) + " |",
                 "|" + "|".join("---" for _ in table.columns) + "|"]
        lines += ["| " + " | ".join(_marked(format_value(v), index == table.marked) for v in row) + " |"
                  for index, row in enumerate(table.rows)]
        lines += [""] + [f"- {note}" for note in table.notes] + ([""] if table.notes else [])
        parts.append("\n".join(lines))
    return "\n".join(parts)


def _marked(text: str, marked: bool) -> str:
    return f"**{text}**" if marked and text else text


def to_csv(tables: list[Table]) -> str:
    """One long CSV: the table's key and title, then its own columns by name (``column``/``value`` pairs)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "title", "row", "column", "value"])
    for table in tables:
        for index, row in enumerate(table.rows):
            for column, value in zip(table.columns, row):
                writer.writerow([table.key, table.title, index, column, _plain(value)])
    return buffer.getvalue()


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Per-image rows (dicts with possibly different keys) as one CSV with the union of the keys."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _plain(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def to_rich(table: Table) -> Any:
    from rich.table import Table as RichTable

    shown = RichTable(title=table.title, title_justify="left", caption="\n".join(table.notes) or None,
                      caption_justify="left")
    for column in table.columns:
        shown.add_column(column, justify="left" if column.lower().startswith("set") or column == "class" else "right")
    for index, row in enumerate(table.rows):
        shown.add_row(*(format_value(v) for v in row), style="bold green" if index == table.marked else None)
    return shown
