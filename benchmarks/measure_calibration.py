"""Raw vs calibrated maps of a calibrated dva run on a phantom set: pixel AUPRC and best Dice (Lung Opacity), the null
test (mean map energy in the lungs, Normal / Lung Opacity) and image-level AUROC (Normal vs Lung Opacity).

    python measure_calibration.py PHANTOMS RUN CALIBRATION_FOLDER
"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score
from dva.core import calibration as cal
from dva.metrics.localisation import localisation, energy

phantoms, run, calib = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
c = load_file(str(calib / "calibration.safetensors"))
mean, std = c["abs_mean"], c["abs_std"]
def z_of(m, floor):
    moving = std[std > 0]; f = floor * np.median(moving)
    return np.maximum(0, (np.abs(m) - mean) / np.maximum(std, f))
def top(values, frac=0.01):
    k = max(1, int(round(frac * values.size))); return float(np.sort(values)[-k:].mean())
variants = {"raw |map|": lambda m: np.abs(m), "calibrated (floor 0.5)": lambda m: z_of(m, 0.5),
            "calibrated (floor 1.0)": lambda m: z_of(m, 1.0), "calibrated (floor 0.25)": lambda m: z_of(m, 0.25)}
rows = {}
for name, f in variants.items():
    per = {"Normal": [], "Lung Opacity": []}
    for label in per:
        for image in sorted((phantoms / label / "images").glob("*.png")):
            t = load_file(str(run / image.stem / "attribution.safetensors"))
            lungs = t["mask"].astype(bool); m = f(t["attribution"]) * lungs
            lesion = np.asarray(Image.open(phantoms / label / "lesions" / image.name)) > 127
            loc = localisation(m, lesion, lungs) if lesion.any() else None
            rec = json.loads((run / image.stem / "record.json").read_text())
            per[label].append(dict(loc=loc, energy=energy(m, lungs), top1=top(m[lungs]), mean=float(m[lungs].mean()),
                                   p995=float(np.percentile(m[lungs], 99.5)), record=rec.get("score")))
    lo = per["Lung Opacity"]
    y = [0] * len(per["Normal"]) + [1] * len(lo)
    auc = lambda key: roc_auc_score(y, [r[key] for r in per["Normal"] + lo])
    rows[name] = dict(auprc=np.nanmean([r["loc"].auprc for r in lo]), best_dice=np.nanmean([r["loc"].best_dice for r in lo]),
                      null=np.mean([r["energy"] for r in per["Normal"]]) / np.mean([r["energy"] for r in lo]),
                      auroc_top1=auc("top1"), auroc_energy=auc("mean"), auroc_p995=auc("p995"))
    if name == "raw |map|":
        rows["record score"] = dict(auroc_record=auc("record"))
for name, r in rows.items():
    print(f"| {name} | " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()) + " |")
