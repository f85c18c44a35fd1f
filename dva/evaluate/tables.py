"""Result tables: built once, shown in the terminal with rich, and written as Markdown, CSV and JSON.

In the terminal a table is shown whole when it fits the terminal's width (prose columns wrapped at spaces),
otherwise as one block per row (its name, then each column's value on a line of its own): never with
values cut to "…". The files always hold the whole table.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

MIN_PROSE_WIDTH = 24  # a column of sentences narrower than this reads badly: blocks instead
BLOCK_INDENT = 2
MAX_PARTS = 3  # a wide table split into more tables than this reads better as one block per row


@dataclass
class Table:
    """A titled table of rows; ``key`` names it in files (``6.1``, ``localisation``, ...)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marked: int | None = None  # a row to mark (the best of a ranking): bold in Markdown and the terminal
    label_columns: int = 1  # leading columns that name a row: the heading of its block in a narrow terminal

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


def to_rich(table: Table, width: int | None = None) -> Any:
    """The table as a rich renderable: for a terminal ``width`` columns wide (:func:`to_console`), or whole."""
    return _whole(table, set()) if width is None else to_console(table, width)


def _numeric(table: Table, index: int) -> bool:
    """Whether a column holds numbers only (right-aligned, as figures are)."""
    values = [row[index] for row in table.rows if index < len(row) and row[index] is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _cells(table: Table) -> list[list[str]]:
    """Each column's header and formatted values."""
    rows = [[format_value(value) for value in row] for row in table.rows]
    return [[column, *(row[index] for row in rows if index < len(row))] for index, column in enumerate(table.columns)]


def _natural_width(cells: list[str]) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for cell in cells for line in (cell.splitlines() or [""]))


def fits(table: Table, width: int) -> tuple[bool, set[int]]:
    """Whether ``table`` reads well as a table ``width`` columns wide, and which of its columns may wrap.

    It does when every value is shown whole on one line, or when only prose columns (values with spaces, wider
    than ``MIN_PROSE_WIDTH``) need wrapping and each keeps at least that many columns. Rich's box: a border and
    one space of padding either side of each column.
    """
    columns = _cells(table)
    natural = [_natural_width(cells) for cells in columns]
    frame = 3 * len(columns) + 1
    if sum(natural) + frame <= width:
        return True, set()
    prose = {i for i, cells in enumerate(columns)
             if natural[i] > MIN_PROSE_WIDTH and any(" " in cell for cell in cells[1:])}
    fixed = sum(w for i, w in enumerate(natural) if i not in prose) + frame
    room = width - fixed
    return bool(prose) and room >= MIN_PROSE_WIDTH * len(prose), prose


def _whole(table: Table, prose: set[int]) -> Any:
    """The table as one rich table under its title: prose columns wrap (a long word folds), the others are
    never cut."""
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    shown = RichTable()
    for index, column in enumerate(table.columns):
        shown.add_column(column, justify="right" if _numeric(table, index) else "left", no_wrap=index not in prose,
                         overflow="fold")
    for index, row in enumerate(table.rows):
        shown.add_row(*(format_value(v) for v in row), style="bold green" if index == table.marked else None)
    # Title and notes as text of their own: they wrap at the terminal's width, not at a narrow table's.
    return Group(Text(table.title, style="italic"), shown, *(Text(note, style="dim") for note in table.notes))


