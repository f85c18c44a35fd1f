"""Specification of dva.metrics.localisation: how well |attribution| points at a ground-truth lesion.

Hand-computed values on a 4x4 map, the extremes (perfect, inverted, constant, empty), sklearn on
random maps, a brute-force best Dice, the region restriction, mask conventions and errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dva.core.errors import InputError
from dva.metrics.localisation import LocalisationScores, energy, localisation, null_energy, summarise

# A 4x4 map whose lesion is the top-left 2x2 block; 0.2 is a lesion pixel the map nearly misses and
# 0.6 a false alarm. Values: 0.9 0.8 0.7 0.6 0.2 once, 0.1 four times, 0.0 seven times (sum 3.6).
MAP = np.array([
    [0.9, 0.8, 0.1, 0.0],
    [0.7, 0.2, 0.0, 0.1],
    [0.0, 0.1, 0.6, 0.0],
    [0.1, 0.0, 0.0, 0.0],
])
LESION = np.zeros((4, 4), dtype=bool)
LESION[:2, :2] = True


def blob_masks(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A round lesion inside a rectangular "lung" region."""
    y, x = np.mgrid[0:size, 0:size]
    lesion = (y - size * 0.4) ** 2 + (x - size * 0.5) ** 2 < (size * 0.15) ** 2
    region = np.zeros((size, size), dtype=bool)
    region[size // 8 : -size // 8, size // 8 : -size // 8] = True
    return lesion, region


def test_every_measure_on_a_hand_computed_4x4_map():
    scores = localisation(MAP, LESION)
    # ranking: each lesion pixel beats all 12 healthy ones except 0.2, which loses to 0.6: 47 of 48 pairs
    assert scores.auroc == pytest.approx(47 / 48)
    # precision at each lesion pixel down the ranking 0.9+ 0.8+ 0.7+ 0.6- 0.2+: 1, 1, 1, 4/5
    assert scores.auprc == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    # Otsu splits {0, 0.1, 0.2} from {0.6 .. 0.9}: 3 hits, 1 false alarm, 1 miss
    assert scores.dice_otsu == pytest.approx(2 * 3 / (4 + 4))
    assert scores.iou_otsu == pytest.approx(3 / 5)
    # best cut keeps the top five (down to 0.2): 4 hits of 5 predicted
    assert scores.best_dice == pytest.approx(2 * 4 / (5 + 4))
    # Pearson: cov = 2.6/16 - 0.225 * 0.25, var(mask) = 0.25 * 0.75, var(map) = 2.38/16 - 0.225**2
    assert scores.ncc == pytest.approx(0.10625 / math.sqrt(0.1875 * 0.098125))
    assert scores.pointing_game == 1.0  # the maximum 0.9 is in the lesion
    assert scores.relevance_mass == pytest.approx(2.6 / 3.6)
    assert scores.energy == pytest.approx(3.6 / 16)


def test_the_score_is_the_magnitude_so_a_signed_map_and_its_negation_agree():
    signs = np.where(np.arange(16).reshape(4, 4) % 3 == 0, -1.0, 1.0)
    assert localisation(MAP * signs, LESION) == localisation(MAP, LESION)
    assert localisation(-MAP, LESION) == localisation(MAP, LESION)


def test_a_perfect_map_scores_one_everywhere():
    lesion, region = blob_masks()
    scores = localisation(lesion * 0.7, lesion, region)
    assert scores.auroc == 1.0 and scores.auprc == 1.0
    assert scores.best_dice == 1.0 and scores.dice_otsu == 1.0 and scores.iou_otsu == 1.0
    assert scores.ncc == pytest.approx(1.0) and scores.pointing_game == 1.0 and scores.relevance_mass == 1.0


def test_an_inverted_map_scores_zero():
    lesion, region = blob_masks()
    scores = localisation(~lesion * 1.0, lesion, region)
    assert scores.auroc == 0.0 and scores.pointing_game == 0.0 and scores.relevance_mass == 0.0
    assert scores.ncc == pytest.approx(-1.0) and scores.dice_otsu == 0.0


def test_a_constant_map_scores_like_a_random_ranking():
    lesion, region = blob_masks()
    prevalence = lesion[region].mean()
    for value in (0.3, 0.0):  # an all-zero map (the model changed nothing) counts as a uniform one
        scores = localisation(np.full(lesion.shape, value), lesion, region)
        assert scores.auroc == 0.5
        assert scores.auprc == pytest.approx(prevalence)
        assert scores.pointing_game == pytest.approx(prevalence)  # every pixel is a maximum
        assert scores.relevance_mass == pytest.approx(prevalence)
        assert scores.ncc == 0.0
        assert scores.dice_otsu == 0.0 and scores.iou_otsu == 0.0  # nothing lies above the threshold
        assert scores.energy == value


def test_pointing_game_ties_count_the_share_of_maximal_pixels_in_the_lesion():
    attribution = MAP.copy()
    attribution[3, 3] = 0.9  # a second maximum, outside the lesion
    assert localisation(attribution, LESION).pointing_game == 0.5


def test_random_maps_agree_with_sklearn_inside_the_region():
    rng = np.random.default_rng(0)
    lesion, region = blob_masks(48)
    for _ in range(5):
        attribution = rng.standard_normal(lesion.shape) + 1.5 * lesion * rng.random()
        scores = localisation(attribution, lesion, region)
        magnitude, truth = np.abs(attribution)[region], lesion[region]
        assert scores.auroc == pytest.approx(roc_auc_score(truth, magnitude))
        assert scores.auprc == pytest.approx(average_precision_score(truth, magnitude))
        assert scores.ncc == pytest.approx(np.corrcoef(magnitude, truth)[0, 1])
        assert scores.energy == pytest.approx(magnitude.mean())


def test_best_dice_equals_a_brute_force_search_over_every_threshold():
    rng = np.random.default_rng(1)
    for trial in range(20):
        size = rng.integers(5, 30)
        truth = rng.random((size, size)) < rng.uniform(0.05, 0.5)
        truth[0, 0] = True
        scores = np.round(rng.random((size, size)) + truth * rng.uniform(0, 1), 1)  # rounding makes ties
        brute = max(
            2 * np.count_nonzero((scores >= t) & truth) / (np.count_nonzero(scores >= t) + np.count_nonzero(truth))
            for t in np.unique(scores)
        )
        assert localisation(scores, truth).best_dice == pytest.approx(brute), trial


def test_only_pixels_inside_the_region_count():
    lesion, region = blob_masks()
    rng = np.random.default_rng(2)
    attribution = rng.random(lesion.shape) + lesion
    scores = localisation(attribution, lesion, region)
    outside = attribution.copy()
    outside[~region] = 100.0  # a bright border (text, a marker) outside the lungs
    outside_lesion = lesion | ~region  # and lesion pixels outside the region are ignored too
    assert localisation(outside, outside_lesion, region) == scores
    rows, cols = np.nonzero(region)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert localisation(attribution[box], lesion[box]) == scores
    assert localisation(outside, lesion).pointing_game == 0.0  # without the region the border wins


def test_masks_may_be_bool_0_1_0_255_or_v7_labels():
    lesion, region = blob_masks()
    attribution = np.random.default_rng(3).random(lesion.shape) + lesion
    expected = localisation(attribution, lesion, region)
    v7 = np.where(region, 255, 0).astype(np.uint8)
    v7[:4] = 127  # V7 Labs "ignore": not in the region
    assert localisation(attribution, lesion.astype(np.uint8) * 255, v7) == expected
    assert localisation(attribution, lesion.astype(np.uint8), region.astype(np.float32)) == expected


def test_a_healthy_scan_leaves_only_energy_defined():
    _, region = blob_masks()
    attribution = np.random.default_rng(4).random(region.shape) * 0.01
    scores = localisation(attribution, np.zeros(region.shape, dtype=bool), region)
    assert scores.energy == pytest.approx(np.abs(attribution[region]).mean())
    lesion_measures = [name for name in LocalisationScores.__dataclass_fields__ if name != "energy"]
    assert all(math.isnan(getattr(scores, name)) for name in lesion_measures)


def test_a_lesion_filling_the_region_leaves_auroc_and_ncc_undefined():
    lesion, _ = blob_masks()
    scores = localisation(np.random.default_rng(5).random(lesion.shape), lesion, region=lesion)
    assert math.isnan(scores.auroc) and math.isnan(scores.ncc)
    assert scores.auprc == 1.0 and scores.relevance_mass == 1.0 and scores.pointing_game == 1.0


def test_energy_is_the_mean_magnitude_inside_the_region_and_the_null_test_uses_it():
    _, region = blob_masks()
    attribution = np.where(region, -0.2, 5.0)
    assert energy(attribution, region) == pytest.approx(0.2)
    assert null_energy(attribution, region) == energy(attribution, region)
    assert energy(attribution) == pytest.approx(np.abs(attribution).mean())


def test_summarise_averages_each_measure_ignoring_undefined_values():
    healthy = localisation(np.full((4, 4), 0.1), np.zeros((4, 4), dtype=bool))
    first, second = localisation(MAP, LESION), localisation(MAP[::-1], LESION)
    summary = summarise([first, second, healthy])
    assert summary["count"] == 3
    assert summary["auroc"] == pytest.approx((first.auroc + second.auroc) / 2)
    assert summary["energy"] == pytest.approx((first.energy + second.energy + 0.1) / 3)
    assert math.isnan(summarise([healthy])["dice_otsu"])
    assert summarise([])["count"] == 0


@pytest.mark.parametrize(
    ("lesion", "region", "message"),
    [
        (np.zeros((3, 4), bool), None, r"^The lesion mask is 4x3 px but the attribution map is 4x4 px; resize"),
        (LESION, np.ones((4, 5), bool), r"^The region mask is 5x4 px but the attribution map is 4x4 px; resize"),
        (LESION, np.zeros((4, 4), bool), r"^The region mask is empty"),
        (np.ones((4, 4, 3)), None, r"^A mask must be a 2-D"),
    ],
)
def test_mismatched_or_empty_masks_are_one_sentence_input_errors(lesion, region, message):
    with pytest.raises(InputError, match=message) as error:
        localisation(MAP, lesion, region)
    text = str(error.value)
    assert text.endswith(".") and text.count(". ") == 0 and "\n" not in text


def test_a_map_with_nan_is_an_input_error():
    broken = MAP.copy()
    broken[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        localisation(broken, LESION)
