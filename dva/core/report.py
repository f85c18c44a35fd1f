"""``report.html``: one card per image (input and counterfactual to swipe or blink, the map with its colour bar
and a threshold slider, the calibrated and signed maps, the image's numbers), the run's settings in a header,
and the failed inputs with their reasons.

The page opens from the file system: style and script are inline (:mod:`dva.core.report_page`), the images
are the output folder's own files by relative path, and the maps the slider repaints are embedded as small
grey ``data:`` PNGs. Written at the end of every run, so it reads only what it shows: each image's
``attribution.safetensors`` tensors one by one, never the full-size ones.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from dva.core import attribution
from dva.core.calibration import HEATMAP_SCALE as CALIBRATED_SCALE
from dva.core.io import atomic_write_text, png_bytes
from dva.core.report_page import SCRIPT, SORT_SCRIPT, STYLE
from dva.core.run.write import COUNTERFACTUAL_16BIT

MAX_ROWS = 200
MAP_SIDE = 256  # the embedded grey maps are at most this many pixels a side (a 512 px map: 4 times fewer pixels)
GRADIENT_STOPS = 17
LEVELS = attribution.LEVELS  # a heatmap's colour levels
# Images shown as they are, when the folder has them: beside the swipe, and after the maps.
BESIDE_SWIPE = (("reconstruction.png", "reconstruction (the map's minuend)"),)
AFTER_MAPS = (("overlay.png", "overlay"), ("uncertainty.png", "uncertainty: spread of the samples' maps, on the map's scale"),
              ("condition.png", "condition"))


def colour_table() -> list[list[int]]:
    """The RGB colours (0-255) of the heatmaps' 256 levels: dva.core.attribution's own lookup table, so the page
    paints a map exactly as ``attribution.png`` shows it."""
    return attribution.colour_table(attribution.HEATMAP_COLORMAP).astype(int).tolist()


def thumbnail_uri(path: Path, side: int = MAP_SIDE) -> str:
    """An image file as a PNG ``data:`` URI at most ``side`` pixels a side (for pages that embed their images,
    such as dva compare's contact sheet)."""
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class GreyMap:
    """A map as an 8-bit grey PNG ``data:`` URI (grey level = colour level of value / full colour) and its size."""

    uri: str
    width: int
    height: int


@dataclass
class MapData:
    """What the page needs of one image's maps: the value at full colour, the grey maps to paint, a number."""

    scale: float | None = None
    grey: GreyMap | None = None  # |map| / scale
    calibrated: GreyMap | None = None  # the calibrated map / CALIBRATED_SCALE
    mean_in_mask: float | None = None  # mean |map| inside the mask (the whole image without one)
    masked: bool = False


def _grey_map(fraction: np.ndarray) -> GreyMap:
    """``fraction`` of full colour as the colour levels the heatmaps bin it into, a grey PNG at most ``MAP_SIDE``
    pixels a side (a larger map is reduced by its levels' box average)."""
    from PIL import Image

    levels = attribution.levels(np.clip(fraction, 0.0, 1.0)).astype(np.uint8)
    image = Image.fromarray(levels)
    if max(image.size) > MAP_SIDE:
        image.thumbnail((MAP_SIDE, MAP_SIDE), Image.Resampling.BOX)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(np.asarray(image))).decode()
    return GreyMap(uri, *image.size)


def read_maps(folder: Path) -> MapData:
    """The image's map data from its ``attribution.safetensors`` (none when the file is missing or unreadable:
    the card then shows the PNGs alone). Reads the model-size tensors only, never the full-size ones."""
    from safetensors import SafetensorError, safe_open

    path = folder / "attribution.safetensors"
    if not path.is_file():
        return MapData()
    try:
        with safe_open(str(path), framework="numpy") as tensors:
            names = set(tensors.keys())
            metadata = tensors.metadata() or {}
            signed = tensors.get_tensor("attribution")
            mask = tensors.get_tensor("mask").astype(bool) if "mask" in names else None
            calibrated = tensors.get_tensor("calibrated") if "calibrated" in names else None
        recorded = float(metadata.get("heatmap_scale") or "nan")
    except (OSError, SafetensorError, KeyError, ValueError):
        return MapData()
    scale = recorded if np.isfinite(recorded) and recorded > 0 else attribution.map_scale(signed, mask)
    magnitude = np.abs(signed)
    inside = magnitude[mask] if mask is not None and mask.shape == magnitude.shape and mask.any() else magnitude
    return MapData(scale, _grey_map(magnitude / scale),
                   None if calibrated is None else _grey_map(calibrated / CALIBRATED_SCALE),
                   float(inside.mean()) if inside.size else None, mask is not None)


