"""Specification of dva.metrics.similarity: SSIM and MS-SSIM of an input and its counterfactual.

Unmasked values are pytorch-msssim's own; masked values reduce to them with a full mask; images too
small for five MS-SSIM scales use fewer (and say how many); bad pairs are one-sentence InputErrors.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

from dva.core.errors import InputError
from dva.metrics.similarity import (
    WEIGHTS,
    SimilarityScores,
    ms_ssim_scales,
    similarity,
    similarity_batch,
    to_intensity,
)

TOLERANCE = 1e-6


def scan_and_counterfactual(height: int, width: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth chest-like float image in [0, 1] and a copy with a removed opacity plus a little noise."""
    width = width or height
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03) + np.exp(-((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03)
    counterfactual = 0.8 - 0.5 * lungs + 0.02 * rng.standard_normal((height, width))
    scan = counterfactual + 0.3 * np.exp(-((x - 0.3) ** 2 + (y - 0.4) ** 2) / 0.005)
    return np.clip(scan, 0, 1).astype(np.float32), np.clip(counterfactual, 0, 1).astype(np.float32)


def as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image)[None, None]


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".")
    assert not re.search(r"[.!?]\s+[A-Z]", message[:-1]), f"more than one sentence: {message!r}"


# -- parity with pytorch-msssim ----------------------------------------------------------------------


def test_unmasked_scores_are_pytorch_msssim_on_the_same_tensors():
    scan, counterfactual = scan_and_counterfactual(192, 208)
    scores = similarity(scan, counterfactual)
    x, y = as_batch(scan), as_batch(counterfactual)
    assert scores.ssim == pytest.approx(ssim(x, y, data_range=1.0).item(), abs=TOLERANCE)
    assert scores.ms_ssim == pytest.approx(ms_ssim(x, y, data_range=1.0).item(), abs=TOLERANCE)
    assert scores.ms_ssim_scales == 5 and scores.data_range == 1.0
    assert 0.0 < scores.ms_ssim < 1.0 and 0.0 < scores.ssim < 1.0


def test_an_all_ones_mask_gives_the_unmasked_scores():
    for size in (192, 96, 37):  # five, four and two scales
        scan, counterfactual = scan_and_counterfactual(size, size + 3, seed=size)
        plain = similarity(scan, counterfactual)
        masked = similarity(scan, counterfactual, mask=np.ones(scan.shape, dtype=bool))
        assert masked.ssim == pytest.approx(plain.ssim, abs=TOLERANCE)
        assert masked.ms_ssim == pytest.approx(plain.ms_ssim, abs=TOLERANCE)
        assert masked.ms_ssim_scales == plain.ms_ssim_scales


def test_fewer_scales_follow_pytorch_msssim_with_the_first_weights_renormalised():
    from dva.metrics.similarity import _multiscale  # the path used below 161 px, run here where both can

    scan, counterfactual = scan_and_counterfactual(192)
    x, y = as_batch(scan), as_batch(counterfactual)
    for scales in (2, 3, 4):
        weights = [w / sum(WEIGHTS[:scales]) for w in WEIGHTS[:scales]]
        ours = _multiscale(x, y, None, 1.0, scales)[1].item()
        assert ours == pytest.approx(ms_ssim(x, y, data_range=1.0, weights=weights).item(), abs=TOLERANCE)


# -- the masked definition ---------------------------------------------------------------------------


def test_the_mask_restricts_the_comparison_to_the_windows_inside_it():
    """Images identical on the left, different far to the right: inside a left mask they are the same."""
    scan, _ = scan_and_counterfactual(192, 512)
    changed = scan.copy()
    changed[:, 400:] = 1.0 - changed[:, 400:]
    left = np.zeros(scan.shape, dtype=bool)
    left[:, :200] = True  # even MS-SSIM's coarsest windows (16x) stay left of column 400
    masked = similarity(scan, changed, mask=left)
    assert masked.ssim == pytest.approx(1.0, abs=TOLERANCE)
    assert masked.ms_ssim == pytest.approx(1.0, abs=TOLERANCE)
    assert similarity(scan, changed).ssim < 0.95


