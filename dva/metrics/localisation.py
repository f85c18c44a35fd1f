"""How well an attribution map points at the lesion: pixel AUROC/AUPRC, Dice/IoU, NCC, pointing game, mass, energy.

The score of a pixel is ``|attribution|``, the magnitude of the change the counterfactual made there.
dva's maps are signed (``input - counterfactual``: positive where an opacity was removed, negative where
the model brightened the scan); a lesion can show up with either sign, so localisation uses the
magnitude, and a signed map and its negation score the same.

Every measure is computed inside a region (the lungs) when one is given, and over the whole image
otherwise; lesion pixels outside the region are ignored. Masks may be bool or numeric: numeric masks are
in above half their maximum (0/1, 0/255, and V7 Labs lung masks 0/127/255 where 127 means "ignore").

Degenerate cases stay defined where a definition makes sense, so a model that changes nothing is not
silently dropped from a mean:

* an empty lesion (a healthy scan): every lesion measure is nan, only ``energy`` is defined (the null
  test: compare it with the energy on abnormal scans);
* a lesion that fills the whole region: AUROC and NCC are nan (there are no negatives);
* a constant map: AUROC 0.5, AUPRC, pointing game and relevance mass equal the lesion's share of the
  region (what a random ranking would get), NCC 0, Otsu Dice/IoU 0 (nothing lies above the threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from dva.core.errors import InputError


@dataclass(frozen=True)
class LocalisationScores:
    """Localisation of one attribution map against one lesion mask (inside the region, if given)."""

    auroc: float  # pixel ROC AUC of |map| against the lesion (sklearn roc_auc_score)
    auprc: float  # average precision (sklearn average_precision_score)
    dice_otsu: float  # Dice of the map thresholded at Otsu's level with the lesion
    best_dice: float  # the highest Dice over every threshold of the map
    iou_otsu: float  # intersection over union at Otsu's level
    ncc: float  # normalised cross-correlation (Pearson) of |map| with the lesion mask
    pointing_game: float  # share of the map's maximal pixels that lie inside the lesion (1 or 0 without ties)
    relevance_mass: float  # sum of |map| inside the lesion / sum of |map| in the region
    energy: float  # mean |map| in the region


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """A bool (H, W) mask: bool masks as given, numeric masks above half their own maximum.

    Half the maximum is ``dva.core.io.read_mask``'s rule for 8- and 16-bit mask files (V7 Labs lung
    masks: 255 lung in, 127 "ignore" out, 0 out) and also takes 0/1 label arrays, which half the
    8-bit full scale would leave empty. A mask with nothing above zero is empty.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InputError(f"A mask must be a 2-D (height, width) array but has shape {array.shape}; pass one channel.")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"A mask must be bool or numeric, not {array.dtype}; convert it first.")
    top = float(array.max()) if array.size else 0.0
    if not math.isfinite(top):
        raise InputError("A mask holds NaN or infinite values; pass a bool or 0/255 mask.")
    return array > top / 2 if top > 0 else np.zeros(array.shape, dtype=bool)


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}" if array.ndim == 2 else f"of shape {array.shape}"


def _scores_inside(attribution: np.ndarray, region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``|attribution|`` as float64 and the region as bool, both checked; the region's pixels only are used later."""
    values = np.asarray(attribution)
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"An attribution map must be a 2-D numeric array but has shape {values.shape} "
                         f"and type {values.dtype}; pass the (height, width) map.")
    scores = np.abs(values.astype(np.float64))
    if not np.isfinite(scores).all():
        raise InputError("The attribution map holds NaN or infinite values; recompute it from finite images.")
    if region is None:
        return scores, None
    inside = binary_mask(region)
    if inside.shape != scores.shape:
        raise InputError(f"The region mask is {_size(inside)} px but the attribution map is {_size(scores)} px; "
                         "resize the mask to the map (nearest neighbour) first.")
    if not inside.any():
        raise InputError("The region mask is empty; pass a mask with the region (lungs) in it, or none.")
    return scores, inside


