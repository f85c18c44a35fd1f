"""A self-contained HTML report: one row per image (input, counterfactual, map, overlay) and the settings."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from dva.core.io import atomic_write_text

MAX_ROWS = 200
THUMBNAIL = 256
COLUMNS = ("input.png", "reconstruction.png", "counterfactual.png", "attribution.png", "calibrated.png", "overlay.png",
           "uncertainty.png", "condition.png")


def _thumbnail(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# Sorting by the image-level score in the page itself: plain JavaScript, no network, works from the file system.
SORT_BUTTON = '<br><button type="button" onclick="dvaSort(this)">sort by score</button>'
SORT_SCRIPT = """<script>
function dvaSort(button) {
  const body = document.getElementById("images");
  const rows = Array.from(body.querySelectorAll("tr[data-order]"));
  const byScore = button.dataset.sorted !== "score";
  const score = row => row.dataset.score === "" ? -Infinity : parseFloat(row.dataset.score);
  rows.sort((a, b) => byScore ? score(b) - score(a) : a.dataset.order - b.dataset.order);
  rows.forEach(row => body.appendChild(row));
  button.dataset.sorted = byScore ? "score" : "input";
  button.textContent = byScore ? "input order" : "sort by score";
}
</script>"""


def _row(out: Path, image: dict[str, Any], columns: list[str], index: int) -> str:
    """One image's table row: its name, score and notes, then a thumbnail per column."""
    folder = out / image["output"]
    cells = "".join(
        f'<td><img src="{_thumbnail(folder / c)}" alt="{c}"></td>' if (folder / c).is_file() else "<td></td>"
        for c in columns
    )
    notes = "".join(f'<div class="note">{html.escape(warning)}</div>' for warning in image.get("warnings", []))
    value = image.get("score")
    scored = isinstance(value, (int, float))
    score = f'<div class="score">score {value:.3g}</div>' if scored else ""
    return (f'<tr data-order="{index}" data-score="{float(value) if scored else ""}">'
            f"<th>{html.escape(image['output'])}{score}{notes}</th>{cells}</tr>")


def write_report(out: Path, header: dict[str, Any], images: list[dict[str, Any]]) -> Path:
    """Write ``out/report.html`` for the completed images (first ``MAX_ROWS``)."""
    shown = [image for image in images if image["status"] in ("done", "skipped")][:MAX_ROWS]
    columns = [c for c in COLUMNS if any((out / i["output"] / c).is_file() for i in shown)]
    rows = [_row(out, image, columns, index) for index, image in enumerate(shown)]
    scored = any(isinstance(image.get("score"), (int, float)) for image in shown)
    failed = [i for i in images if i["status"] == "failed"]
    failures = "".join(f"<li>{html.escape(str(i.get('error')))}</li>" for i in failed)
    more = len([i for i in images if i["status"] in ("done", "skipped")]) - len(shown)
    settings = html.escape(json.dumps(header.get("recipe", {}), indent=2, default=str))
    note = html.escape(header.get("model_note") or "")
    pairing = header.get("encoder_pairing") or {}
    banner = (f'<p class="banner" role="alert">{html.escape(pairing.get("warning") or "")}</p>'
              if pairing.get("paired") is False else "")
    minuend = "reconstruction" if header.get("recipe", {}).get("reference") == "reconstruction" else "input"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dva run report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;background:#111;color:#eee}}
table{{border-collapse:collapse}} td,th{{padding:4px;vertical-align:middle;text-align:center}}
img{{width:{THUMBNAIL}px;image-rendering:auto;display:block}} pre{{background:#222;padding:1em}}
.note{{color:#fb4;font-weight:bold}} .score{{color:#8cf;font-weight:normal}}
.banner{{background:#a00;color:#fff;font-weight:bold;padding:1em;border:3px solid #f44}}
</style></head><body>
<h1>dva: healthy counterfactuals and attribution maps</h1>
{banner}
<p class="note">{note}</p>
<p>Attribution = {minuend} &minus; counterfactual (brighter = larger change; signed values in
<code>attribution.safetensors</code>). Prompt: <q>{html.escape(str(header.get("prompt", "")))}</q>;
{header.get("unet_calls", "?")} denoising UNet calls per image.</p>
{SORT_SCRIPT if scored else ""}
<table><thead><tr><th>image{SORT_BUTTON if scored else ""}</th>{"".join(f"<th>{c[:-4]}</th>" for c in columns)}</tr></thead>
<tbody id="images">{"".join(rows)}</tbody>
</table>
{f"<p>{more} more images are in the output folder.</p>" if more > 0 else ""}
{f"<h2>Failed inputs</h2><ul>{failures}</ul>" if failed else ""}
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"""
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
