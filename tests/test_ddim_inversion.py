"""The ddim-inversion prior: a deterministic counterfactual from the input's own DDIM-inverted noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dva.core.errors import ConfigError

from tests.conftest import runner

STEPS = 8


dva_run = runner(steps=STEPS, seed=3, prior="ddim-inversion")


def maps(out, stem):
    return load_file(str(out / stem / "attribution.safetensors"))


def test_dva_run_with_ddim_inversion_writes_the_usual_outputs(tiny_sd, images, tmp_path, capsys):
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["run", str(images[0]), "--model", str(tiny_sd), "--prior", "ddim-inversion", "--strength", "0.5",
              "--steps", "8", "--out", str(tmp_path / "out")])
    assert exited.value.code in (0, None)
    folder = tmp_path / "out" / "scan0"
    for name in ("input.png", "counterfactual.png", "attribution.png", "overlay.png", "attribution.safetensors"):
        assert (folder / name).is_file(), name
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["prior"] == "ddim-inversion"
    assert manifest["recipe"]["prior_options"] == {"strength": 0.5, "inversion": "unconditional", "region": ""}
    assert manifest["unet_calls"] == 2 * int(8 * 0.5), "inversion steps plus denoising steps, per image"


def test_the_seed_does_not_change_the_counterfactual(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images[:1], tmp_path / "a", model=str(tiny_sd), seed=3)
    dva_run(catalogue, images[:1], tmp_path / "b", model=str(tiny_sd), seed=12345)
    a, b = maps(tmp_path / "a", "scan0"), maps(tmp_path / "b", "scan0")
    assert np.array_equal(a["attribution"], b["attribution"])
    assert (tmp_path / "a/scan0/counterfactual.png").read_bytes() == (tmp_path / "b/scan0/counterfactual.png").read_bytes()


def test_outputs_do_not_depend_on_batch_size(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images, tmp_path / "one", model=str(tiny_sd), batch_size=1)
    dva_run(catalogue, images[::-1], tmp_path / "three", model=str(tiny_sd), batch_size=3)
    for image in images:
        alone, batched = maps(tmp_path / "one", image.stem), maps(tmp_path / "three", image.stem)
        assert np.abs(alone["attribution"] - batched["attribution"]).max() <= 1 / 255


def test_guidance_changes_the_counterfactual(catalogue, tiny_sd, images, tmp_path):
    """The healthy prompt steers only through guidance; guidance 1 and 7.5 must differ (the prompt is used)."""
    dva_run(catalogue, images[:1], tmp_path / "g1", model=str(tiny_sd), guidance_scale=1.0)
    dva_run(catalogue, images[:1], tmp_path / "g7", model=str(tiny_sd), guidance_scale=7.5)
    difference = maps(tmp_path / "g1", "scan0")["attribution"] - maps(tmp_path / "g7", "scan0")["attribution"]
    assert np.abs(difference).max() > 1 / 255


def test_samples_above_one_are_refused_before_any_model_loads(catalogue, images, tmp_path):
    with pytest.raises(ConfigError, match="deterministic, so every sample would be the same"):
        dva_run(catalogue, images[:1], tmp_path / "out", model=str(tmp_path / "no-such-model"), samples=3)


def test_inversion_then_sampling_reconstructs_the_input_latent():
    """Reference check: with guidance 1 and one embedding both ways, DDIM sampling undoes DDIM inversion (up to
    the inversion's one-step approximation), far closer than SDEdit's random noising to the same time."""
    from dva.components.ddim_inversion import DDIMInversionPrior
    from dva.components.priors import ModelParts
    from dva.testing.conformance import smooth_images
    from dva.testing.tiny import sd_scheduler, tiny_unet, tiny_vae

    steps = 10
    prior = DDIMInversionPrior(strength=0.6)
    prior.load(ModelParts(tiny_unet(), tiny_vae(), sd_scheduler(), torch.device("cpu"), torch.float32))
    images = torch.from_numpy(smooth_images(2))[:, None].repeat(1, 3, 1, 1)
    empty = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))  # stands for the empty prompt
    latents = prior.encode(images)
    reconstructed = prior.denoise(prior.invert(latents, empty, steps), empty, empty, steps, 1.0)
    prior.scheduler.set_timesteps(steps)
    start = prior.scheduler.timesteps[steps - prior.steps_run(steps)]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    sdedit = prior.denoise(prior.scheduler.add_noise(latents, noise, start[None]), empty, empty, steps, 1.0)
    reconstruction_error = (reconstructed - latents).abs().mean()
    sdedit_change = (sdedit - latents).abs().mean()
    assert reconstruction_error < 0.25 * sdedit_change, (float(reconstruction_error), float(sdedit_change))
