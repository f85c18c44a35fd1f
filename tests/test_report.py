"""Specification of report.html: a page that opens from the file system and shows each image's maps on their scale.

The run's outputs are made here by hand (PNGs and attribution.safetensors as dva run writes them), so these
tests need no model. The last test opens the page in headless Chromium when it is installed.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from dva.core import attribution
from dva.core.calibration import HEATMAP_SCALE
from dva.core.report import write_report

HEADER = {"recipe": {"prior": "sdedit", "prior_options": {"strength": 0.55}, "steps": 75, "guidance_scale": 4.0,
                     "reference": "input", "seed": 3}, "encoder": {"name": "radbert"}, "unet_calls": 41, "unet_evaluations": 82,
          "calibration": {"calibrated": True, "images": 50}, "prompt": "normal chest x ray"}


def write_image_outputs(folder: Path, seed: int, calibrated: bool = False, signed: bool = False) -> float:
    """One image's outputs as dva run writes them (model-size PNGs, the map's tensors); returns the map's scale."""
    rng = np.random.default_rng(seed)
    image = rng.random((32, 32)).astype(np.float32)
    counterfactual = np.clip(image - 0.3 * (rng.random((32, 32)) > 0.8), 0, 1).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[4:28, 4:28] = True
    signed_map = attribution.attribution_map(image, counterfactual, mask)
    scale = attribution.map_scale(signed_map, mask)
    folder.mkdir(parents=True)
    pngs = {"input.png": image, "counterfactual.png": counterfactual,
            "attribution.png": attribution.heatmap(signed_map, scale)}
    tensors = {"attribution": signed_map, "mask": mask.astype(np.uint8)}
    if calibrated:
        tensors["calibrated"] = (np.abs(signed_map) * 20).astype(np.float32)
        pngs["calibrated.png"] = attribution.heatmap(tensors["calibrated"], HEATMAP_SCALE)
    if signed:
        pngs["signed.png"] = np.repeat(image[..., None], 3, axis=-1)  # stands in for the signed heatmap
    for name, values in pngs.items():
        Image.fromarray((np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)).save(folder / name)
    save_file(tensors, str(folder / "attribution.safetensors"), metadata={"heatmap_scale": f"{scale:.6g}"})
    return scale


@pytest.fixture
def run_folder(tmp_path) -> tuple[Path, list[dict]]:
    """A run of three images (names with spaces, as phantoms have) and one failed input."""
    out = tmp_path / "out"
    images = [
        {"output": "Normal-1", "status": "done", "score": 1.5, "original_size": [64, 48], "seconds": 2.0},
        {"output": "Lung Opacity-7", "status": "done", "score": 8.25, "warnings": ["no mask named like this input"]},
        {"output": "Cardiomegaly-1", "status": "skipped", "score": 3.0},
        {"output": "broken", "input": "in/broken.png", "status": "failed",
         "error": "in/broken.png cannot be read: not an image."},
    ]
    for seed, image in enumerate(images[:3]):
        write_image_outputs(out / image["output"], seed, calibrated=seed == 1, signed=seed == 1)
    return out, images


def page_of(out: Path, images: list[dict], header: dict = HEADER) -> str:
    return write_report(out, header, images).read_text(encoding="utf-8")


def test_the_page_is_self_contained_and_its_images_are_the_run_files(run_folder):
    out, images = run_folder
    page = page_of(out, images)
    assert not re.search(r"https?://", page), "no network: no http(s) address anywhere"
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page), "style and script are inline"
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(not s.startswith(("/", "data:", "file:")) for s in sources), "images by relative path"
    assert all((out / unquote(s)).is_file() for s in sources)
    assert 'src="Lung%20Opacity-7/counterfactual.png"' in page, "names with spaces are percent-encoded"


def test_each_map_has_a_colour_bar_on_its_own_scale_with_units(run_folder):
    out, images = run_folder
    scale = float(_metadata(out / "Normal-1")["heatmap_scale"])
    page = page_of(out, images)
    card = _card(page, "Normal-1")
    assert card.count('class="bar thresholded"') == 1, "one thresholded map: no calibrated map for this image"
    assert f"<span>{scale:.3g}</span>" in card and "<span>0</span>" in card, "the bar runs from 0 to full colour"
    assert "grey levels (0 = black, 1 = white)" in card
    calibrated = _card(page, "Lung Opacity-7")
    assert calibrated.count('class="bar thresholded"') == 2 and f"<span>{HEATMAP_SCALE:.3g}</span>" in calibrated
    assert "healthy standard deviations beyond what healthy scans show" in calibrated


