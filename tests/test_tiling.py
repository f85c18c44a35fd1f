"""--tile: full-resolution counterfactuals from overlapping model-sized tiles blended at every step (MultiDiffusion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from dva.core.errors import ConfigError
from dva.core.tiles import Tiling, parse_tile, tiling_for, working_side

from tests.conftest import chest_like, runner

dva_run = runner(steps=6, seed=5)


def saved(folder, name, pixels) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return path


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


@pytest.fixture
def large(tmp_path):
    """A 100x128 (height x width) chest-like input, twice the tiny model's 64 px on its long side."""
    return saved(tmp_path / "inputs", "wide", chest_like(128, 2)[14:114])


@pytest.fixture(scope="module")
def tiny_controlnet_folder(tmp_path_factory):
    from dva.testing.tiny import tiny_controlnet

    folder = tmp_path_factory.mktemp("controlnet") / "canny"
    tiny_controlnet(32).save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_tiled_run_writes_the_counterfactual_and_map_at_the_inputs_own_size(catalogue, tiny_sd, large, tmp_path):
    dva_run(catalogue, [large], tmp_path / "out", model=str(tiny_sd), tile="auto")
    folder = tmp_path / "out" / "wide"
    assert png(folder / "counterfactual.png").shape[:2] == (128, 128), "worked at the long side, padded square"
    assert png(folder / "fullsize" / "counterfactual.png").shape[:2] == (100, 128)
    assert load_file(str(folder / "attribution.safetensors"))["attribution"].shape == (128, 128)
    recipe = json.loads((tmp_path / "out" / "manifest.json").read_text())["recipe"]
    assert (recipe["tile"], recipe["tile_overlap"]) == ("auto", 0.5)


def test_a_side_off_the_latent_grid_is_padded_up_to_it_so_the_model_sees_the_scans_own_pixels(catalogue, tiny_sd,
                                                                                                tmp_path):
    pixels = chest_like(128, 3)[14:113, :125]  # 99 x 125: the long side is on no latent grid but 1's
    dva_run(catalogue, [saved(tmp_path / "inputs", "odd", pixels)], tmp_path / "out", model=str(tiny_sd), tile="auto")
    seen = png(tmp_path / "out" / "odd" / "input.png")
    side = seen.shape[0]
    assert side > 125 and side % 2 == 0
    top, left = (side - 99) // 2, (side - 125) // 2
    np.testing.assert_array_equal(seen[top:top + 99, left:left + 125], pixels)  # padded, not resampled


@pytest.mark.parametrize("prior, settings", [
    ("sdedit", {"scheduler": "euler"}),
    ("sdedit", {"scheduler": "dpm-solver++", "reference": "reconstruction"}),
    ("ddim-inversion", {"reference": "reconstruction"}),
])
def test_one_tile_covering_the_image_is_the_untiled_run(catalogue, tiny_sd, images, tmp_path, prior, settings):
    for tile in ("off", "auto"):
        dva_run(catalogue, images[:1], tmp_path / tile, model=str(tiny_sd), prior=prior, tile=tile, **settings)
    untiled, tiled = load_file(str(tmp_path / "off/scan0/attribution.safetensors")), load_file(
        str(tmp_path / "auto/scan0/attribution.safetensors"))
    assert np.abs(untiled["attribution"] - tiled["attribution"]).max() <= 1e-4, "equal to float rounding"


def test_controlnet_tiles_too_and_one_tile_is_the_untiled_run(catalogue, tiny_sd, images, large, tmp_path,
                                                              tiny_controlnet_folder):
    options = {"prior": "controlnet-canny", "prior_options": {"controlnet": str(tiny_controlnet_folder)}}
    for tile in ("off", "auto"):
        dva_run(catalogue, images[:1], tmp_path / tile, model=str(tiny_sd), tile=tile, **options)
    assert np.array_equal(png(tmp_path / "off/scan0/counterfactual.png"), png(tmp_path / "auto/scan0/counterfactual.png"))
    dva_run(catalogue, [large], tmp_path / "large", model=str(tiny_sd), tile="auto", **options)
    assert png(tmp_path / "large/wide/counterfactual.png").shape[:2] == (128, 128)


