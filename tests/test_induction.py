"""Located induction: a prior's ``region`` (a lung zone or a mask image) limits what may change (blended latent
diffusion), on the bundled tiny model and phantoms with their lung masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dva.core.errors import ConfigError

from tests.conftest import runner

STEPS = 8
PROMPT = "lung opacity in the left upper zone"
dva_run = runner(steps=STEPS, seed=5, guidance_scale=4.0, prompt=PROMPT, device="cpu")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A Normal phantom at 64 px and its lung mask."""
    from dva.datasets.phantoms import make_phantoms

    data = make_phantoms(tmp_path_factory.mktemp("phantoms") / "set", 1, 64, seed=5, classes=("Normal",))
    image = next((data / "Normal" / "images").glob("*.png"))
    return image, data / "Normal" / "masks" / image.name


def gray(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=-1) / 255.0


def vae_round_trip(image: np.ndarray) -> np.ndarray:
    """The bundled model's VAE reconstruction (the posterior's mode) of a gray image."""
    from diffusers import AutoencoderKL

    from dva.core.model_folder import bundled_model

    vae = AutoencoderKL.from_pretrained(str(bundled_model()), subfolder="vae")
    with torch.no_grad():
        x = torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1) * 2 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return (decoded.clamp(-1, 1)[0].mean(0).numpy() + 1) / 2


def far_outside(region: np.ndarray, margin: int = 8) -> np.ndarray:
    """Pixels at least ``margin`` away from every latent cell (4 px) the region touches: out of the decoder's reach."""
    cells = np.kron(region.reshape(16, 4, 16, 4).any(axis=(1, 3)), np.ones((4, 4), bool))
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(cells).float()[None, None], 2 * margin + 1, 1, margin)
    return grown[0, 0].numpy() == 0


@pytest.mark.parametrize("prior,strength", [("sdedit", 0.7), ("ddim-inversion", 0.6)])
def test_a_zone_region_changes_only_that_zone(catalogue, phantom, tmp_path, prior, strength):
    """Outside the zone the counterfactual is the input's VAE reconstruction, up to the decoder's group norms
    (image-wide statistics, so a changed zone moves every pixel a little): outside, a mean change of at most 0.02
    and a largest of 0.06, against the VAE round trip's own mean change of the input (about 0.03 on phantoms);
    the zone itself changes far more (about 0.17 here)."""
    from dva.datasets.phantoms import ZONES, lung_zones

    image, lungs = phantom
    dva_run(catalogue, [image], tmp_path / "out", prior=prior, strength=strength, region="left-upper", mask=str(lungs))
    counterfactual = gray(tmp_path / "out" / image.stem / "counterfactual.png")
    source = gray(tmp_path / "out" / image.stem / "input.png")
    zone = lung_zones(gray(lungs) > 0.5) == ZONES.index("left upper")
    outside = far_outside(zone)
    assert outside.mean() > 0.3
    reconstruction = vae_round_trip(source)
    change = np.abs(counterfactual - reconstruction)
    assert change[outside].mean() <= 0.02 and change[outside].max() <= 0.06
    assert change[zone].mean() > 5 * change[outside].mean()


def test_without_a_region_the_outputs_are_unchanged(catalogue, phantom, tmp_path):
    image, lungs = phantom
    dva_run(catalogue, [image], tmp_path / "plain", prior="sdedit", strength=0.7)
    dva_run(catalogue, [image], tmp_path / "empty", prior="sdedit", strength=0.7, prior_options={"region": ""})
    for name in ("counterfactual.png", "attribution.safetensors"):
        assert (tmp_path / "plain" / image.stem / name).read_bytes() == (tmp_path / "empty" / image.stem / name).read_bytes()


def test_a_mask_image_region(catalogue, phantom, tmp_path):
    image, _ = phantom
    region = np.zeros((64, 64), np.uint8)
    region[8:24, 36:52] = 255
    Image.fromarray(region).save(tmp_path / "region.png")
    dva_run(catalogue, [image], tmp_path / "out", prior="sdedit", strength=0.7, region=str(tmp_path / "region.png"))
    counterfactual = gray(tmp_path / "out" / image.stem / "counterfactual.png")
    reconstruction = vae_round_trip(gray(tmp_path / "out" / image.stem / "input.png"))
    change = np.abs(counterfactual - reconstruction)
    assert change[far_outside(region > 0)].mean() <= 0.02 and change[far_outside(region > 0)].max() <= 0.06


def test_a_bad_zone_name_says_which_was_meant(catalogue, phantom, tmp_path):
    image, lungs = phantom
    with pytest.raises(ConfigError, match=r"region 'left uper' is neither a lung zone nor a mask image file; did you "
                                          r"mean 'left upper'\?$"):
        dva_run(catalogue, [image], tmp_path / "out", region="left uper", mask=str(lungs))


def test_a_zone_needs_the_lung_mask_before_the_run_starts(catalogue, phantom, tmp_path):
    image, _ = phantom
    with pytest.raises(ConfigError, match=r"--region 'left upper' is a lung zone .*, which needs --mask"):
        dva_run(catalogue, [image], tmp_path / "out", region="left upper")
    assert not (tmp_path / "out").exists(), "refused before the output folder is made or a model loads"


def test_mask_images_of_another_size_or_empty_are_refused(catalogue, phantom, tmp_path):
    image, _ = phantom
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ConfigError, match="is 32x32 px but the model works at 64x64 px"):
        dva_run(catalogue, [image], tmp_path / "a", region=str(tmp_path / "small.png"))
    with pytest.raises(ConfigError, match="is empty"):
        dva_run(catalogue, [image], tmp_path / "b", region=str(tmp_path / "empty.png"))


def test_with_a_zone_region_an_input_without_its_mask_fails_alone(catalogue, phantom, tmp_path):
    import shutil

    image, lungs = phantom
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(lungs, masks / image.name)
    other = tmp_path / "other.png"
    shutil.copy(image, other)  # no mask of its name in the folder
    result = dva_run(catalogue, [image, other], tmp_path / "out", region="left upper", mask=str(masks))
    statuses = {job.path.name: (job.status, job.error) for job in result.jobs}
    assert statuses[image.name][0] == "done"
    assert statuses["other.png"][0] == "failed" and "has no mask for this input" in statuses["other.png"][1]
