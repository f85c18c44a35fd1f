"""dva finetune extras: cached VAE latents (and text states), validation counterfactuals, TensorBoard logging."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dva.core.errors import ConfigError
from dva.finetune import validation
from dva.finetune.trainer import train
from tests.conftest import chest_like
from tests.test_finetune import config, log_rows


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("held-out")
    for index in range(3):
        Image.fromarray(chest_like(64, 20 + index)).save(folder / f"case{index}.png")
    return folder


def losses(out: Path) -> np.ndarray:
    return np.array([float(row["loss"]) for row in log_rows(out)])


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def assert_same_unet(a: Path, b: Path, atol: float) -> None:
    first, second = unet_weights(a), unet_weights(b)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=atol, msg=key)


def assert_close_training(base: Path, a: Path, b: Path, learning_rate: float) -> None:
    """Same training up to float noise. The VAE encodes a different batch when caching, so latents differ by
    ~1e-7; AdamW turns a near-zero gradient into a step of about the learning rate whatever its sign, so a
    few weights may differ by up to one step while the run as a whole is the same."""
    start, first, second = unet_weights(base), unet_weights(a), unet_weights(b)
    moved = torch.cat([(first[key] - start[key]).flatten() for key in first])
    apart = torch.cat([(second[key] - first[key]).flatten() for key in first])
    assert apart.abs().max() < learning_rate, float(apart.abs().max())
    assert apart.norm() < 0.01 * moved.norm(), (float(apart.norm()), float(moved.norm()))


@pytest.mark.parametrize("settings", [
    dict(prior_weight=1.0, prompt_dropout=0.3),  # trained encoder: latents cached, the encoder runs every step
    dict(train_text_encoder=False),  # frozen encoder: text states cached too
], ids=["trained-encoder-with-prior", "frozen-encoder"])
def test_cached_latents_give_the_losses_and_weights_of_an_uncached_run(
    catalogue, tiny_radbert_model, dataset, tmp_path, settings
):
    schedule = "Normal:2,Lung Opacity:2"
    train(config(tiny_radbert_model, dataset, tmp_path / "plain", schedule, **settings), catalogue)
    train(config(tiny_radbert_model, dataset, tmp_path / "cached", schedule, cache_latents=True, **settings), catalogue)
    np.testing.assert_allclose(losses(tmp_path / "cached"), losses(tmp_path / "plain"), rtol=0, atol=1e-4)
    assert_close_training(tiny_radbert_model, tmp_path / "plain", tmp_path / "cached", learning_rate=1e-3)


@pytest.mark.parametrize("strategy", ["textual-inversion", "lora"])
def test_cached_latents_in_the_other_strategies(catalogue, tiny_radbert_model, dataset, tmp_path, monkeypatch, strategy):
    """One cache for all three strategies: LoRA's frozen encoder gets its text states cached, textual inversion's not."""
    from dva.finetune.data import TextCache

    prompts = []
    call = TextCache.__call__

    def counted(self, batch, device):
        prompts.append(batch)
        return call(self, batch, device)

    monkeypatch.setattr(TextCache, "__call__", counted)
    for name, cached in (("plain", False), ("cached", True)):
        train(config(tiny_radbert_model, dataset, tmp_path / name, "Normal:2,Lung Opacity:1", strategy=strategy,
                     prompt_template="a {label} scan", cache_latents=cached), catalogue)
    np.testing.assert_allclose(losses(tmp_path / "cached"), losses(tmp_path / "plain"), rtol=0, atol=1e-4)
    assert len(prompts) == (3 if strategy == "lora" else 0)


def test_validation_writes_strips_at_its_steps_and_leaves_training_unchanged(
    catalogue, tiny_radbert_model, dataset, held_out, tmp_path
):
    schedule = "Normal:3,Lung Opacity:2"
    train(config(tiny_radbert_model, dataset, tmp_path / "plain", schedule, prompt_dropout=0.2), catalogue)
    out = tmp_path / "validated"
    train(config(tiny_radbert_model, dataset, out, schedule, prompt_dropout=0.2, validation_every=2,
                 validation_images=str(held_out), validation_count=2), catalogue)
    steps = sorted(path.name for path in (out / "validation").iterdir())
    assert steps == ["step-2", "step-4"]
    for step in steps:
        files = sorted(path.name for path in (out / "validation" / step).iterdir())
        assert files == ["case0.png", "case1.png"]
        strip = np.asarray(Image.open(out / "validation" / step / "case0.png"))
        assert strip.shape == (64, 192, 3)
    np.testing.assert_array_equal(losses(out), losses(tmp_path / "plain"))
    assert_same_unet(tmp_path / "plain", out, atol=1e-6)


def test_a_bad_validation_path_is_refused_before_training(catalogue, tiny_radbert_model, dataset, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ConfigError, match="--validation-images"):
        train(config(tiny_radbert_model, dataset, out, "Normal:2", validation_every=1,
                     validation_images=str(tmp_path / "nowhere")), catalogue)
    with pytest.raises(ConfigError, match="--validation-images"):
        train(config(tiny_radbert_model, dataset, out, "Normal:2", validation_every=1), catalogue)
    assert not (out / "train_log.csv").exists()


def test_tensorboard_gets_loss_and_lr_when_installed(tmp_path, monkeypatch):
    calls = []

    class SummaryWriter:
        def __init__(self, log_dir):
            calls.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = validation.TrainingLog(tmp_path / "train_log.csv", True, 0)
    log.write(1, "Normal", 0.5, 1e-4, 0.1)
    log.close()
    assert calls[0] == ("dir", str(tmp_path / "tensorboard"))
    assert ("loss", 0.5, 1) in calls and ("lr", 1e-4, 1) in calls and calls[-1] == ("close",)
    assert (tmp_path / "train_log.csv").read_text().splitlines()[1].startswith("1,Normal,0.500000")


def test_without_tensorboard_the_csv_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = validation.TrainingLog(tmp_path / "train_log.csv", True, 0)
    log.write(1, "Normal", 0.5, 1e-4, 0.1)
    log.close()
    assert log.writer is None and not (tmp_path / "tensorboard").exists()