@functools.cache
def heat_gradient() -> str:
    """The heatmaps' colour bar as a CSS gradient (computed once: it needs matplotlib's colour map)."""
    return _gradient(colour_table())


@functools.cache
def signed_gradient() -> str:
    """The signed map's colour bar (``signed.png``'s colour map, -full colour to +full colour) as a CSS gradient."""
    return _gradient(attribution.colour_table(attribution.SIGNED_COLORMAP).astype(int).tolist())


def _gradient(colours: list[list[int]]) -> str:
    """A CSS linear gradient through ``GRADIENT_STOPS`` evenly sampled of ``colours`` (RGB triples, 0-255)."""
    picked = [colours[round(i * (len(colours) - 1) / (GRADIENT_STOPS - 1))] for i in range(GRADIENT_STOPS)]
    return "linear-gradient(to right," + ",".join(f"rgb({r},{g},{b})" for r, g, b in picked) + ")"


def colour_bar(gradient: str, ticks: tuple[str, ...], unit: str, thresholded: bool = False) -> str:
    """A colour bar and its tick labels; a thresholded one marks the map threshold on it."""
    return (f'<div class="bar{" thresholded" if thresholded else ""}" style="background:{gradient}" role="img" '
            f'aria-label="colour bar: {html.escape(unit)}"></div>'
            f'<div class="ticks">{"".join(f"<span>{html.escape(t)}</span>" for t in ticks)}</div>')


def bar_unit(unit: str, full: float | None = None) -> str:
    """A colour bar's unit; with ``full`` (the value at full colour) the page adds the value the threshold hides."""
    hidden = "" if full is None else f' <span class="hidden-below" data-full="{full:.6g}"></span>'
    return f'<span class="unit">{html.escape(unit)}{hidden}</span>'


def _number(value: float) -> str:
    return f"{value:.3g}"


def _figure(content: str, caption: str, links: tuple[tuple[str, str], ...] = (), extra: str = "",
            attributes: str = "", detail: str = "") -> str:
    """One panel: its picture, what goes right below it (a colour bar, a slider), then a caption (what it is,
    ``detail`` such as the bar's unit, and links to the files)."""
    linked = " · ".join(f'<a href="{href}">{html.escape(label)}</a>' for label, href in links)
    return (f'<figure{attributes}>{content}{extra}<figcaption><span class="what">{html.escape(caption)}</span>'
            f'{detail}{f"<span>{linked}</span>" if linked else ""}</figcaption></figure>')


def _image(href: str, alt: str, css: str = "") -> str:
    return f'<img src="{href}" alt="{html.escape(alt)}"{f" class={css!r}" if css else ""} loading="lazy">'


