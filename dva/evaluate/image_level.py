"""Image-level scores: can one number per image tell a sick scan from a healthy one?

A map is only useful if it is loud on sick scans and quiet on healthy ones. The image-level table ranks every
image of the healthy class and of one abnormal class by a score and reports the AUROC and AUPRC
(scikit-learn; the abnormal class is the positive one) of that ranking, per abnormal class. The score is:

* ``record``: the score ``dva run`` wrote into the image's record.json (and manifest.json) when its model is
  calibrated (the run's ``score_method`` names how it was made). It is preferred when every image has one.
* computed from the map itself, inside the lung mask (the whole image without one):
  ``energy``, the mean ``|map|`` (the null test's quantity); ``p99.5``, the 99.5th percentile of ``|map|``
  (a small loud lesion lifts it where it barely moves the mean).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dva.evaluate.tables import Table

RECORD = "record"
MAP_METHODS = {  # method -> its per-image column and what it is
    "energy": ("score_energy", "mean |map| inside the lung mask"),
    "p99.5": ("score_p99.5", "99.5th percentile of |map| inside the lung mask"),
}
RECORD_COLUMN = "score"
PREFERRED_MAP_METHOD = "p99.5"  # the map-derived score summaries use when no record score exists


def map_scores(attribution: np.ndarray, region: np.ndarray | None) -> dict[str, float]:
    """Every map-derived score of one map, keyed by its per-image column."""
    magnitude = np.abs(np.asarray(attribution, dtype=np.float64))
    inside = magnitude[np.asarray(region, dtype=bool)] if region is not None else magnitude.ravel()
    if inside.size == 0:
        inside = magnitude.ravel()
    return {MAP_METHODS["energy"][0]: float(inside.mean()),
            MAP_METHODS["p99.5"][0]: float(np.percentile(inside, 99.5))}


def image_auc(healthy: list[float], abnormal: list[float]) -> tuple[float, float]:
    """AUROC and AUPRC of the scores, the abnormal images being the positives; nan where a side is empty."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not healthy or not abnormal:
        return math.nan, math.nan
    truth = np.r_[np.zeros(len(healthy)), np.ones(len(abnormal))]
    scores = np.asarray([*healthy, *abnormal], dtype=np.float64)
    return float(roc_auc_score(truth, scores)), float(average_precision_score(truth, scores))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def methods(rows: list[dict[str, Any]], score_method: str | None) -> list[tuple[str, str, str]]:
    """The scores to tabulate, preferred first, as (method, per-image column, label in the table)."""
    found = []
    if rows and all(_number(row.get(RECORD_COLUMN)) is not None for row in rows):
        found.append((RECORD, RECORD_COLUMN, f"record ({score_method})" if score_method else RECORD))
    preferred = sorted(MAP_METHODS, key=lambda name: name != PREFERRED_MAP_METHOD)
    found += [(name, MAP_METHODS[name][0], name) for name in preferred
              if rows and all(_number(row.get(MAP_METHODS[name][0])) is not None for row in rows)]
    return found


def image_level_table(rows_by_class: dict[str, list[dict[str, Any]]], healthy: str,
                      score_method: str | None) -> tuple[Table, dict[str, Any]]:
    """Per score and abnormal class: AUROC and AUPRC of healthy against that class; and a summary for JSON
    (the preferred method and each method's mean AUROC/AUPRC over the abnormal classes)."""
    table = Table("image-level", f"Image-level scores: {healthy} against each abnormal class",
                  ["score", "class", "images", "AUROC", "AUPRC"])
    everyone = [row for rows in rows_by_class.values() for row in rows]
    chosen = methods(everyone, score_method)
    abnormal = [label for label in rows_by_class if label != healthy]
    summary: dict[str, Any] = {"preferred": chosen[0][0] if chosen else None, "score_method": score_method,
                               "methods": {}}
    for method, column, label in chosen:
        aurocs, auprcs = [], []
        for disease in abnormal:
            negatives = [float(row[column]) for row in rows_by_class.get(healthy, [])]
            positives = [float(row[column]) for row in rows_by_class[disease]]
            auroc, auprc = image_auc(negatives, positives)
            table.rows.append([label, disease, len(negatives) + len(positives), auroc, auprc])
            aurocs.append(auroc)
            auprcs.append(auprc)
        summary["methods"][method] = {"column": column, "auroc": _nanmean(aurocs), "auprc": _nanmean(auprcs)}
    if healthy not in rows_by_class:
        table.notes.append(f"No {healthy} inputs in the run: run dva on healthy images too for image-level scores.")
    if any(_number(row.get(RECORD_COLUMN)) is not None for row in everyone) and (not chosen or chosen[0][0] != RECORD):
        missing = sum(_number(row.get(RECORD_COLUMN)) is None for row in everyone)
        table.notes.append(f"{missing} of {len(everyone)} images have no record score, so it is left out.")
    if chosen:
        explained = {RECORD: f"the score dva run wrote with the calibrated model ({score_method or 'method not named'})",
                     **{name: text for name, (_, text) in MAP_METHODS.items()}}
        table.notes.append("Scores: " + "; ".join(f"{label}: {explained[method]}" for method, _, label in chosen)
                           + ". The first is preferred. Positives: the abnormal class; 1 separates perfectly, "
                           "0.5 is chance.")
    return table, summary


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