def _pairs_grid(pairs: list[tuple[str, str]], width: int) -> Any:
    """``(column, value)`` pairs as an aligned grid ``width`` wide: two pairs a line when the short ones fit side
    by side, each long one (a path, a sentence) on a line of its own, folded rather than cut."""
    from rich.cells import cell_len
    from rich.console import Group
    from rich.table import Table as RichTable

    half = (width - 2) // 2
    key = max((cell_len(c) for c, _ in pairs), default=0)
    short = [pair for pair in pairs if key + 2 + cell_len(pair[1]) <= half]
    side_by_side = len(short) >= 4
    grids = []
    if side_by_side:
        grid = RichTable.grid(padding=(0, 2))
        for _ in range(2):
            grid.add_column(style="dim", no_wrap=True)
            grid.add_column(no_wrap=True)
        for first in range(0, len(short), 2):
            grid.add_row(*short[first], *(short[first + 1] if first + 1 < len(short) else ("", "")))
        grids.append(grid)
    rest = [pair for pair in pairs if not side_by_side or pair not in short]
    if rest:
        grid = RichTable.grid(padding=(0, 2))
        grid.add_column(style="dim", max_width=max(8, width // 3), overflow="fold")
        grid.add_column(overflow="fold")
        for pair in rest:
            grid.add_row(*pair)
        grids.append(grid)
    return Group(*grids)


def _blocks(table: Table, width: int) -> Any:
    """One block per row: the row's name (its label columns), then the other columns' values, whole."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    parts: list[Any] = [Text(table.title, style="italic"),
                        Text(f"({len(table.columns)} columns, too wide for {width}: one block per row)", style="dim")]
    labels = max(1, min(table.label_columns, len(table.columns)))
    for index, row in enumerate(table.rows):
        values = [format_value(v) for v in row]
        named = [f"{c} {v}" for c, v in zip(table.columns[:labels], values[:labels]) if v != ""]
        heading = values[0] if labels == 1 else " · ".join(named)
        marked = index == table.marked
        parts.append(Text(heading + ("  (best)" if marked else ""), style="bold green" if marked else "bold"))
        pairs = [(c, v) for c, v in zip(table.columns[labels:], values[labels:]) if v != ""]
        parts.append(Padding(_pairs_grid(pairs, width - BLOCK_INDENT), (0, 0, 0, BLOCK_INDENT)))
    parts += [Text(note, style="dim") for note in table.notes]
    return Group(*parts)


def column_parts(table: Table, width: int) -> list[list[int]] | None:
    """The columns after the label columns in consecutive groups that each fit ``width`` beside the label
    columns (a table of its own each), or None when one does not fit or it takes more than ``MAX_PARTS``."""
    natural = [_natural_width(cells) for cells in _cells(table)]
    labels = max(1, min(table.label_columns, len(natural)))
    base = sum(natural[:labels]) + 3 * labels + 1
    parts: list[list[int]] = [[]]
    used = base
    for index in range(labels, len(natural)):
        need = natural[index] + 3
        if base + need > width:
            return None
        if used + need > width:
            parts.append([])
            used = base
        parts[-1].append(index)
        used += need
    return parts if len(parts) <= MAX_PARTS else None


def _part(table: Table, columns: list[int], number: int, count: int) -> Table:
    """The label columns and ``columns`` of ``table``, titled as part ``number`` of ``count``."""
    kept = list(range(max(1, min(table.label_columns, len(table.columns))))) + columns
    return Table(table.key, f"{table.title} ({number}/{count})", [table.columns[i] for i in kept],
                 [[row[i] if i < len(row) else None for i in kept] for row in table.rows],
                 table.notes if number == count else [], table.marked, table.label_columns)


def to_console(table: Table, width: int) -> Any:
    """``table`` for a terminal ``width`` columns wide: whole when it :func:`fits`; else in parts of fewer columns,
    the label columns repeated, when they fit (:func:`column_parts`); else one block per row."""
    from rich.console import Group

    whole, prose = fits(table, width)
    if whole:
        return _whole(table, prose)
    parts = column_parts(table, width)
    if parts is not None:
        return Group(*(_whole(_part(table, columns, number, len(parts)), set())
                       for number, columns in enumerate(parts, 1)))
    return _blocks(table, width)


def print_table(console: Any, table: Table) -> None:
    """Print ``table`` on a rich ``console`` at its width (wrapped even on a soft-wrapping console: a narrow
    terminal gets lines no wider than itself)."""
    console.print(to_console(table, console.width), soft_wrap=False)