def test_lungs_that_miss_the_image_centre_still_count_at_the_coarsest_scales():
    """At 192 px the coarsest MS-SSIM map is its 2x2 centre pixels, the mediastinum: windows overlap the lungs."""
    scan, counterfactual = scan_and_counterfactual(192, seed=8)
    lungs = np.zeros(scan.shape, dtype=bool)
    lungs[30:170, 20:80] = lungs[30:170, 112:172] = True
    masked = similarity(scan, counterfactual, mask=lungs)
    assert masked.ms_ssim_scales == 5 and 0.0 < masked.ms_ssim < 1.0
    assert masked.ms_ssim != pytest.approx(similarity(scan, counterfactual).ms_ssim, abs=1e-4)


def test_masked_ssim_is_the_ssim_map_averaged_inside_the_mask_cropped_to_the_valid_convolution():
    from dva.metrics.similarity import _maps

    scan, counterfactual = scan_and_counterfactual(64, seed=3)
    mask = np.zeros(scan.shape, dtype=bool)
    mask[10:40, 20:60] = True
    ssim_map = _maps(as_batch(scan), as_batch(counterfactual), 1.0)[0][0, 0].numpy()
    assert ssim_map.shape == (54, 54)  # window 11: 5 px lost on each side
    expected = ssim_map[mask[5:-5, 5:-5]].mean()
    assert similarity(scan, counterfactual, mask=mask).ssim == pytest.approx(expected, abs=TOLERANCE)


def test_masks_follow_dvas_conventions():
    scan, counterfactual = scan_and_counterfactual(96, seed=4)
    lungs = np.zeros(scan.shape, dtype=bool)
    lungs[20:80, 10:45] = lungs[20:80, 51:86] = True
    v7 = np.where(lungs, 255, 0).astype(np.uint8)
    v7[5:15, :] = 127  # "ignore": not in
    expected = similarity(scan, counterfactual, mask=lungs)
    for mask in (v7, lungs.astype(np.uint8), lungs.astype(np.float32)):
        assert similarity(scan, counterfactual, mask=mask) == expected


# -- small images ------------------------------------------------------------------------------------


