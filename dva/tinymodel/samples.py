"""The phantoms bundled in ``dva/samples/phantoms`` for ``make demo``: a seed the tiny model never saw.

The first phantoms of each class at :data:`SAMPLE_SEED`; for Lung Opacity the first whose lesion covers at
least :data:`MIN_LESION_FRACTION` of the image, so that the opacity is visible at the model's 64 px.

Flat layout, so ``dva run --mask`` matches lung masks to images by file name: ``images/``, ``masks/`` (lungs),
``lesions/`` (ground truth) and ``metadata.csv`` (class, file, prompt, zone).
"""

from __future__ import annotations

import csv
import io as _io
import shutil
import tempfile
from pathlib import Path

SAMPLE_SEED = 2026  # not the training seed (0) nor the held-out seed (7) of dva.tinymodel.build
SAMPLES_PER_CLASS = {"Lung Opacity": 3, "Cardiomegaly": 2, "Normal": 1}
SAMPLE_SIZE = 128
MIN_LESION_FRACTION = 0.02  # Lung Opacity samples: lesions of at least 2% of the image (a few pixels at 64 px are not)
CANDIDATES = 40


def make_samples(out: str | Path) -> Path:
    """Write the bundled demo phantoms into ``out`` (replacing it)."""
    from dva.datasets.phantoms import make_phantoms

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, count in SAMPLES_PER_CLASS.items():
            root = make_phantoms(Path(tmp) / label, n=CANDIDATES, size=SAMPLE_SIZE, seed=SAMPLE_SEED, classes=[label])
            with open(Path(root) / "metadata.csv", newline="") as handle:
                chosen = [row for row in csv.DictReader(handle)
                          if label != "Lung Opacity" or float(row["lesion_fraction"]) >= MIN_LESION_FRACTION][:count]
                for row in chosen:
                    name = Path(row["file"]).name
                    for part in ("images", "masks", "lesions"):
                        (out / part).mkdir(parents=True, exist_ok=True)
                        shutil.copy(Path(root) / label / part / name, out / part / name)
                    rows.append({"class": row["class"], "file": f"images/{name}", "prompt": row["prompt"], "zone": row["zone"],
                                 "lesion_fraction": row["lesion_fraction"]})
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["class", "file", "prompt", "zone", "lesion_fraction"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "metadata.csv").write_text(buffer.getvalue())
    return out


if __name__ == "__main__":
    print(make_samples(Path(__file__).resolve().parents[1] / "samples" / "phantoms"))
