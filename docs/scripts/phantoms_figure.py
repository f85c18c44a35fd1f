"""docs/images/phantoms.png: real chest X-rays above phantoms of each class with their lesion outlines.

    python docs/scripts/phantoms_figure.py SAMPLE_DATA docs/images/phantoms.png

SAMPLE_DATA holds ``cxr-nih-sample/images/`` and ``cxr-covid-sample/`` with the files docs/phantoms.md names.
"""
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dva.datasets.phantoms import cardiothoracic_ratio, make_phantom

TILE, GAP, CAPTION = 208, 6, 26
if len(sys.argv) != 3:
    sys.exit("usage: python docs/scripts/phantoms_figure.py SAMPLE_DATA OUT.png (see docs/phantoms.md)")
DATA = Path(sys.argv[1])  # the sample X-rays the figure shows (docs/phantoms.md)
font = ImageFont.load_default(size=12)
bold = ImageFont.load_default(size=15)


def gray(path, size=TILE):
    image = Image.open(path).convert("L")
    return np.asarray(image.resize((size, size), Image.LANCZOS))


def outline(image, mask, colour=(255, 40, 40)):
    tile = np.repeat(image[..., None], 3, axis=2).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tile, contours, -1, colour, 1, cv2.LINE_AA)
    return tile


def masks_tile(lung, lesion):
    tile = np.full((*lung.shape, 3), 20, np.uint8)
    tile[lung] = (110, 110, 110)
    tile[lesion] = (255, 40, 40)
    return tile


real_lung = np.asarray(Image.open(DATA / "cxr-covid-sample/masks_v7labs/48c4542c.jpg").convert("L").resize((TILE, TILE), Image.NEAREST))
rows = [
    ("Real chest X-rays (downsized)", [
        (gray(DATA / "cxr-nih-sample/images/00027426_000.png"), "NIH ChestX-ray14: no finding"),
        (gray(DATA / "cxr-nih-sample/images/00000001_000.png"), "NIH ChestX-ray14: cardiomegaly"),
        (gray(DATA / "cxr-covid-sample/images/48c4542c.jpg"), "Hannover: COVID-19 opacities"),
        (masks_tile(real_lung == 255, np.zeros_like(real_lung, bool)), "its lung mask (V7 Labs)"),
    ]),
]
for label in ("Normal", "Lung Opacity", "Cardiomegaly"):
    tiles = []
    for index in (1, 2, 3):
        p = make_phantom(label, index, TILE, 0)
        caption = f"{label}-{index}: " + (f"{p.zone} zone" if p.zone else f"CTR {cardiothoracic_ratio(p.lung_mask):.2f}")
        tiles.append((outline(p.image, p.lesion_mask), caption))
        if index == 1:
            first = p
    tiles.append((masks_tile(first.lung_mask, first.lesion_mask), "its masks: lung, lesion (red)"))
    rows.append((f"Phantoms: {label}" + (" (red: lesion outline)" if label != "Normal" else ""), tiles))

width = 4 * TILE + 5 * GAP
height = len(rows) * (22 + TILE + CAPTION) + GAP
sheet = Image.new("RGB", (width, height), (255, 255, 255))
draw = ImageDraw.Draw(sheet)
y = GAP
for title, tiles in rows:
    draw.text((GAP, y + 2), title, fill=(0, 0, 0), font=bold)
    y += 22
    for column, (tile, caption) in enumerate(tiles):
        x = GAP + column * (TILE + GAP)
        tile = tile if tile.ndim == 3 else np.repeat(tile[..., None], 3, axis=2)
        sheet.paste(Image.fromarray(tile), (x, y))
        draw.text((x, y + TILE + 3), caption, fill=(40, 40, 40), font=font)
    y += TILE + CAPTION
out = Path(sys.argv[2])
levels = 64  # gray levels, then the exact colours used for outlines and text
palette = [v for g in np.linspace(0, 255, levels).round().astype(int) for v in (g, g, g)]
palette += [255, 40, 40, 110, 110, 110, 20, 20, 20, 40, 40, 40]
palette_image = Image.new("P", (1, 1))
palette_image.putpalette(palette + [0] * (768 - len(palette)))
sheet.quantize(palette=palette_image, dither=Image.Dither.NONE).save(out, optimize=True)
print(out, out.stat().st_size)
