"""Loss weighting in fine-tuning: ``--lesion-weight W`` (the loss inside ground-truth lesion masks counts
1 + W times) and ``--snr-gamma`` (min-SNR-gamma weighting of the timesteps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dva.core.errors import ConfigError
from dva.datasets import Sample
from dva.finetune.data import TrainingData
from dva.finetune.loss import min_snr_weights
from dva.finetune.loss import weighted_mse as _weighted_mse
from dva.finetune.trainer import train
from tests.test_finetune import config, log_rows


def test_without_weights_it_is_the_plain_mse():
    prediction, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(_weighted_mse(prediction, target, None), F.mse_loss(prediction, target))
    ones = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(_weighted_mse(prediction, target, ones), F.mse_loss(prediction, target))


def test_an_error_inside_the_lesion_counts_one_plus_w_times():
    target = torch.zeros(1, 4, 8, 8)
    lesion = torch.zeros(1, 1, 8, 8)
    lesion[..., 2:4, 2:4] = 1.0  # 4 of 64 pixels
    inside, outside = target.clone(), target.clone()
    inside[..., 2, 2] = 1.0
    outside[..., 6, 6] = 1.0
    weights = 1 + 9.0 * lesion
    ratio = _weighted_mse(inside, target, weights) / _weighted_mse(outside, target, weights)
    assert float(ratio) == pytest.approx(10.0)
    # Normalised by the mean weight: a uniform error keeps the unweighted loss.
    torch.testing.assert_close(_weighted_mse(target + 1, target, weights), torch.tensor(1.0))


def test_lesion_fractions_follow_the_image_geometry(tmp_path):
    """A lesion in the top-left quarter of a wide image lands where that image's pixels land (padded to a
    square, resized to the model), averaged over each latent pixel; a sample without a mask weighs nothing."""
    mask = np.zeros((32, 64), np.uint8)
    mask[:16, :32] = 255
    Image.fromarray(mask).save(tmp_path / "lesion.png")
    data = TrainingData({}, resolution=64)
    with_lesion = Sample(tmp_path / "scan.png", "Lung Opacity", lesion=tmp_path / "lesion.png")
    fractions = data.lesion_fractions([with_lesion, Sample(tmp_path / "n.png", "Normal")], (8, 8))
    assert fractions.shape == (2, 1, 8, 8) and fractions[1].sum() == 0
    expected = np.zeros((8, 8), np.float32)
    expected[2:4, :4] = 1.0  # the 32-row image is padded by 16 rows above and below, then halved
    np.testing.assert_allclose(fractions[0, 0].numpy(), expected, atol=1e-6)


def test_phantoms_train_with_their_lesions_weighted(catalogue, tiny_radbert_model, tmp_path):
    from dva.datasets.phantoms import make_phantoms

    data = make_phantoms(tmp_path / "phantoms", 2, 64, seed=5)
    weighted, plain = tmp_path / "weighted", tmp_path / "plain"
    schedule = "Normal+Lung Opacity:2"
    train(config(tiny_radbert_model, data, weighted, schedule, lesion_weight=30.0, use_sample_prompts=True), catalogue)
    train(config(tiny_radbert_model, data, plain, schedule, use_sample_prompts=True), catalogue)
    losses = [[float(row["loss"]) for row in log_rows(out)] for out in (weighted, plain)]
    assert losses[0] != losses[1], "the same draws with lesions weighted give another loss"
    assert (weighted / "dva.json").is_file()


def test_a_dataset_without_lesion_masks_is_refused_before_training(catalogue, tiny_radbert_model, dataset, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ConfigError, match="--lesion-weight 5: the dataset has no lesion masks"):
        train(config(tiny_radbert_model, dataset, out, "Normal:1", lesion_weight=5.0), catalogue)
    assert not out.exists()


def test_the_command_line_and_registry_accept_it():
    from dva.core.settings import check_finetune_table

    assert check_finetune_table({"lesion_weight": 30}, "[entries.x.finetune]") == {"lesion_weight": 30.0}
    with pytest.raises(ConfigError):
        check_finetune_table({"lesion_weight": -1}, "[entries.x.finetune]")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_those_of_the_paper(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    timesteps = torch.tensor([0, 50, 300, 999])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    expected = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction_type == "epsilon" else snr + 1)
    torch.testing.assert_close(min_snr_weights(scheduler, timesteps, 5.0), expected)
    if prediction_type == "epsilon":
        weights = min_snr_weights(scheduler, timesteps, 5.0)
        assert weights[0] < 0.01 and float(weights[-1]) == pytest.approx(1.0), "low noise counts less, high noise fully"


def test_step_weights_scale_each_samples_loss():
    prediction, target = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    steps = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(_weighted_mse(prediction, target, None, steps), (per_sample * steps).mean())