class TilePositionUNet:
    """A stand-in UNet whose prediction is each cell's column within its tile (0 at a tile's left, ~1 at its right):
    the worst case for seams, where every tile disagrees with its neighbour at their border."""

    dtype = torch.float32

    def __call__(self, tiles, t, encoder_hidden_states, return_dict=False):
        ramp = torch.arange(tiles.shape[-1], dtype=torch.float32) / tiles.shape[-1]
        return (ramp.expand(tiles.shape).clone(),)


def blended_prediction(overlap: float) -> torch.Tensor:
    from dva.components.tiling import TiledUNet

    tiled = TiledUNet(TilePositionUNet(), Tiling(16, overlap, 3, 1))
    latents = torch.zeros(1, 4, 16, 64)
    return tiled(latents, 10, torch.zeros(1, 2, 8), None, 1.0)[0, 0, 0]


def test_blending_at_every_step_leaves_no_jump_where_tiles_meet():
    alone, blended = blended_prediction(0.0), blended_prediction(0.5)
    assert torch.diff(alone).abs().max() > 0.9, "tiles side by side jump from ~1 to 0 at their border"
    assert torch.diff(blended).abs().max() < 0.2, "overlapping tiles blend into a continuous prediction"


def test_the_tile_batch_does_not_change_the_result(catalogue, tiny_sd, large, tmp_path):
    dva_run(catalogue, [large], tmp_path / "one", model=str(tiny_sd), tile="auto", batch_size=1)
    dva_run(catalogue, [large], tmp_path / "many", model=str(tiny_sd), tile="auto", batch_size=7)
    one, many = (load_file(str(tmp_path / name / "wide/attribution.safetensors"))["attribution"] for name in ("one", "many"))
    assert np.abs(one - many).max() <= 1 / 255


def test_an_input_smaller_than_a_tile_runs_in_one_pass_with_a_note(catalogue, tiny_sd, tmp_path):
    small = saved(tmp_path / "inputs", "small", chest_like(48, 1))
    result = dva_run(catalogue, [small], tmp_path / "out", model=str(tiny_sd), tile="auto")
    assert png(tmp_path / "out/small/counterfactual.png").shape[:2] == (64, 64)
    assert png(tmp_path / "out/small/fullsize/counterfactual.png").shape[:2] == (48, 48)
    assert any("smaller than one 64-px tile" in warning for warning in result.jobs[0].warnings)


def test_tile_values_are_read_or_refused_in_one_sentence():
    assert (parse_tile("off"), parse_tile("auto"), parse_tile("96")) == (None, 0, 96)
    for bad in ("big", "4"):
        with pytest.raises(ConfigError, match="--tile"):
            parse_tile(bad)


def test_a_tile_off_the_models_grid_and_a_prior_without_tiles_are_refused():
    class Recipe:
        prior, tile, tile_overlap, batch_size = "sdedit", "30", 0.5, 1

    class Tiled:
        supports_tiling = True

        def tile_grid(self):
            return 2, 4

    with pytest.raises(ConfigError, match="multiple of 4 px"):
        tiling_for(Recipe, Tiled(), 64)
    Recipe.prior, Recipe.tile = "someone-elses", "auto"
    with pytest.raises(ConfigError, match="cannot denoise in tiles"):
        tiling_for(Recipe, object(), 64)
    assert tiling_for(Recipe, Tiled(), 64) == Tiling(64, 0.5, 1, 2)


def test_the_working_side_is_the_long_side_on_the_latent_grid():
    tiling = Tiling(64, 0.5, 1, 8)
    assert working_side((2000, 2500), tiling, 64) == (2504, None)
    assert working_side((2000, 2500), None, 512) == (512, None)
    assert working_side((40, 30), tiling, 64)[0] == 64
