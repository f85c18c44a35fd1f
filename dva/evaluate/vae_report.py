"""What ``dva check-vae`` writes and shows: per-image and per-class tables (CSV, JSON, Markdown, the terminal),
the contact sheet of the worst reconstructions, and the manifest.

Files (all written atomically into the output folder): ``per_image.csv``, ``classes.csv``, ``vae_check.json``,
``summary.md``, ``worst.png`` and ``manifest.json`` (versions, the VAE's weights hashes, the settings, each
image's status and input hash).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.io import atomic_write_bytes, atomic_write_text
from dva.evaluate.tables import Table, rows_to_csv, to_markdown
from dva.evaluate.vae_check import POSTERIOR, CheckResult, ClassSummary, ImageCheck, Pair

CELL = 192  # side of one contact-sheet cell in pixels
LABEL = 30  # height of a row's caption


def image_row(check: ImageCheck) -> dict[str, Any]:
    """One image's line in ``per_image.csv`` and ``vae_check.json``."""
    scores = check.scores
    return {
        "image": str(check.path), "class": check.label, "status": check.status,
        "psnr_db": None if scores is None else round(scores.psnr, 4),
        "ssim": None if scores is None else round(scores.ssim, 6),
        "ms_ssim": None if scores is None or scores.ms_ssim is None else round(scores.ms_ssim, 6),
        "verdict": check.verdict,
        "width": None if check.size is None else check.size[1], "height": None if check.size is None else check.size[0],
        "scored_width": None if check.area is None else check.area[1],
        "scored_height": None if check.area is None else check.area[0],
        "error": check.error,
    }


def class_row(summary: ClassSummary) -> dict[str, Any]:
    """One class's line in ``classes.csv`` and ``vae_check.json``: means and standard deviations over its images."""
    row: dict[str, Any] = {"class": summary.label, "images": summary.images, "failed": summary.failed}
    for name, unit in (("psnr", "psnr_db"), ("ssim", "ssim"), ("ms_ssim", "ms_ssim")):
        mean, std = summary.means[name], summary.stds[name]
        row[f"{unit}_mean"] = None if mean is None else round(mean, 6)
        row[f"{unit}_std"] = None if std is None else round(std, 6)
    row["verdict"] = summary.verdict
    return row


def _plus_minus(mean: float | None, std: float | None, digits: int) -> str:
    return "n/a" if mean is None or std is None else f"{mean:.{digits}f}±{std:.{digits}f}"


def class_table(result: CheckResult) -> Table:
    """Per class and all images: count, mean±std of each measure, verdict. Narrow enough for 80 columns."""
    thresholds = result.thresholds
    table = Table("vae-check", f"VAE reconstruction at {result.resolution} px (mean±std over images)",
                  ["class", "n", "PSNR dB", "SSIM", "MS-SSIM", "verdict"])
    for summary in [*result.classes, result.overall]:
        count = f"{summary.images - summary.failed}" + (f" ({summary.failed} failed)" if summary.failed else "")
        table.rows.append([summary.label, count, _plus_minus(summary.means["psnr"], summary.stds["psnr"], 1),
                           _plus_minus(summary.means["ssim"], summary.stds["ssim"], 3),
                           _plus_minus(summary.means["ms_ssim"], summary.stds["ms_ssim"], 3),
                           summary.verdict or "none"])
    table.notes.append(f"PASS: PSNR ≥ {thresholds.pass_psnr:g} dB and SSIM ≥ {thresholds.pass_ssim:g}; FAIL: PSNR < "
                       f"{thresholds.fail_psnr:g} dB or SSIM < {thresholds.fail_ssim:g}; else WARN (docs/usage.md).")
    table.notes.extend(result.notes)
    return table


def worst_table(result: CheckResult, count: int = 5) -> Table:
    """The ``count`` worst-reconstructed images (lowest PSNR first), with their class."""
    table = Table("vae-check-worst", "Worst reconstructions", ["image", "class", "PSNR dB", "SSIM", "verdict"])
    for pair in result.worst[:count]:
        check = pair.check
        assert check.scores is not None
        table.rows.append([check.path.name, check.label, f"{check.scores.psnr:.1f}", f"{check.scores.ssim:.3f}",
                           check.verdict])
    return table