class Card:
    """One image's card: the files its folder has, and how to link to them from the report."""

    def __init__(self, out: Path, image: dict[str, Any]) -> None:
        self.image, self.folder = image, out / image["output"]
        self.maps = read_maps(self.folder)

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def href(self, name: str) -> str:
        """The file's address relative to report.html (percent-encoded: names have spaces)."""
        return quote(f"{self.image['output']}/{name}")

    def links(self, name: str) -> tuple[tuple[str, str], ...]:
        found = [(name, self.href(name))] if self.has(name) else []
        if self.has(f"fullsize/{name}"):
            found.append(("full size", self.href(f"fullsize/{name}")))
        return tuple(found)

    def swipe(self) -> str:
        """Input and counterfactual stacked: the slider moves the line between them, the page's button blinks."""
        if not (self.has("input.png") and self.has("counterfactual.png")):
            return "".join(_figure(_image(self.href(n), n), n[:-4], self.links(n))
                           for n in ("input.png", "counterfactual.png") if self.has(n))
        stack = (f'<div class="stack">{_image(self.href("input.png"), "input")}'
                 f'{_image(self.href("counterfactual.png"), "counterfactual", "top")}<div class="line"></div></div>')
        slider = ('<input type="range" min="0" max="100" value="50" oninput="dvaSwipe(this)" '
                  'aria-label="swipe between input and counterfactual">')
        return _figure(stack, "input | counterfactual (swipe)", self.links("counterfactual.png") + self.extra_links(),
                       slider, ' class="swipe"')

    def extra_links(self) -> tuple[tuple[str, str], ...]:
        """The counterfactual in other forms: 16-bit PNG (inputs above 8 bits), DICOM (DICOM inputs)."""
        found = [("16-bit", self.href(COUNTERFACTUAL_16BIT))] if self.has(COUNTERFACTUAL_16BIT) else []
        dicom = self.folder / "dicom"
        if dicom.is_dir():
            found += [(f"DICOM {path.stem}", self.href(f"dicom/{path.name}")) for path in sorted(dicom.glob("*.dcm"))]
        return tuple(found)

    def painted(self, grey: GreyMap | None, png: str, caption: str, ticks: tuple[str, ...], unit: str,
                full: float) -> str:
        """A map the threshold slider repaints, over the input; the PNG alone when there is no map data."""
        bar, detail = colour_bar(heat_gradient(), ticks, unit, grey is not None), bar_unit(unit, full)
        if grey is None:
            return _figure(_image(self.href(png), png), caption, self.links(png), bar,
                           detail=bar_unit(unit)) if self.has(png) else ""
        under = _image(self.href("input.png"), "input") if self.has("input.png") else ""
        canvas = (f'<canvas class="{"top" if under else ""}" width="{grey.width}" height="{grey.height}" '
                  f'data-colours="heat" data-map="{grey.uri}" aria-label="{html.escape(caption)}"></canvas>')
        return _figure(f'<div class="stack">{under}{canvas}</div>', caption, self.links(png), bar, detail=detail)

    def maps_panels(self, minuend: str) -> str:
        """The map, the calibrated map and the signed map, each with its colour bar."""
        scale = self.maps.scale
        panels = [self.painted(self.maps.grey, "attribution.png", f"map |{minuend} − counterfactual|",
                               ("0", *((_number(scale / 2), _number(scale)) if scale else ("", "full"))),
                               "grey levels (0 = black, 1 = white)", scale or 1.0)]
        if self.maps.calibrated is not None or self.has("calibrated.png"):
            panels.append(self.painted(self.maps.calibrated, "calibrated.png", "calibrated map",
                                       ("0", _number(CALIBRATED_SCALE / 2), _number(CALIBRATED_SCALE)),
                                       "healthy standard deviations beyond what healthy scans show", CALIBRATED_SCALE))
        if self.has("signed.png"):
            ticks = (f"−{_number(scale)}", "0", f"+{_number(scale)}") if scale else ("darker", "0", "brighter")
            unit = "grey levels; red: brighter than the counterfactual"
            panels.append(_figure(_image(self.href("signed.png"), "signed map"), f"signed map {minuend} − "
                                  "counterfactual", self.links("signed.png"), colour_bar(signed_gradient(), ticks, unit),
                                  detail=bar_unit(unit)))
        return "".join(panels)

    def plain(self, names: tuple[tuple[str, str], ...]) -> str:
        """Images shown as they are, each with its caption."""
        return "".join(_figure(_image(self.href(name), name), caption, self.links(name))
                       for name, caption in names if self.has(name))

    def numbers(self) -> str:
        """The image's numbers: score, the map's full colour and mean inside the mask, size, bit depth, time."""
        image, maps = self.image, self.maps
        found = []
        if maps.scale is not None:
            found.append(("full colour", f"{_number(maps.scale)} grey levels"))
        if maps.mean_in_mask is not None:
            found.append(("mean |map| in mask" if maps.masked else "mean |map|", _number(maps.mean_in_mask)))
        if image.get("original_size"):
            found.append(("size", "×".join(str(side) for side in image["original_size"][::-1]) + " px"))
        if image.get("bit_depth"):
            found.append(("bit depth", str(image["bit_depth"])))
        if isinstance(image.get("seconds"), (int, float)) and image.get("status") == "done":
            found.append(("time", f"{image['seconds']:.1f} s"))
        return "".join(f"<li>{html.escape(label)} <b>{html.escape(value)}</b></li>" for label, value in found)

    def render(self, index: int, minuend: str) -> str:
        """The card's HTML; ``index`` is its place in input order (the sort button's way back)."""
        value = self.image.get("score")
        scored = isinstance(value, (int, float))
        score = f'<span class="score">score {value:.3g}</span>' if scored else ""
        notes = "".join(f'<div class="note">{html.escape(w)}</div>' for w in self.image.get("warnings", []))
        return (f'<article class="card" data-order="{index}" data-score="{float(value) if scored else ""}">'
                f"<header><h2>{html.escape(self.image['output'])}</h2>{score}</header>"
                f'<ul class="numbers">{self.numbers()}</ul>{notes}'
                f'<div class="panels">{self.swipe()}{self.plain(BESIDE_SWIPE)}{self.maps_panels(minuend)}'
                f"{self.plain(AFTER_MAPS)}</div></article>")