def energy(attribution: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean ``|attribution|`` inside the region (everywhere without one): how much the counterfactual changed."""
    scores, inside = _scores_inside(attribution, region)
    return float(scores[inside].mean() if inside is not None else scores.mean())


def null_energy(attribution: np.ndarray, region: np.ndarray | None = None) -> float:
    """The null test: :func:`energy` of the map of a scan that is already healthy.

    A faithful model leaves a healthy scan (nearly) as it is, so this should be small next to the energy
    of maps of abnormal scans made with the same model and settings; callers compare the two.
    """
    return energy(attribution, region)


def localisation(attribution: np.ndarray, lesion: np.ndarray, region: np.ndarray | None = None) -> LocalisationScores:
    """All localisation measures of one map against one lesion mask, inside ``region`` when given."""
    scores, inside = _scores_inside(attribution, region)
    truth = binary_mask(lesion)
    if truth.shape != scores.shape:
        raise InputError(f"The lesion mask is {_size(truth)} px but the attribution map is {_size(scores)} px; "
                         "resize the mask to the map (nearest neighbour) first.")
    if inside is not None:
        scores, truth = scores[inside], truth[inside]
    scores, truth = scores.ravel(), truth.ravel()
    mean = float(scores.mean())
    if not truth.any():
        nan = math.nan
        return LocalisationScores(nan, nan, nan, nan, nan, nan, nan, nan, energy=mean)
    otsu = _otsu_foreground(scores)
    return LocalisationScores(
        auroc=_auroc(truth, scores),
        auprc=_auprc(truth, scores),
        dice_otsu=_dice(otsu, truth),
        best_dice=_best_dice(scores, truth),
        iou_otsu=_iou(otsu, truth),
        ncc=_ncc(scores, truth),
        pointing_game=_pointing_game(scores, truth),
        relevance_mass=_relevance_mass(scores, truth),
        energy=mean,
    )


def _auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if not truth.all() else math.nan


def _auprc(truth: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, scores))


def _otsu_foreground(scores: np.ndarray) -> np.ndarray:
    """Pixels above Otsu's threshold of the scores; none for a constant map.

    OpenCV's Otsu works on 8-bit images only (and scikit-image is not a dependency), so the scores are
    spread over 256 levels between their minimum and maximum first: the same 256-bin histogram that
    scikit-image's ``threshold_otsu`` uses by default.
    """
    import cv2

    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        return np.zeros(scores.shape, dtype=bool)
    levels = np.rint((scores - low) / (high - low) * 255.0).astype(np.uint8)
    threshold, _ = cv2.threshold(levels.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return levels > threshold


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    overlap = np.count_nonzero(predicted & truth)
    return float(2.0 * overlap / (np.count_nonzero(predicted) + np.count_nonzero(truth)))


def _iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.count_nonzero(predicted & truth) / np.count_nonzero(predicted | truth))


def _best_dice(scores: np.ndarray, truth: np.ndarray) -> float:
    """The highest Dice of ``scores >= t`` with ``truth`` over every threshold ``t``, exactly, in O(n log n).

    Sorting the scores in decreasing order, the first k pixels are the prediction at the k-th score;
    with cumulative sums of the truth, Dice = 2 TP(k) / (k + positives). Only cuts between different
    scores are thresholds (tied pixels are in or out together). ``truth`` must have a positive.
    """
    order = np.argsort(-scores.ravel(), kind="stable")
    ranked, hits = scores.ravel()[order], truth.ravel()[order]
    true_positives = np.cumsum(hits)
    cuts = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # last pixel of each run of ties
    predicted = cuts + 1
    dice = 2.0 * true_positives[cuts] / (predicted + true_positives[-1])
    return float(dice.max())


def _ncc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation of the scores with the 0/1 mask; 0 for a constant map, nan without negatives."""
    if truth.all():
        return math.nan
    centred = scores - scores.mean()
    spread = float(np.sqrt(np.mean(centred**2)))
    if spread == 0.0:
        return 0.0
    target = truth - truth.mean()
    return float(np.mean(centred * target) / (spread * np.sqrt(np.mean(target**2))))


def _pointing_game(scores: np.ndarray, truth: np.ndarray) -> float:
    """Share of the pixels holding the maximum that lie in the lesion.

    Without ties this is the classic hit (1) or miss (0). With ties it is the chance that breaking them
    at random hits the lesion; "any maximal pixel inside" would score a constant (do-nothing) map as a hit.
    """
    peaks = scores == scores.max()
    return float(np.count_nonzero(peaks & truth) / np.count_nonzero(peaks))


def _relevance_mass(scores: np.ndarray, truth: np.ndarray) -> float:
    """Share of the total ``|map|`` that falls in the lesion; an all-zero map counts as uniform (the lesion's share)."""
    inside, outside = float(scores[truth].sum()), float(scores[~truth].sum())  # two sums: the share stays <= 1
    if inside + outside == 0.0:
        return float(truth.mean())
    return inside / (inside + outside)


def summarise(scores: Sequence[LocalisationScores]) -> dict[str, float]:
    """Mean of each measure over maps, ignoring nan (a measure undefined for a map), plus ``count`` (maps given).

    A measure that is nan for every map stays nan.
    """
    summary: dict[str, float] = {}
    for field in fields(LocalisationScores):
        values = np.array([getattr(score, field.name) for score in scores], dtype=np.float64)
        defined = values[~np.isnan(values)]
        summary[field.name] = float(defined.mean()) if defined.size else math.nan
    summary["count"] = len(scores)
    return summary

