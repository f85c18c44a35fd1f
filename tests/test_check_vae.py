"""Specification of ``dva check-vae`` (thesis appendix A.2): a model's VAE reconstructs each image, and dva
reports PSNR, SSIM and MS-SSIM per image and per class, with a verdict against stated thresholds."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATA
from dva.core.errors import ConfigError
from dva.evaluate.vae_check import (
    THRESHOLDS, ImageCheck, Scores, check_images, class_names, image_area, load_vae, locate_vae, reconstruct,
    summarise, verdict,
)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory) -> Path:
    """A diffusers AutoencoderKL folder on its own (a tiny random VAE, 2x downsampling)."""
    from dva.testing.tiny import tiny_vae

    folder = tmp_path_factory.mktemp("tiny-vae") / "vae"
    tiny_vae(seed=3).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vae(vae_folder):
    import torch

    return load_vae(locate_vae(str(vae_folder)), torch.device("cpu"), torch.float32)


def dva(capsys, *args) -> tuple[int, str, str]:
    """The console entry point in-process: (exit status, stdout, stderr)."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def test_reconstruction_and_scores_match_diffusers_and_dva_metrics_by_hand(vae, images):
    import torch

    from dva.metrics.similarity import similarity

    result = check_images(images, vae, resolution=64)
    for path, check in zip(images, result.images):
        gray = np.asarray(Image.open(path), dtype=np.float32) / 255.0  # 64 px square: dva run leaves it as it is
        with torch.no_grad():
            batch = torch.from_numpy(gray)[None, None].repeat(1, 3, 1, 1) * 2 - 1
            decoded = vae.decode(vae.encode(batch).latent_dist.mean).sample
        by_hand = ((decoded[0] + 1) / 2).clamp(0, 1).mean(dim=0).numpy()
        assert np.abs(reconstruct(vae, gray[None])[0] - by_hand).max() < 1e-6
        expected = similarity(gray, by_hand)
        assert check.status == "done" and check.area == (64, 64)
        assert check.scores.psnr == pytest.approx(10 * math.log10(1 / np.mean((gray - by_hand) ** 2.0)), abs=1e-4)
        assert check.scores.ssim == pytest.approx(expected.ssim, abs=1e-6)
        assert check.scores.ms_ssim is None  # 3 scales fit at 64 px: not MS-SSIM as published


def test_ms_ssim_is_reported_only_where_its_five_scales_fit(vae, images):
    small = check_images(images[:1], vae, resolution=64)
    large = check_images(images[:1], vae, resolution=192)
    assert small.images[0].scores.ms_ssim is None and small.images[0].scores.ms_ssim_scales == 3
    assert "MS-SSIM is not available for 1 of 1 images" in small.notes[0]
    assert 0 < large.images[0].scores.ms_ssim <= 1 and large.images[0].scores.ms_ssim_scales == 5
    assert large.notes == []


def test_scores_do_not_depend_on_the_batch_size(vae, images):
    one = check_images(images, vae, resolution=64, batch_size=1)
    three = check_images(images, vae, resolution=64, batch_size=3)
    for a, b in zip(one.images, three.images):
        assert a.scores.psnr == pytest.approx(b.scores.psnr, abs=1e-4)
        assert a.scores.ssim == pytest.approx(b.scores.ssim, abs=1e-5)


def test_only_the_image_itself_is_scored_not_its_padding():
    assert image_area((100, 200), 64) == (slice(16, 48), slice(0, 64))
    assert image_area((64, 64), 64) == (slice(0, 64), slice(0, 64))


@pytest.mark.parametrize(("psnr", "ssim", "expected"), [
    (30.0, 0.85, "PASS"), (35.0, 0.95, "PASS"),
    (29.9, 0.95, "WARN"), (35.0, 0.84, "WARN"), (25.0, 0.70, "WARN"),
    (24.9, 0.99, "FAIL"), (40.0, 0.69, "FAIL"),
])
def test_verdict_needs_both_measures_at_the_pass_lines_and_fails_below_either_fail_line(psnr, ssim, expected):
    assert (THRESHOLDS.pass_psnr, THRESHOLDS.pass_ssim, THRESHOLDS.fail_psnr, THRESHOLDS.fail_ssim) == (30, 0.85, 25, 0.7)
    assert verdict(psnr, ssim) == expected


def test_classes_are_folders_told_apart_by_their_parents():
    paths = [Path("/d/COVID/images/a.png"), Path("/d/Normal/images/b.png"), Path("/d/Normal/images/c.png"),
             Path("/e/scans/d.png")]
    assert list(class_names(paths).values()) == ["COVID/images", "Normal/images", "Normal/images", "scans"]


