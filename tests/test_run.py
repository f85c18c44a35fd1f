"""dva run end to end on tiny models: parity with diffusers' pipelines, batch invariance, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from dva.core.plugins import load_catalogue
from dva.core.registry import load_entries, resolve
from dva.core.run import run

from tests.conftest import runner

STEPS = 8


dva_run = runner(steps=STEPS, seed=3)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def test_sdedit_with_clip_equals_diffusers_img2img(catalogue, tiny_sd, images, tmp_path):
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline

    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), encoder="clip",
                     scheduler="pndm", strength=0.7, guidance_scale=7.5, prompt="normal chest x ray")
    assert result.exit_code == 0
    pipeline = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    pipeline.scheduler = PNDMScheduler.from_config(pipeline.scheduler.config, skip_prk_steps=True)
    expected = pipeline(
        prompt="normal chest x ray", image=Image.open(images[0]).convert("RGB"), strength=0.7,
        guidance_scale=7.5, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3),
    ).images[0]
    actual = png(tmp_path / "out" / "scan0" / "counterfactual.png")
    assert np.abs(actual - np.asarray(expected, dtype=np.float32) / 255.0).max() <= 1 / 255 + 1e-6


def test_controlnet_canny_equals_diffusers_controlnet_img2img(catalogue, tiny_sd, images, tmp_path):
    import cv2
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    from dva.testing.tiny import tiny_controlnet

    controlnet_folder = tmp_path / "controlnet"
    tiny_controlnet().save_pretrained(controlnet_folder)
    options = {"controlnet": str(controlnet_folder), "low_threshold": 50, "high_threshold": 120, "conditioning_scale": 0.8}
    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), prior="controlnet-canny",
                     prior_options=options, strength=0.8, guidance_scale=5.0, scheduler="ddim")
    assert result.exit_code == 0
    gray = np.asarray(Image.open(images[0]))
    edges = Image.fromarray(cv2.Canny(gray, 50, 120)).convert("RGB")
    saved_condition = png(tmp_path / "out" / "scan0" / "condition.png")
    assert np.array_equal(saved_condition, np.asarray(edges, dtype=np.float32) / 255.0)
    parts = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    from diffusers import ControlNetModel, DDIMScheduler

    pipeline = StableDiffusionControlNetImg2ImgPipeline(
        **{k: v for k, v in parts.components.items() if k != "image_encoder"},
        controlnet=ControlNetModel.from_pretrained(controlnet_folder),
    )
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline(
        prompt="normal chest x ray", image=Image.open(images[0]).convert("RGB"), control_image=edges, strength=0.8,
        guidance_scale=5.0, num_inference_steps=STEPS, controlnet_conditioning_scale=0.8,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    actual = png(tmp_path / "out" / "scan0" / "counterfactual.png")
    assert np.abs(actual - np.asarray(expected, dtype=np.float32) / 255.0).max() <= 1 / 255 + 1e-6


def test_outputs_do_not_depend_on_batch_size(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images, tmp_path / "one", model=str(tiny_sd), batch_size=1)
    dva_run(catalogue, images, tmp_path / "three", model=str(tiny_sd), batch_size=3)
    dva_run(catalogue, images[::-1], tmp_path / "reversed", model=str(tiny_sd), batch_size=2)
    for image in images:
        reference = png(tmp_path / "one" / image.stem / "counterfactual.png")
        for other in ("three", "reversed"):
            assert np.abs(png(tmp_path / other / image.stem / "counterfactual.png") - reference).max() <= 1 / 255 + 1e-6


def test_background_writers_give_the_same_files_as_inline_writing(catalogue, tiny_sd, images, tmp_path):
    """On a GPU outputs are written on threads while the next batch samples; the files must not differ."""
    dva_run(catalogue, images, tmp_path / "inline", model=str(tiny_sd), batch_size=1, writer_threads=0)
    threaded = dva_run(catalogue, images, tmp_path / "threads", model=str(tiny_sd), batch_size=1, writer_threads=2)
    assert threaded.count("done") == 3
    for image in images:
        for name in ("counterfactual.png", "attribution.png", "overlay.png", "fullsize/counterfactual.png"):
            inline_bytes = (tmp_path / "inline" / image.stem / name).read_bytes()
            assert (tmp_path / "threads" / image.stem / name).read_bytes() == inline_bytes, name
        inline_maps = load_file(str(tmp_path / "inline" / image.stem / "attribution.safetensors"))
        threaded_maps = load_file(str(tmp_path / "threads" / image.stem / "attribution.safetensors"))
        assert all(np.array_equal(inline_maps[key], threaded_maps[key]) for key in inline_maps)
    records = [json.loads((tmp_path / "threads" / p.stem / "record.json").read_text()) for p in images]
    assert all(record["status"] == "done" for record in records)


@pytest.mark.parametrize("scheduler", ["pndm", "ddim", "dpm-solver++", "euler", "unipc"])
def test_every_scheduler_runs(catalogue, tiny_sd, images, tmp_path, scheduler):
    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), scheduler=scheduler, steps=4, strength=1.0)
    assert result.exit_code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["recipe"]["scheduler"] == scheduler
    assert manifest["unet_calls"] >= 4


def test_effective_denoising_steps_follow_diffusers(catalogue, tiny_sd, images, tmp_path):
    """75 steps at strength 0.85: int(75 * 0.85) = 63 UNet calls with DDIM, 64 with PNDM (one repeated timestep)."""
    pndm = dva_run(catalogue, images[:1], tmp_path / "pndm", model=str(tiny_sd), steps=75, strength=0.85, scheduler="pndm")
    assert pndm.header["unet_calls"] == 64
    ddim = dva_run(catalogue, images[:1], tmp_path / "ddim", model=str(tiny_sd), steps=75, strength=0.85, scheduler="ddim")
    assert ddim.header["unet_calls"] == 63


def test_dva_model_folder_brings_its_own_encoder(catalogue, tiny_radbert_model, images, tmp_path):
    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_radbert_model))
    assert result.header["encoder"] == {"name": "radbert", "family": "bert", "projection": None,
                                        "source": f"{tiny_radbert_model}/text_encoder"}
    assert "RANDOM weights" in result.header["model_note"]


def test_dva_model_folder_supplies_its_healthy_prompt(catalogue, tiny_radbert_model, images, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_radbert_model, model)
    info = json.loads((model / "dva.json").read_text())
    (model / "dva.json").write_text(json.dumps({**info, "prompts": {"healthy": "Normal chest scan"}}))
    assert dva_run(catalogue, images[:1], tmp_path / "a", model=str(model)).header["prompt"] == "Normal chest scan"
    explicit = dva_run(catalogue, images[:1], tmp_path / "b", model=str(model), prompt="no finding")
    assert explicit.header["prompt"] == "no finding"


def test_dva_model_folder_loads_its_trained_projection(catalogue, tiny_pubmedclip_model, images, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fresh projection would warn
        result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_pubmedclip_model))
    assert result.header["encoder"]["projection"] == "trained"


def test_dva_model_folder_refuses_a_different_encoder_without_weights(catalogue, tiny_radbert_model, images, tmp_path):
    from dva.core.errors import ConfigError

    with pytest.raises(ConfigError, match="was trained with encoder 'radbert'"):
        dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_radbert_model), encoder="biobert")


def test_a_domain_encoder_on_a_stable_diffusion_folder(catalogue, tiny_sd, images, tmp_path):
    """--encoder radbert --encoder-path FOLDER swaps SD's CLIP for a BERT of the UNet's width."""
    radbert = load_catalogue(entry_points=False).get("encoder", "radbert").create()
    radbert.model.save_pretrained(tmp_path / "radbert")
    radbert.tokenizer.save_pretrained(tmp_path / "radbert")
    result = dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd), encoder="radbert",
                     encoder_path=str(tmp_path / "radbert"))
    assert result.exit_code == 0 and result.header["encoder"]["family"] == "bert"


def test_non_square_input_keeps_aspect_and_maps_overlay_the_original(catalogue, tiny_sd, tmp_path):
    from tests.conftest import chest_like

    wide = np.concatenate([chest_like(48, 1), chest_like(48, 2)], axis=1)[:, :80]  # 48 x 80
    Image.fromarray(wide).save(tmp_path / "wide.png")
    mask = np.zeros_like(wide)
    mask[10:40, 5:40] = 255
    Image.fromarray(mask).save(tmp_path / "wide-mask.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(mask).save(masks / "wide.png")
    dva_run(catalogue, [tmp_path / "wide.png"], tmp_path / "out", mask=str(masks), model=str(tiny_sd), fullsize="all")
    folder = tmp_path / "out" / "wide"
    assert Image.open(folder / "input.png").size == (64, 64)
    for name in ("counterfactual", "attribution", "overlay"):
        assert Image.open(folder / "fullsize" / f"{name}.png").size == (80, 48)
    maps = load_file(str(folder / "attribution.safetensors"))
    assert maps["attribution_fullsize"].shape == (48, 80)
    assert np.all(maps["attribution_fullsize"][mask == 0] == 0), "map is zero outside the mask"
    assert np.abs(maps["attribution_fullsize"][mask > 0]).sum() > 0
    record = json.loads((folder / "record.json").read_text())
    assert record["padding"] == {"top": 16, "bottom": 16, "left": 0, "right": 0}


def test_signed_map_is_input_minus_counterfactual(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images[:1], tmp_path / "out", model=str(tiny_sd))
    folder = tmp_path / "out" / "scan0"
    maps = load_file(str(folder / "attribution.safetensors"))["attribution"]
    expected = png(folder / "input.png")[..., 0] - png(folder / "counterfactual.png").mean(axis=-1)
    assert np.abs(maps - expected).max() <= 1 / 255 + 1e-6


def test_manifest_and_report(catalogue, tiny_sd, images, tmp_path):
    result = dva_run(catalogue, images, tmp_path / "out", model=str(tiny_sd))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"done": 3}
    assert {"torch", "diffusers", "transformers", "python"} <= set(manifest["versions"])
    assert manifest["recipe"]["seed"] == 3 and manifest["recipe"]["prior_options"]["strength"] == 0.55
    assert [i["sha256"] for i in manifest["images"]] == [
        __import__("hashlib").sha256(p.read_bytes()).hexdigest() for p in images
    ]
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count('src="scan0/input.png"') == 2 and "normal chest x ray" in report  # the swipe, the map's base
    assert report.count("data-map=\"data:image/png;base64,") == 3, "each map embedded for the threshold slider"
    assert result.report == tmp_path / "out" / "report.html"


def test_dicom_and_16_bit_inputs_run_end_to_end(catalogue, tiny_sd, tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from tests.conftest import chest_like

    pixels = chest_like(64, 4).astype(np.uint16) * 16  # 12-bit range
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = FileDataset(str(tmp_path / "scan.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(tmp_path / "scan.dcm", enforce_file_format=True)
    Image.fromarray(pixels * 16).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    result = dva_run(catalogue, [tmp_path / "scan.dcm", tmp_path / "deep.png"], tmp_path / "out", model=str(tiny_sd))
    assert result.exit_code == 0 and result.count("done") == 2
    no_window = (pixels - pixels.min()) / (pixels.max() - pixels.min())  # DICOM without VOI: full range
    assert np.abs(png(tmp_path / "out" / "scan" / "input.png")[..., 0] - no_window).max() <= 1 / 255
    sixteen_bit = pixels * 16 / 65535.0
    assert np.abs(png(tmp_path / "out" / "deep" / "input.png")[..., 0] - sixteen_bit).max() <= 1 / 255


def test_a_hub_id_that_cannot_be_reached_is_one_clear_error(catalogue, images, tmp_path, monkeypatch):
    from dva.core.errors import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="Cannot load the model hub id 'CompVis/stable-diffusion-v1-4'"):
        dva_run(catalogue, images[:1], tmp_path / "out", model="CompVis/stable-diffusion-v1-4")


def test_the_run_reports_to_one_events_object(catalogue, tiny_sd, images, tmp_path):
    from dva.core.run import RunEvents

    class Recorder(RunEvents):
        def __init__(self) -> None:
            self.seen: list[tuple] = []

        def loaded(self, runtime):
            self.seen.append(("loaded", runtime.resolution))

        def started(self, total):
            self.seen.append(("started", total))

        def image_done(self, job):
            self.seen.append((job.key, job.status))

    recipe = resolve(load_entries(), catalogue, "default", {"steps": STEPS, "seed": 3, "model": str(tiny_sd)})
    inputs = [str(tmp_path / "nowhere.png"), *map(str, images[:2])]
    first, again = Recorder(), Recorder()
    run(recipe, inputs, tmp_path / "out", catalogue, events=first)
    run(recipe, inputs, tmp_path / "out", catalogue, events=again)
    loaded = ("loaded", first.seen[0][1])
    assert first.seen == [loaded, ("started", 3), ("nowhere.png", "failed"), ("scan0", "done"), ("scan1", "done")]
    assert again.seen == [loaded, ("started", 3), ("nowhere.png", "failed"), ("scan0", "skipped"), ("scan1", "skipped")]
