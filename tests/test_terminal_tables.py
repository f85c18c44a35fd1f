"""Specification: every table dva prints stays readable in an 80-column terminal.

No value is cut to "…" and no line is wider than the terminal: a table is shown whole when it fits, in parts
of fewer columns (the row names repeated) when those fit, else as one block per row. The files keep the
whole table.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from dva.evaluate.tables import Table, format_value, print_table, to_csv

WIDTH = 80


def readable(text: str, width: int = WIDTH) -> None:
    """No value cut with an ellipsis, no line wider than the terminal."""
    assert "…" not in text
    too_wide = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not too_wide, too_wide[0]


def printed(table: Table, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_table(console, table)
    return console.export_text()


def shown_whole(text: str, table: Table) -> None:
    """Every short value of the table appears on the screen in full."""
    flat = re.sub(r"\s+", " ", text)
    for row in table.rows:
        for value in row:
            shown = format_value(value)
            if shown and " " not in shown and len(shown) < 40:
                assert shown in flat, shown


def comparison(rank_by: str | None = "auprc") -> Table:
    from dva.evaluate.compare import Combination, Outcome, comparison_table

    summary = {"ssim": 0.8123, "ms_ssim": 0.91, "fid": 123.4, "auroc": 0.7, "auprc": 0.41, "dice_otsu": 0.3,
               "best_dice": 0.52, "null_ratio": 1.2}
    outcomes = [Outcome(Combination(encoder="radbert", prior=prior, strength=strength), Path("run"), images=6,
                        seconds_per_image=3.2, summary={**summary, "auprc": strength / 2},
                        encoder={"encoder": "radbert", "source": "/models/radiology/RadBERT-RoBERTa-4m", "paired": True})
                for prior in ("sdedit", "controlnet-canny") for strength in (0.55, 0.85)]
    table = comparison_table(outcomes, rank_by)
    table.label_columns = table.columns.index("images")  # as dva compare prints it
    return table


@pytest.mark.parametrize("rank_by", [None, "auprc"])
def test_the_comparison_is_one_block_per_combination_at_80_columns(rank_by):
    table = comparison(rank_by)
    text = printed(table)
    readable(text)
    shown_whole(text, table)
    assert "encoder radbert · prior controlnet-canny · strength 0.8500" in text, "each block names its combination"
    assert "/models/radiology/RadBERT-RoBERTa-4m" in text
    assert all(column in to_csv([table]) for column in table.columns), "the files keep every column"


def test_a_wide_table_of_numbers_is_split_into_parts_that_repeat_the_row_names():
    from dva.plugins.metrics import LOCALISATION_COLUMNS

    table = Table("localisation", "Localisation", ["class", "images", *LOCALISATION_COLUMNS],
                  [[label, 12, *(0.1 * i for i in range(len(LOCALISATION_COLUMNS)))]
                   for label in ("Normal", "Lung Opacity", "Cardiomegaly")])
    text = printed(table)
    readable(text)
    shown_whole(text, table)
    assert "Localisation (1/2)" in text and "Localisation (2/2)" in text
    assert text.count("Lung Opacity") == 2, "the class names each part's rows"


def test_the_image_level_table_wraps_its_long_score_name_and_keeps_the_numbers_whole():
    from dva.evaluate.image_level import image_level_table

    rows = {"Normal": [{"score": 1.0, "score_energy": 0.1, "score_p99.5": 0.2}] * 3,
            "Lung Opacity": [{"score": 5.0, "score_energy": 0.3, "score_p99.5": 0.5}] * 3}
    method = "mean of the top 1% of the calibrated map inside the mask, per pixel against healthy scans"
    table, _ = image_level_table(rows, "Normal", method)
    text = printed(table)
    readable(text)
    shown_whole(text, table)
    assert text.splitlines()[2].split() == ["┃", "score", "┃", "class", "┃", "images", "┃", "AUROC", "┃", "AUPRC",
                                            "┃"], "one table, its header on one line"


def test_a_table_that_fits_is_printed_as_it_is():
    table = Table("null-test", "Null test", ["class", "images", "energy", "relative to healthy"],
                  [["Normal", 10, 0.0123, 1.0], ["Lung Opacity", 10, 0.0456, 3.7073]])
    text = printed(table)
    readable(text)
    assert "┃ class        ┃ images ┃ energy ┃ relative to healthy ┃" in text


def test_the_run_summary_fits_80_columns(tmp_path):
    from types import SimpleNamespace

    from dva.cli.run import _summary

    console = Console(width=WIDTH, record=True, file=io.StringIO())
    result = SimpleNamespace(header={"calibration": {"calibrated": True, "images": 50}}, out=tmp_path,
                             report=tmp_path / "report.html", count=lambda status: 12)
    _summary(console, result)
    text = console.export_text()
    readable(text.split("outputs:")[0])
    assert "already complete (resumed)" in text and "12" in text


@pytest.mark.parametrize("args", [["registry", "show"], ["registry", "show", "tiny-phantom"], ["plugins"]])
def test_registry_and_plugins_tables_fit_80_columns(args):
    from dva.cli import cli

    result = CliRunner().invoke(cli, args, env={"COLUMNS": str(WIDTH)}, catch_exceptions=False)
    assert result.exit_code == 0
    readable(result.output)
    assert ("tiny-phantom" in result.output) if args[0] == "registry" else ("controlnet-canny" in result.output)


def test_the_phantoms_table_fits_80_columns(tmp_path):
    from dva.cli import cli

    result = CliRunner().invoke(cli, ["phantoms", "--out", str(tmp_path / "ph"), "--n", "1", "--size", "32"],
                                env={"COLUMNS": str(WIDTH)}, catch_exceptions=False)
    assert result.exit_code == 0
    readable(result.output.split("Wrote ")[0])
    assert "Lung Opacity/" in result.output