def _settings(header: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's settings a reader compares reports by: prior and strength, steps, guidance, encoder, reference,
    calibration, seed (the full recipe is at the end of the page)."""
    recipe = header.get("recipe", {})
    options = recipe.get("prior_options") or {}
    found = []
    if recipe.get("prior"):
        strength = options.get("strength")
        found.append(("prior", recipe["prior"] + (f" (strength {strength})" if strength is not None else "")))
    if recipe.get("steps") is not None:
        evaluations = header.get("unet_evaluations")
        found.append(("steps", f"{recipe['steps']}" + (f" ({evaluations} UNet evaluations per image)"
                                                       if evaluations is not None else "")))
    for key, label in (("guidance_scale", "guidance"), ("scheduler", "scheduler")):
        if recipe.get(key) is not None:
            found.append((label, str(recipe[key])))
    encoder = (header.get("encoder") or {}).get("name") or recipe.get("encoder")
    if encoder:
        found.append(("encoder", str(encoder)))
    if recipe.get("reference"):
        found.append(("reference", str(recipe["reference"])))
    calibration = header.get("calibration") or {}
    if calibration.get("calibrated"):
        found.append(("calibration", f"against {calibration.get('images')} healthy scans"))
    elif calibration:
        found.append(("calibration", "none"))
    if recipe.get("seed") is not None:
        found.append(("seed", str(recipe["seed"])))
    return found


def _controls(scored: bool, cards: int) -> str:
    """The bar that stays at the top: threshold slider, blink, and the sort button when images have scores."""
    sort = ('<button type="button" onclick="dvaSort(this)">sort by score</button>' if scored else "")
    return ('<div class="controls"><label for="threshold">map threshold</label>'
            '<input type="range" id="threshold" min="0" max="95" step="5" value="0" oninput="dvaThreshold()">'
            '<span id="threshold-value">0% of full colour</span>'
            '<button type="button" onclick="dvaBlink(this)">blink input / counterfactual</button>'
            f'{sort}<span class="unit">{cards} image{"s" if cards != 1 else ""}</span></div>')


def _failures(images: list[dict[str, Any]]) -> str:
    failed = [i for i in images if i["status"] == "failed"]
    items = "".join(f"<li><b>{html.escape(str(i.get('output') or i.get('input')))}</b>: "
                    f"{html.escape(str(i.get('error')))}</li>" for i in failed)
    return f'<section class="failed"><h2>Failed inputs</h2><ul>{items}</ul></section>' if failed else ""


def write_report(out: Path, header: dict[str, Any], images: list[dict[str, Any]]) -> Path:
    """Write ``out/report.html`` for the completed images (first ``MAX_ROWS``) and the failed ones."""
    completed = [image for image in images if image["status"] in ("done", "skipped")]
    shown = completed[:MAX_ROWS]
    minuend = "reconstruction" if header.get("recipe", {}).get("reference") == "reconstruction" else "input"
    cards = "".join(Card(out, image).render(index, minuend) for index, image in enumerate(shown))
    scored = any(isinstance(image.get("score"), (int, float)) for image in shown)
    pairing = header.get("encoder_pairing") or {}
    banner = (f'<p class="banner" role="alert">{html.escape(pairing.get("warning") or "")}</p>'
              if pairing.get("paired") is False else "")
    note = f'<p class="note">{html.escape(header["model_note"])}</p>' if header.get("model_note") else ""
    settings = "".join(f"<li>{html.escape(k)} <b>{html.escape(v)}</b></li>" for k, v in _settings(header))
    reason = (header.get("calibration") or {}).get("reason")
    if reason and reason != "calibration off" and not header["calibration"].get("calibrated"):
        settings += f'<li class="why">(not calibrated: {html.escape(str(reason))})</li>'
    more = len(completed) - len(shown)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>dva report</title><style>{STYLE}</style>
<script>const DVA_COLOUR_MAPS = {{"heat": {json.dumps(colour_table(), separators=(",", ":"))}}};{SCRIPT}
{SORT_SCRIPT if scored else ""}</script></head><body>
<header class="top"><h1>dva: healthy counterfactuals and attribution maps</h1>{banner}{note}
<p>Map = {minuend} &minus; counterfactual on grey levels (red in the signed map: brighter than the counterfactual;
signed values in <code>attribution.safetensors</code>). Prompt: <q>{html.escape(str(header.get("prompt", "")))}</q>.</p>
<ul class="settings">{settings}</ul></header>
{_controls(scored, len(shown))}
<main class="cards" id="images">{cards}</main>
{f"<section><p>{more} more images are in the output folder.</p></section>" if more > 0 else ""}
{_failures(images)}
<section><h2>Settings</h2><details><summary>the run's full recipe</summary>
<pre>{html.escape(json.dumps(header.get("recipe", {}), indent=2, default=str))}</pre></details></section>
</body></html>
"""
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