def verdict_line(result: CheckResult) -> str:
    """One line: the overall verdict, each class's, and how many images were scored and failed."""
    overall = result.overall
    scored = overall.images - overall.failed
    classes = ", ".join(f"{summary.label} {summary.verdict or 'none'}" for summary in result.classes)
    failed = f", {overall.failed} failed" if overall.failed else ""
    return f"VAE check: {overall.verdict or 'no verdict'} ({scored} images scored{failed}; {classes})"


def _cell(gray_or_rgb: np.ndarray) -> np.ndarray:
    """An image fitted into a CELL x CELL uint8 RGB square (aspect kept, black around)."""
    from PIL import Image

    array = np.clip(gray_or_rgb, 0.0, 1.0)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    image = Image.fromarray((array * 255 + 0.5).astype(np.uint8))
    scale = CELL / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR)
    square = Image.new("RGB", (CELL, CELL), "black")
    square.paste(image, ((CELL - image.width) // 2, (CELL - image.height) // 2))
    return np.asarray(square)


def contact_sheet(pairs: list[Pair]) -> tuple[bytes, float]:
    """PNG of the worst reconstructions, one row each: input | reconstruction | |error| heatmap (inferno), and the
    error that is full colour (the rows' 99.5th percentile of |error|, one scale for the whole sheet)."""
    from PIL import Image, ImageDraw

    from dva.core.attribution import heatmap, map_scale

    errors = [pair.image - pair.reconstruction for pair in pairs]
    scale = max((map_scale(error) for error in errors), default=1.0)
    header = 34
    sheet = Image.new("RGB", (3 * CELL, header + (CELL + LABEL) * max(len(pairs), 1)), "black")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "input | reconstruction | |error|", fill="white")
    draw.text((4, 18), f"full colour = {scale:.3f} of the intensity range (worst first)", fill="white")
    for index, (pair, error) in enumerate(zip(pairs, errors)):
        y = header + (CELL + LABEL) * index
        check = pair.check
        assert check.scores is not None
        draw.text((4, y + 2), f"{check.path.name} [{check.label}]"[:60], fill="white")
        draw.text((4, y + 15), f"PSNR {check.scores.psnr:.1f} dB  SSIM {check.scores.ssim:.3f}  {check.verdict}",
                  fill="white")
        for column, array in enumerate((pair.image, pair.reconstruction, heatmap(error, scale))):
            sheet.paste(Image.fromarray(_cell(array)), (column * CELL, y + LABEL))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), scale


def document(result: CheckResult, header: dict[str, Any]) -> dict[str, Any]:
    """Everything of ``vae_check.json``: the header (model, settings), thresholds, classes, images, notes."""
    return {
        **header, "posterior": POSTERIOR, "resolution": result.resolution,
        "thresholds": asdict(result.thresholds), "overall": class_row(result.overall),
        "classes": [class_row(summary) for summary in result.classes],
        "images": [image_row(check) for check in result.images], "notes": result.notes,
        "worst": [str(pair.check.path) for pair in result.worst],
    }


# Every file write_outputs may write into the output folder.
FILES = ("per_image.csv", "classes.csv", "vae_check.json", "summary.md", "worst.png", "manifest.json")


def write_outputs(out: Path, result: CheckResult, header: dict[str, Any]) -> list[str]:
    """Write every file into ``out`` (atomically); returns their names. ``header`` goes into the JSON and manifest."""
    from dva.core.manifest import write_manifest

    rows = [image_row(check) for check in result.images]
    atomic_write_text(out / "per_image.csv", rows_to_csv(rows))
    atomic_write_text(out / "classes.csv", rows_to_csv([class_row(s) for s in [*result.classes, result.overall]]))
    data = document(result, header)
    atomic_write_text(out / "vae_check.json", json.dumps(data, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "summary.md", "# dva check-vae\n\n" + to_markdown([class_table(result), worst_table(result)]))
    written = ["per_image.csv", "classes.csv", "vae_check.json", "summary.md"]
    if result.worst:
        png, scale = contact_sheet(result.worst)
        atomic_write_bytes(out / "worst.png", png)
        header = {**header, "contact_sheet_full_colour": scale}
        written.append("worst.png")
    else:  # nothing was scored: a sheet left by an earlier check into this folder would not be this one's
        (out / "worst.png").unlink(missing_ok=True)
    images = [{"input": str(check.path), "sha256": check.sha256, "status": check.status, "class": check.label,
               **({"error": check.error} if check.error else {})} for check in result.images]
    write_manifest(out, {**header, "files": written}, images)
    return [*written, "manifest.json"]