def test_the_page_paints_a_map_with_the_colours_of_its_png(run_folder):
    """The slider repaints each map from an embedded grey map through the page's colour table: at threshold 0
    that gives attribution.png's own pixels."""
    out, images = run_folder
    page = page_of(out, images)
    table = np.array(json.loads(re.search(r'const DVA_COLOUR_MAPS = \{"heat": (\[.*?\]\])\}', page).group(1)))
    grey = re.search(r'data-map="data:image/png;base64,([^"]+)"', _card(page, "Normal-1")).group(1)
    levels = np.asarray(Image.open(io.BytesIO(base64.b64decode(grey))))
    painted = table[levels]
    on_disk = np.asarray(Image.open(out / "Normal-1" / "attribution.png").convert("RGB"))
    assert np.array_equal(painted, on_disk.astype(int))


def test_the_header_says_the_runs_settings_and_each_card_its_numbers(run_folder):
    out, images = run_folder
    page = page_of(out, images)
    header = page.split('<main class="cards"')[0]
    for said in ("prior <b>sdedit (strength 0.55)</b>", "steps <b>75 (82 UNet evaluations per image)</b>", "guidance <b>4.0</b>",
                 "encoder <b>radbert</b>", "reference <b>input</b>", "calibration <b>against 50 healthy scans</b>"):
        assert said in header
    card = _card(page, "Normal-1")
    assert '<span class="score">score 1.5</span>' in card and "mean |map| in mask" in card
    assert "size <b>48×64 px</b>" in card, "width × height"
    assert "no mask named like this input" in _card(page, "Lung Opacity-7")


def test_the_page_has_a_threshold_slider_a_swipe_and_a_sort_by_score(run_folder):
    out, images = run_folder
    page = page_of(out, images)
    assert 'id="threshold"' in page and "dvaThreshold()" in page
    assert page.count('class="swipe"') == 3 and "dvaSwipe(this)" in page and "dvaBlink(this)" in page
    assert "dvaSort(this)" in page and 'data-order="1" data-score="8.25"' in page
    orders = [int(i) for i in re.findall(r'<article class="card" data-order="(\d+)"', page)]
    assert orders == [0, 1, 2], "input order until the reader sorts"


def test_signed_and_calibrated_maps_are_shown_when_the_run_wrote_them(run_folder):
    out, images = run_folder
    page = page_of(out, images)
    with_them = _card(page, "Lung Opacity-7")
    assert 'src="Lung%20Opacity-7/signed.png"' in with_them and "red: brighter than the counterfactual" in with_them
    assert "calibrated.png" in with_them
    without = _card(page, "Normal-1")
    assert "signed.png" not in without and "calibrated.png" not in without


def test_failed_inputs_are_listed_with_their_reason(run_folder):
    out, images = run_folder
    page = page_of(out, images)
    assert "<b>broken</b>: in/broken.png cannot be read: not an image." in page.split("Failed inputs")[1]


def test_a_folder_without_map_tensors_still_shows_its_pngs(tmp_path):
    folder = tmp_path / "scan"
    write_image_outputs(folder, 0)
    (folder / "attribution.safetensors").unlink()
    page = page_of(tmp_path, [{"output": "scan", "status": "done"}], {"recipe": {}})
    assert 'src="scan/attribution.png"' in page and "data-map=" not in page


def test_chromium_opens_the_page_without_errors_overflow_or_broken_images(run_folder):
    from dva.testing.check_report import check_page, find_browser, inspect

    browser = find_browser()
    if browser is None:
        pytest.skip("chromium is not installed")
    out, images = run_folder
    page = write_report(out, HEADER, images)
    assert check_page(page, browser=browser, widths=(800,)) == []
    found = inspect(browser, page, 1920)
    assert found["canvases"] == 4 and found["unpainted"] == 0 and found["scrollWidth"] <= found["innerWidth"]
    assert [float(s) for s in found["sorted"]] == [8.25, 3.0, 1.5], "the sort button orders the cards by score"


def test_check_report_without_chromium_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from dva.testing import check_report

    monkeypatch.setattr(check_report.shutil, "which", lambda name: None)
    assert check_report.main(["--page", str(tmp_path / "report.html")]) == 2
    assert "apt-get install -y chromium" in capsys.readouterr().err


def _card(page: str, name: str) -> str:
    start = page.index(f"<h2>{name}</h2>")
    return page[page.rindex("<article", 0, start):page.index("</article>", start)]


def _metadata(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "attribution.safetensors"), framework="numpy") as tensors:
        return tensors.metadata()

