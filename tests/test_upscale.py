"""dva upscale: super-resolution by diffusers' x4 upscaler (--upscaler) or by dva's own model (tiled SDEdit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import chest_like


@pytest.fixture(scope="module")
def tiny_x4_upscaler(tmp_path_factory):
    """diffusers' StableDiffusionUpscalePipeline with tiny random parts built from configs, saved with save_pretrained
    (so ``--upscaler`` loads it as it loads the real one): 7-channel UNet with noise-level classes, x4 VAE, CLIP."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)

    from dva.plugins.encoders import BUILTIN_ENCODERS

    clip = next(spec for spec in BUILTIN_ENCODERS if spec.name == "clip").create(seed=0)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=16, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, num_class_embeds=100, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=[32, 32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        scaling_factor=0.08333)
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=clip.model, tokenizer=clip.tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350)
    folder = tmp_path_factory.mktemp("x4") / "upscaler"
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def scans(tmp_path):
    """A 48 px 8-bit scan, a 40 px 16-bit scan (12 bits of data) and a damaged file."""
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(chest_like(48, 1)).save(folder / "eight.png")
    Image.fromarray((chest_like(40, 2).astype(np.uint16) * 16)).save(folder / "sixteen.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def upscale(*args: str) -> int:
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["upscale", *args])
    return exited.value.code


def test_dva_model_upscales_each_scan_and_reports_a_bad_file(tiny_sd, scans, tmp_path, capsys):
    out = tmp_path / "out"
    code = upscale(str(scans), "--model", str(tiny_sd), "--scale", "2", "--steps", "4", "--out", str(out))
    assert code == 1, "one input failed"
    eight, sixteen = Image.open(out / "eight.png"), Image.open(out / "sixteen.png")
    assert eight.size == (96, 96) and eight.mode == "L"
    assert sixteen.size == (80, 80) and sixteen.mode.startswith("I"), "a 16-bit input gives a 16-bit PNG"
    assert np.asarray(sixteen).max() < 4096, "on the input's own 12-bit scale, as dva run's 16-bit counterfactual"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"done": 2, "failed": 1}
    assert manifest["settings"]["engine"] == "sdedit" and manifest["settings"]["strength"] == 0.3
    assert "broken.png" in capsys.readouterr().err
    assert not list(out.glob(".*.tmp")), "written atomically"


def test_dva_model_upscaling_is_close_to_bicubic_at_low_strength(tiny_sd, scans, tmp_path):
    from dva.components.upscaling import bicubic

    upscale(str(scans / "eight.png"), "--model", str(tiny_sd), "--steps", "4", "--out", str(tmp_path / "out"))
    made = np.asarray(Image.open(tmp_path / "out" / "eight.png")) / 255.0
    reference = bicubic(chest_like(48, 1) / 255.0, 2)
    assert made.shape == reference.shape and np.abs(made - reference).mean() < 0.25


def test_the_x4_upscaler_folder_loads_and_upscales_four_times(tiny_x4_upscaler, scans, tmp_path):
    out = tmp_path / "out"
    code = upscale(str(scans / "eight.png"), "--upscaler", str(tiny_x4_upscaler), "--steps", "2", "--out", str(out))
    assert code == 0
    assert Image.open(out / "eight.png").size == (192, 192)
    assert json.loads((out / "manifest.json").read_text())["settings"]["engine"] == "x4-upscaler"


@pytest.mark.parametrize("flags, message", [
    (["--scale", "2"], "makes 4x images only"),
    (["--strength", "0.2"], "for dva's own model"),
])
def test_what_the_x4_upscaler_cannot_do_is_refused(tiny_x4_upscaler, scans, tmp_path, capsys, flags, message):
    code = upscale(str(scans / "eight.png"), "--upscaler", str(tiny_x4_upscaler), *flags, "--out", str(tmp_path / "o"))
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_no_upscaler_is_refused(tiny_sd, scans, tmp_path, capsys):
    code = upscale(str(scans / "eight.png"), "--upscaler", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "cannot load it as diffusers' x4 upscaler" in capsys.readouterr().err


def test_no_readable_input_path_is_refused_before_any_model_loads(tmp_path, capsys):
    assert upscale(str(tmp_path / "missing.png"), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_an_out_that_would_overwrite_an_input_is_refused_before_any_model_loads(scans, tmp_path, capsys):
    before = (scans / "eight.png").read_bytes()
    assert upscale(str(scans / "eight.png"), "--model", str(tmp_path / "no-model"), "--out", str(scans)) == 2
    assert "lies where dva writes its outputs" in capsys.readouterr().err
    assert (scans / "eight.png").read_bytes() == before and not (scans / "manifest.json").exists()


def test_an_image_the_model_fails_on_is_recorded_and_the_others_go_on(tiny_sd, scans, tmp_path, capsys, monkeypatch):
    from dva.components.upscaling import SDEditUpscaler

    real = SDEditUpscaler.upscale

    def failing_on_small(self, pixels, seed):
        if pixels.shape[0] == 40:
            raise RuntimeError("CUDA out of memory")
        return real(self, pixels, seed)

    monkeypatch.setattr(SDEditUpscaler, "upscale", failing_on_small)
    out = tmp_path / "out"
    assert upscale(str(scans), "--model", str(tiny_sd), "--scale", "2", "--steps", "2", "--out", str(out)) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"done": 1, "failed": 2}
    assert (out / "eight.png").exists() and not (out / "sixteen.png").exists()
    assert "upscaling failed (CUDA out of memory)" in capsys.readouterr().err
