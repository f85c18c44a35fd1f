"""Signed maps and high-bit-depth counterfactuals: what dva run writes beside the |map| heatmap and the 8-bit PNGs.

- ``signed.png``: the signed map ``input - counterfactual`` on the |map| heatmap's scale, centred on zero: red
  where the input is brighter than its counterfactual, blue where darker, white where equal; the scale is in
  ``record.json`` and in ``attribution.safetensors``' metadata.
- ``fullsize/counterfactual-16bit.png``: for an input above 8 bits, the counterfactual on the input's own scale.
- ``--fullsize``: which images are also written at the input's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from dva.core import io
from dva.core.errors import ConfigError
from dva.core.run import Generated, ImageJob
from dva.core.run.write import write_outputs

from tests.conftest import chest_like, runner

dva_run = runner(steps=2, seed=0)


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int32)


def known_map_job(size: int = 32) -> tuple[ImageJob, Generated]:
    """An image whose counterfactual is darker in the top-left quarter (map +0.4), brighter in the bottom-right
    quarter (map -0.4) and equal elsewhere; at the model's size (no padding)."""
    image = np.full((size, size), 0.5, np.float32)
    counterfactual = image.copy()
    half = size // 2
    counterfactual[:half, :half] = 0.1
    counterfactual[half:, half:] = 0.9
    job = ImageJob(Path("known.png"), "known", original_size=(size, size), padding=io.Padding(0, 0, 0, 0),
                   model_image=image)
    return job, Generated(np.repeat(counterfactual[..., None], 3, axis=-1))


def test_signed_png_is_red_where_the_input_is_brighter_blue_where_darker_white_where_equal(tmp_path):
    job, generated = known_map_job()
    written = write_outputs(tmp_path, job, generated)
    assert "signed.png" in written
    signed = rgb(tmp_path / "signed.png")
    brighter, darker = signed[4, 4], signed[-4, -4]
    unchanged = signed[4, -4]
    assert brighter[0] > max(brighter[1], brighter[2]) + 60, f"the input brighter than the counterfactual is red: {brighter}"
    assert darker[2] > max(darker[0], darker[1]) + 40, f"the input darker than the counterfactual is blue: {darker}"
    assert unchanged.min() > 230, f"no difference is white: {unchanged}"
    assert signed[4, 4].tolist() == signed[10, 10].tolist(), "one colour for one value"


def test_the_signed_map_uses_the_heatmaps_scale_which_is_recorded(tmp_path):
    job, generated = known_map_job()
    write_outputs(tmp_path, job, generated)
    with safe_open(str(tmp_path / "attribution.safetensors"), "numpy") as maps:
        metadata = maps.metadata()
    scale = float(metadata["heatmap_scale"])
    assert scale == pytest.approx(0.4, abs=1e-6), "|map| is 0.4 wherever it is not zero: full colour at 0.4"
    assert "RdBu" in metadata["signed_heatmap"] and "red" in metadata["signed_heatmap"]
    # full colour at +-scale: both ends of the diverging colormap, as the |map| heatmap is at its top colour
    from dva.core.attribution import HEATMAP_COLORMAP, SIGNED_COLORMAP, colour_table

    assert rgb(tmp_path / "signed.png")[4, 4].tolist() == colour_table(SIGNED_COLORMAP)[-1].tolist()
    assert rgb(tmp_path / "signed.png")[-4, -4].tolist() == colour_table(SIGNED_COLORMAP)[0].tolist()
    assert rgb(tmp_path / "attribution.png")[-4, -4].tolist() == colour_table(HEATMAP_COLORMAP)[-1].tolist()


def test_a_run_records_the_scale_and_writes_full_size_images_only_on_request(catalogue, tiny_sd, images, tmp_path):
    dva_run(catalogue, images[:1], tmp_path / "default", model=str(tiny_sd))
    dva_run(catalogue, images[:1], tmp_path / "all", model=str(tiny_sd), fullsize="all")
    record = json.loads((tmp_path / "default" / "scan0" / "record.json").read_text())
    with safe_open(str(tmp_path / "default" / "scan0" / "attribution.safetensors"), "numpy") as maps:
        assert record["heatmap_scale"] == pytest.approx(float(maps.metadata()["heatmap_scale"]))
        assert "attribution_fullsize" in maps.keys(), "the full-size map is always there, as floats"
    assert {"signed.png", "attribution.png", "fullsize/counterfactual.png"} <= set(record["files"])
    assert not any(name.startswith("fullsize/") and name != "fullsize/counterfactual.png" for name in record["files"])
    everything = json.loads((tmp_path / "all" / "scan0" / "record.json").read_text())["files"]
    assert {"fullsize/signed.png", "fullsize/attribution.png", "fullsize/overlay.png"} <= set(everything)
    default_cf = tmp_path / "default" / "scan0" / "fullsize" / "counterfactual.png"
    assert default_cf.read_bytes() == (tmp_path / "all" / "scan0" / "fullsize" / "counterfactual.png").read_bytes()


def test_fullsize_takes_counterfactual_or_all_and_refuses_anything_else(catalogue):
    from dva.core.registry import load_entries, resolve

    assert resolve(load_entries(), catalogue, "default", {"fullsize": "all"}).fullsize == "all"
    with pytest.raises(ConfigError, match="must be one of: counterfactual, all"):
        resolve(load_entries(), catalogue, "default", {"fullsize": "maps"})


def write_12_bit(path: Path, size: int = 64) -> np.ndarray:
    """A 12-bit scan stored in a 16-bit PNG without sBIT (dva detects 12 bits from its values)."""
    values = (chest_like(size, 3).astype(np.float64) / 255.0 * 4000.0 + 50.0).round().astype(np.uint16)
    values[0, 0] = 4095  # the full 12-bit range
    Image.fromarray(values).save(path)
    return values


def test_an_input_above_8_bits_gets_a_16_bit_counterfactual_on_its_own_scale(sim_accelerator, tiny_sd, tmp_path):
    """With a perfect counterfactual (the simulated accelerator returns its input) the 16-bit counterfactual gives
    the input's values back within one unit, at the input's size."""
    (tmp_path / "in").mkdir()
    deep = write_12_bit(tmp_path / "in" / "deep.png")
    Image.fromarray(chest_like(64, 4)).save(tmp_path / "in" / "plain.png")
    result = dva_run(sim_accelerator.catalogue, [tmp_path / "in"], tmp_path / "out", model=str(tiny_sd),
                     prior="sim-accelerator", prior_options={"delay": 0.0})
    assert result.exit_code == 0
    path = tmp_path / "out" / "deep" / "fullsize" / "counterfactual-16bit.png"
    with Image.open(path) as image:
        assert image.mode.startswith("I;16") and image.size == (64, 64)
        saved = np.asarray(image)
    assert saved.dtype == np.uint16
    assert np.abs(saved.astype(np.int32) - deep.astype(np.int32)).max() <= 1
    assert io.png_significant_bits(path.read_bytes()) is None, "no sBIT: PNG would want samples scaled under one"
    assert io.read_scan(path).bit_depth == 12, "dva reads it back on the same scale, as it read the input"
    record = json.loads((tmp_path / "out" / "deep" / "record.json").read_text())
    assert "fullsize/counterfactual-16bit.png" in record["checksums"] and record["bit_depth"] == 12
    assert not (tmp_path / "out" / "plain" / "fullsize" / "counterfactual-16bit.png").exists(), "8-bit: none"