def test_the_number_of_scales_follows_the_shorter_side():
    # the k-th scale needs the shorter side above 10 * 2**(k - 1) px (pytorch-msssim: above 160 for five)
    assert [ms_ssim_scales(side, 1000) for side in (161, 160, 81, 80, 41, 40, 21, 20, 11)] == [5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert ms_ssim_scales(10, 10) == 0


@pytest.mark.parametrize(("side", "scales"), [(64, 3), (96, 4), (128, 4), (21, 2)])
def test_small_images_use_fewer_scales_and_record_them(side, scales):
    scan, counterfactual = scan_and_counterfactual(side, seed=side)
    scores = similarity(scan, counterfactual)
    assert scores.ms_ssim_scales == scales
    assert 0.0 <= scores.ms_ssim <= 1.0 and 0.0 <= scores.ssim <= 1.0
    assert similarity(scan, scan).ms_ssim == pytest.approx(1.0, abs=TOLERANCE)


def test_identical_images_score_one():
    scan, _ = scan_and_counterfactual(192, seed=5)
    lungs = np.zeros(scan.shape, dtype=bool)
    lungs[40:160, 30:170] = True
    for mask in (None, lungs):
        scores = similarity(scan, scan, mask=mask)
        assert scores.ssim == pytest.approx(1.0, abs=TOLERANCE)
        assert scores.ms_ssim == pytest.approx(1.0, abs=TOLERANCE)


# -- intensities and data range ----------------------------------------------------------------------


def test_integer_rgb_and_pil_images_are_compared_as_intensity_in_0_1():
    scan, counterfactual = scan_and_counterfactual(64, seed=6)
    scan8, counterfactual8 = (np.rint(image * 255).astype(np.uint8) for image in (scan, counterfactual))
    expected = similarity(scan8.astype(np.float32) / 255, counterfactual8.astype(np.float32) / 255)
    assert similarity(scan8, counterfactual8) == expected
    assert similarity(Image.fromarray(scan8), Image.fromarray(counterfactual8)) == expected
    gray_rgb = np.repeat(scan8[..., None], 3, axis=2)
    assert np.allclose(to_intensity(gray_rgb), scan8 / 255, atol=1e-6)
    scan16 = (scan * 65535).astype(np.uint16)
    assert to_intensity(scan16).dtype == np.float32 and to_intensity(scan16).max() <= 1.0
    assert np.allclose(to_intensity(np.dstack([scan8, scan8, scan8, np.zeros_like(scan8)])), 0.0)  # RGBA on black


def test_the_data_range_is_applied_and_recorded():
    scan, counterfactual = scan_and_counterfactual(96, seed=7)
    on_255 = similarity(scan * 255, counterfactual * 255, data_range=255.0)
    on_1 = similarity(scan, counterfactual)
    assert on_255.data_range == 255.0 and on_1.data_range == 1.0
    assert on_255.ssim == pytest.approx(on_1.ssim, abs=1e-5)
    assert on_255.ms_ssim == pytest.approx(on_1.ms_ssim, abs=1e-5)


# -- batches -----------------------------------------------------------------------------------------


def test_a_batch_gives_the_one_by_one_scores_in_input_order():
    pairs = []
    for index, side in enumerate((192, 64, 192, 96, 192, 64, 192)):
        scan, counterfactual = scan_and_counterfactual(side, seed=index)
        mask = None
        if index % 3 == 1:
            mask = np.zeros(scan.shape, dtype=bool)
            mask[side // 4 : -side // 4, side // 5 : -side // 5] = True
        pairs.append((scan, counterfactual, mask))
    batched = similarity_batch(pairs, batch_size=2)
    assert all(isinstance(scores, SimilarityScores) for scores in batched)
    for (scan, counterfactual, mask), scores in zip(pairs, batched):
        alone = similarity(scan, counterfactual, mask=mask)
        assert scores.ssim == pytest.approx(alone.ssim, abs=TOLERANCE)
        assert scores.ms_ssim == pytest.approx(alone.ms_ssim, abs=TOLERANCE)
        assert scores.ms_ssim_scales == alone.ms_ssim_scales
    assert similarity_batch([]) == []


# -- errors ------------------------------------------------------------------------------------------


def test_images_too_small_for_two_scales_are_an_input_error():
    scan, counterfactual = scan_and_counterfactual(20, 300)
    with pytest.raises(InputError, match=r"300x20 px, too small .* at least 21 px") as error:
        similarity(scan, counterfactual)
    assert_one_sentence(str(error.value))
    with pytest.raises(InputError, match="too small"):
        similarity(np.zeros((8, 8)), np.zeros((8, 8)))  # not even SSIM's window fits: still no AssertionError


def test_images_of_different_sizes_are_an_input_error():
    scan, _ = scan_and_counterfactual(192)
    _, other = scan_and_counterfactual(192, 200)
    with pytest.raises(InputError, match=r"192x192 and 200x192 px, different sizes; compare .* at the same size") as error:
        similarity(scan, other)
    assert_one_sentence(str(error.value))


def test_a_bad_pair_in_a_batch_is_named_by_its_index():
    scan, counterfactual = scan_and_counterfactual(64)
    with pytest.raises(InputError, match=r"^Pair 1: the images are 64x64 and 32x32 px"):
        similarity_batch([(scan, counterfactual, None), (scan, counterfactual[:32, :32], None)])


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones((32, 32), dtype=bool), r"the mask is 32x32 px but the images are 64x64 px"),
        (np.zeros((64, 64), dtype=bool), r"the mask is empty"),
        (np.pad(np.zeros((54, 54), dtype=bool), 5, constant_values=True), r"within 5 px of the image border"),
    ],
)
def test_unusable_masks_are_input_errors(mask, message):
    scan, counterfactual = scan_and_counterfactual(64)
    with pytest.raises(InputError, match="(?i)" + message) as error:
        similarity(scan, counterfactual, mask=mask)
    assert_one_sentence(str(error.value))


def test_values_outside_the_data_range_are_an_input_error():
    scan, counterfactual = scan_and_counterfactual(64)
    with pytest.raises(InputError, match=r"outside \[0, 1\]; pass intensities in \[0, 1\]"):
        similarity(scan * 255, counterfactual * 255)
