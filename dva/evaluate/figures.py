"""What ``dva compare`` shows: a contact sheet (one row per input, one column per combination) as PNG
and HTML, and plots of the measures against each other and against the strength."""

from __future__ import annotations

import html
import io
from pathlib import Path

import numpy as np

from dva.core.io import atomic_write_bytes, atomic_write_text
from dva.evaluate.compare import SUMMARY_COLUMNS, Outcome

CELL = 128  # thumbnail side; a combination's cell is its counterfactual and its overlay side by side
MAX_INPUTS = 40
HEADER = 36


def _thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        return np.zeros((CELL, CELL, 3), dtype=np.uint8)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((CELL, CELL), Image.Resampling.BILINEAR))


def _rows(outcomes: list[Outcome]) -> list[tuple[str, Path, list[Path | None]]]:
    """(input name, its model-size input image, each combination's output folder or None), inputs in run order."""
    folders: dict[str, dict[int, Path]] = {}
    inputs: dict[str, Path] = {}
    for index, outcome in enumerate(outcomes):
        if outcome.evaluation is None:
            continue
        for row in outcome.evaluation.per_image:
            folder = Path(row["output"])
            folders.setdefault(row["input"], {})[index] = folder
            inputs.setdefault(row["input"], folder / "input.png")
    return [(Path(name).name, inputs[name], [folders[name].get(i) for i in range(len(outcomes))])
            for name in list(folders)[:MAX_INPUTS]]


def contact_sheet_png(outcomes: list[Outcome], path: Path) -> None:
    """Input | per combination: counterfactual, overlay; a header row names the combinations."""
    from PIL import Image, ImageDraw

    rows = _rows(outcomes)
    width = CELL + 2 * CELL * len(outcomes)
    sheet = Image.new("RGB", (width, HEADER + CELL * max(len(rows), 1)), "black")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "input", fill="white")
    for index, outcome in enumerate(outcomes):
        x = CELL + 2 * CELL * index
        draw.text((x + 4, 4), outcome.combination.label, fill="white")
        draw.text((x + 4, 18), "counterfactual | map" if outcome.error is None else f"failed: {outcome.error}"[:40],
                  fill="white" if outcome.error is None else "red")
    for row_index, (_, model_input, folders) in enumerate(rows):
        y = HEADER + CELL * row_index
        sheet.paste(Image.fromarray(_thumbnail(model_input)), (0, y))
        for index, folder in enumerate(folders):
            if folder is None:
                continue
            x = CELL + 2 * CELL * index
            sheet.paste(Image.fromarray(_thumbnail(folder / "counterfactual.png")), (x, y))
            sheet.paste(Image.fromarray(_thumbnail(folder / "overlay.png")), (x + CELL, y))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=3)
    atomic_write_bytes(path, buffer.getvalue())


def contact_sheet_html(outcomes: list[Outcome], path: Path, table_html: str) -> None:
    from dva.core.report import thumbnail_uri as data_uri

    header = "".join(f"<th colspan=2>{html.escape(o.combination.label)}"
                     f"{'' if o.error is None else '<br><span class=bad>' + html.escape(o.error) + '</span>'}</th>"
                     for o in outcomes)
    body = []
    for name, model_input, folders in _rows(outcomes):
        cells = [f'<td><img src="{data_uri(model_input)}" alt="input"></td>']
        for folder in folders:
            for image in ("counterfactual.png", "overlay.png"):
                cells.append(f'<td><img src="{data_uri(folder / image)}" alt="{image}"></td>'
                             if folder is not None and (folder / image).is_file() else "<td></td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dva compare</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;background:#111;color:#eee}}
table{{border-collapse:collapse}} td,th{{padding:3px;text-align:center;vertical-align:middle}}
img{{width:{CELL}px;display:block}} .bad{{color:#f66}} .measures td{{padding:3px 10px;text-align:right}}
</style></head><body>
<h1>dva compare</h1>
{table_html}
<p>Per combination: the counterfactual, then its attribution map over the input.</p>
<table><tr><th></th><th>input</th>{header}</tr>
{''.join(body)}
</table></body></html>
"""
    atomic_write_text(path, page)


def measures_html(outcomes: list[Outcome]) -> str:
    from dva.evaluate.compare import comparison_table
    from dva.evaluate.tables import format_value

    table = comparison_table(outcomes)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
                   for row in table.rows)
    return f'<table class="measures"><tr>{head}</tr>{rows}</table>'


def plots(outcomes: list[Outcome], folder: Path) -> list[Path]:
    """SSIM against FID (where FID was measured), and localisation (else SSIM) against strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [o for o in outcomes if o.error is None and o.summary]
    written = []
    if any("fid" in o.summary and "ssim" in o.summary for o in done):
        figure, axis = plt.subplots(figsize=(6, 4.5))
        for outcome in (o for o in done if "fid" in o.summary and "ssim" in o.summary):
            axis.scatter(outcome.summary["fid"], outcome.summary["ssim"])
            axis.annotate(outcome.combination.label, (outcome.summary["fid"], outcome.summary["ssim"]), fontsize=7)
        axis.set_xlabel("FID, real healthy vs generated (lower is better)")
        axis.set_ylabel("SSIM, input vs counterfactual")
        written.append(_save(figure, folder / "ssim_vs_fid.png"))
    strengths = {o.combination.strength for o in done if o.combination.strength is not None}
    measure = "auprc" if any("auprc" in o.summary for o in done) else "ssim"
    if len(strengths) > 1 and any(measure in o.summary for o in done):
        figure, axis = plt.subplots(figsize=(6, 4.5))
        series: dict[str, list[tuple[float, float]]] = {}
        for outcome in done:
            c = outcome.combination
            if c.strength is None or measure not in outcome.summary:
                continue
            key = " · ".join(str(v) for v in (c.encoder, c.prior, c.scheduler,
                                              None if c.guidance_scale is None else f"guidance {c.guidance_scale:g}")
                             if v) or "entry defaults"
            series.setdefault(key, []).append((c.strength, outcome.summary[measure]))
        for key, points in series.items():
            points.sort()
            axis.plot(*zip(*points), marker="o", label=key)
        axis.set_xlabel("strength (SDEdit t0 / T)")
        axis.set_ylabel(SUMMARY_COLUMNS[measure])
        axis.legend(fontsize=7)
        written.append(_save(figure, folder / f"{measure}_vs_strength.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path