def test_each_class_gets_means_stds_and_a_verdict_and_the_worst_class_decides_overall():
    def done(folder: str, psnr: float, ssim: float) -> ImageCheck:
        return ImageCheck(Path(f"/x/{folder}/{psnr}.png"), folder, scores=Scores(psnr, ssim, None, 3))

    checks = [done("good", 32.0, 0.90), done("good", 34.0, 0.92), done("poor", 20.0, 0.60),
              ImageCheck(Path("/x/poor/bad.png"), "poor", "failed", "bad file")]
    result = summarise(checks, [], 64, THRESHOLDS)
    good, poor = result.classes
    assert (good.label, good.images, good.failed, good.verdict) == ("good", 2, 0, "PASS")
    assert good.means["psnr"] == pytest.approx(33.0) and good.stds["psnr"] == pytest.approx(1.0)
    assert good.means["ssim"] == pytest.approx(0.91) and good.means["ms_ssim"] is None
    assert (poor.images, poor.failed, poor.verdict) == (2, 1, "FAIL")
    assert result.overall.means["psnr"] == pytest.approx(86 / 3) and result.overall.verdict == "FAIL"


def test_a_non_finite_reconstruction_fails_that_image_alone(vae_folder, images):
    import torch

    broken = load_vae(locate_vae(str(vae_folder)), torch.device("cpu"), torch.float32)
    broken.decoder.conv_out.bias.data[0] = float("nan")
    result = check_images(images, broken, resolution=64)
    assert all(check.status == "failed" for check in result.images)
    assert "NaN or infinite" in result.images[0].error and result.overall.verdict is None


def test_cli_writes_tables_sheet_and_manifest_and_skips_a_bad_file(vae_folder, images, make_bad_inputs, tmp_path,
                                                                     capsys):
    bad = make_bad_inputs(tmp_path / "bad")
    out = tmp_path / "check"
    code, shown, err = dva(capsys, "check-vae", "--model", vae_folder, "--resolution", 64, "--out", out,
                           *images, bad["truncated"], bad["text"])
    assert code == 1, err
    assert "VAE check: " in shown and "failed" in err and "truncated" in err
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["done"] * 3 + ["failed"] * 2
    assert rows[3]["error"].startswith(str(bad["truncated"])) and rows[3]["psnr_db"] == ""
    data = json.loads((out / "vae_check.json").read_text())
    assert data["posterior"] == "mean" and data["resolution"] == 64
    assert data["overall"]["images"] == 5 and data["overall"]["failed"] == 2
    assert [row["class"] for row in data["classes"]] == ["bad", "inputs"]
    assert data["images"][0]["psnr_db"] == pytest.approx(float(rows[0]["psnr_db"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"done": 3, "failed": 2}
    assert set(manifest["weights"]["files"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    with Image.open(out / "worst.png") as sheet:
        assert sheet.width == 3 * 192 and sheet.height > 3 * 192
    assert (out / "classes.csv").read_text().splitlines()[0].startswith("class,images,failed,psnr_db_mean")


def test_the_bundled_model_checks_the_bundled_phantoms(tmp_path, capsys):
    out = tmp_path / "check"
    code, _, err = dva(capsys, "check-vae", "--out", out, SHARED_DATA / "phantoms" / "images" / "Normal-1.png")
    assert code == 0, err
    data = json.loads((out / "vae_check.json").read_text())
    assert data["resolution"] == 64 and data["weights"]["files"].keys() >= {"vae/diffusion_pytorch_model.safetensors"}
    assert data["overall"]["psnr_db_mean"] > 28  # the tiny model's VAE was trained on phantoms


def test_a_model_folder_without_a_vae_is_one_sentence_and_exit_2(tmp_path, images, capsys):
    folder = tmp_path / "no-vae"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    code, _, err = dva(capsys, "check-vae", "--model", folder, "--out", tmp_path / "out", *images)
    assert code == 2
    assert "the folder has no VAE" in err and "Traceback" not in err


def test_a_resolution_the_vae_cannot_encode_is_refused(vae_folder, vae, images, tmp_path, capsys):
    from dva.evaluate.vae_check import vae_resolution

    with pytest.raises(ConfigError, match="multiple of 2"):
        vae_resolution(locate_vae(str(vae_folder)), vae, 63)
    assert vae_resolution(locate_vae(str(vae_folder)), vae, None) == vae.config.sample_size
    code, _, err = dva(capsys, "check-vae", "--model", vae_folder, "--resolution", 63, "--out", tmp_path / "o", *images)
    assert code == 2 and "--resolution 63" in err
    code, _, err = dva(capsys, "check-vae", "--model", vae_folder, "--batch-size", 0, "--out", tmp_path / "o", *images)
    assert code == 2 and "--batch-size 0: must be at least 1." in err



def test_every_flag_comes_from_the_settings_schema_with_its_default():
    import click

    from dva.cli.check_vae import CHECK_VAE_SETTINGS, check_vae
    from dva.core.settings import RUN_SETTINGS, by_name

    settings = by_name((*RUN_SETTINGS, *CHECK_VAE_SETTINGS))
    for param in check_vae.params:
        if isinstance(param, click.Option) and param.name != "help":
            setting = settings[param.name]
            assert tuple(param.opts + param.secondary_opts) == setting.flags, param.name
            assert param.default == (setting.option.default if setting.flag_default else None), param.name


def test_an_input_named_like_one_of_its_outputs_in_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    sheet = out / "worst.png"
    sheet.write_bytes((SHARED_DATA / "phantoms" / "images" / "Normal-1.png").read_bytes())
    code, _, err = dva(capsys, "check-vae", "--out", out, sheet)
    assert code == 2 and "lies where dva writes its outputs" in err
    assert sorted(path.name for path in out.iterdir()) == ["worst.png"]
