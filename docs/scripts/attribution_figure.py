"""docs/images/tiny-model-maps.png: the bundled tiny model on bundled phantoms it never saw.

One row per phantom: the input with its true lesion outlined, the healthy counterfactual, the attribution
map (inferno heatmap) and the map over the input, from `dva run --entry tiny-phantom` (the bundled model).
Run: .venv/bin/python docs/scripts/attribution_figure.py
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "dva" / "samples" / "phantoms"
TILE, CAPTION = 160, 22
COLUMNS = ("input (true lesion in red)", "healthy counterfactual", "attribution map", "map over input")
font = ImageFont.load_default(size=12)


def tile(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((TILE, TILE), Image.LANCZOS))


def outlined(image: np.ndarray, lesion_path: Path) -> np.ndarray:
    lesion = np.asarray(Image.open(lesion_path).convert("L").resize((TILE, TILE), Image.NEAREST)) > 127
    contours, _ = cv2.findContours(lesion.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    image = image.copy()
    cv2.drawContours(image, contours, -1, (255, 40, 40), 1, cv2.LINE_AA)
    return image


def main() -> None:
    names = sorted(p.stem for p in (SAMPLES / "images").glob("*.png"))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "dva", "run", "--entry", "tiny-phantom", str(SAMPLES / "images"),
                        "--mask", str(SAMPLES / "masks"), "--fullsize", "all",
                        "--out", out], check=True)
        rows = []
        for name in names:
            folder = Path(out) / name / "fullsize"
            source = tile(SAMPLES / "images" / f"{name}.png")
            rows.append(np.concatenate([outlined(source, SAMPLES / "lesions" / f"{name}.png"),
                                        tile(folder / "counterfactual.png"), tile(folder / "attribution.png"),
                                        tile(folder / "overlay.png")], axis=1))
    height = CAPTION + len(rows) * (TILE + CAPTION)
    figure = Image.new("RGB", (4 * TILE, height), "white")
    draw = ImageDraw.Draw(figure)
    for index, title in enumerate(COLUMNS):
        draw.text((index * TILE + 4, 4), title, fill="black", font=font)
    for index, (name, row) in enumerate(zip(names, rows)):
        y = CAPTION + index * (TILE + CAPTION)
        draw.text((4, y + 4), name, fill="black", font=font)
        figure.paste(Image.fromarray(row), (0, y + CAPTION))
    target = ROOT / "docs" / "images" / "tiny-model-maps.png"
    figure.save(target, optimize=True)
    print(target)


if __name__ == "__main__":
    main()
