"""Raw against calibrated maps of one dva run on a phantom set (docs/benchmarks.md, "Calibrated maps").

For each map variant: pixel AUPRC and best Dice on the Lung Opacity phantoms inside the lungs, the null test
(mean map energy in the lungs, Normal over Lung Opacity) and the image-level AUROC, Normal against Lung
Opacity, from the mean of the top 1% of the map in the lungs and from its mean (energy). The calibrated
variants use the calibration's statistics with the std floored at 0.5 and at 1 times the median std
(dva's choice; :mod:`dva.core.calibration`).

    python benchmarks/measure_calibration.py PHANTOMS RUN CALIBRATION_FOLDER
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score

from dva.core import calibration
from dva.metrics.localisation import energy, localisation

CLASSES = ("Normal", "Lung Opacity")


def calibrated(statistics: dict[str, np.ndarray], floor: float) -> Callable[[np.ndarray], np.ndarray]:
    """The calibrated map of a signed map with the std floored at ``floor`` times the median std."""
    mean, std = statistics["abs_mean"], statistics["abs_std"]
    moving = std[std > 0]
    floored = np.maximum(std, floor * float(np.median(moving)) if moving.size else 1.0)
    return lambda signed: np.maximum(0.0, (np.abs(signed) - mean) / floored)


def image_measures(variant: Callable[[np.ndarray], np.ndarray], run: Path, phantoms: Path, label: str,
                   image: Path) -> dict:
    """One phantom's map under ``variant``: its localisation (when it has a lesion), energy and image scores."""
    tensors = load_file(str(run / image.stem / "attribution.safetensors"))
    lungs = tensors["mask"].astype(bool)
    values = variant(tensors["attribution"]) * lungs
    lesion = np.asarray(Image.open(phantoms / label / "lesions" / image.name)) > 127
    record = json.loads((run / image.stem / "record.json").read_text())
    return {
        "localisation": localisation(values, lesion, lungs) if lesion.any() else None,
        "energy": energy(values, lungs),
        "top1": calibration.score(values, lungs),
        "mean": float(values[lungs].mean()),
        "record": record.get("score"),
    }


def variant_row(variant: Callable[[np.ndarray], np.ndarray], run: Path, phantoms: Path) -> dict[str, float]:
    """The benchmark's measures of one map variant over the phantom set."""
    per_class = {label: [image_measures(variant, run, phantoms, label, image)
                         for image in sorted((phantoms / label / "images").glob("*.png"))] for label in CLASSES}
    healthy, sick = per_class["Normal"], per_class["Lung Opacity"]
    truth = [0] * len(healthy) + [1] * len(sick)

    def auroc(key: str) -> float:
        return float(roc_auc_score(truth, [row[key] for row in healthy + sick]))

    row = {
        "auprc": float(np.nanmean([r["localisation"].auprc for r in sick])),
        "best_dice": float(np.nanmean([r["localisation"].best_dice for r in sick])),
        "null_ratio": float(np.mean([r["energy"] for r in healthy]) / np.mean([r["energy"] for r in sick])),
        "auroc_top1": auroc("top1"),
        "auroc_energy": auroc("mean"),
    }
    if all(r["record"] is not None for r in healthy + sick):
        row["auroc_record_score"] = auroc("record")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phantoms", type=Path, help="the phantom set (dva phantoms --out)")
    parser.add_argument("run", type=Path, help="the dva run folder of its images")
    parser.add_argument("calibration", type=Path, help="the model's calibration folder")
    args = parser.parse_args(argv)
    statistics = load_file(str(args.calibration / calibration.TENSORS))
    variants = {
        "raw |map|": np.abs,
        "calibrated, std floor 0.5 x median": calibrated(statistics, 0.5),
        "calibrated, std floor 1 x median": calibrated(statistics, 1.0),
    }
    for name, variant in variants.items():
        row = variant_row(variant, args.run, args.phantoms)
        print(f"| {name} | " + " | ".join(f"{key} {value:.3f}" for key, value in row.items()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
