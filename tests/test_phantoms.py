"""Specification of ``dva phantoms``: synthetic chest X-rays with lung masks, lesion masks and located prompts.

- Deterministic: the same seed gives the same bytes; phantom i of a class depends only on
  (seed, class, i), not on n.
- Layout: ``<Class>/{images,masks,lesions}/<Class>-<i>.png`` (8-bit gray, S x S, masks 0/255),
  ``metadata.csv`` (class,file,prompt,zone,lesion_fraction) and ``phantoms.json``.
- Lesions: inside the lung for Lung Opacity, none for Normal; Cardiomegaly's heart is wider
  (cardiothoracic ratio > 0.5 against < 0.5 for Normal).
- The zone in the prompt holds most of the lesion; PA view: the patient's left is the image's right.
- The CLI exits 0, and 2 with one sentence for a bad option.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dva.datasets.phantoms import (
    CLASSES,
    ZONES,
    cardiothoracic_ratio,
    lesion_zone,
    lung_zones,
    make_phantom,
    make_phantoms,
    render_phantom,
)

SIZE = 96


def dva(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit status, stdout, stderr)."""
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    code = exited.value.code
    return (0 if code is None else code), captured.out, captured.err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_phantoms(tmp_path_factory.mktemp("phantoms") / "set", n=3, size=SIZE, seed=5)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_another_seed_differs(dataset, tmp_path):
    again = make_phantoms(tmp_path / "again", n=3, size=SIZE, seed=5)
    assert files(again) == files(dataset)
    other = make_phantoms(tmp_path / "other", n=3, size=SIZE, seed=6)
    name = "Normal/images/Normal-1.png"
    assert files(other)[name] != files(dataset)[name]


def test_phantom_i_does_not_depend_on_n(dataset, tmp_path):
    more = make_phantoms(tmp_path / "more", n=5, size=SIZE, seed=5, classes=["Lung Opacity"])
    for kind in ("images", "masks", "lesions"):
        for index in (1, 2, 3):
            name = f"Lung Opacity/{kind}/Lung Opacity-{index}.png"
            assert (more / name).read_bytes() == (dataset / name).read_bytes()


def test_layout_metadata_and_masks(dataset):
    rows = list(csv.DictReader(open(dataset / "metadata.csv", newline="", encoding="utf-8")))
    assert list(rows[0]) == ["class", "file", "prompt", "zone", "lesion_fraction"]
    assert [row["class"] for row in rows] == [label for label in CLASSES for _ in range(3)]
    for row in rows:
        label, image_path = row["class"], dataset / row["file"]
        assert image_path.parent == dataset / label / "images"
        assert image_path.name.startswith(f"{label}-")
        image = np.asarray(Image.open(image_path))
        lung = np.asarray(Image.open(dataset / label / "masks" / image_path.name))
        lesion = np.asarray(Image.open(dataset / label / "lesions" / image_path.name))
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE) and image.std() > 10
        for mask in (lung, lesion):
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        assert 0.15 < (lung > 0).mean() < 0.6
        assert float(row["lesion_fraction"]) == pytest.approx((lesion > 0).mean(), abs=1e-6)
        if label == "Normal":
            assert row["prompt"] == "normal chest x ray" and row["zone"] == "" and not lesion.any()
        elif label == "Cardiomegaly":
            assert row["prompt"] == "cardiomegaly" and row["zone"] == "" and lesion.any()
        else:
            assert row["zone"] in ZONES and row["prompt"] == f"lung opacity in the {row['zone']} zone"
            assert lesion.any() and not (lesion > 0)[lung == 0].any(), "lesion must lie inside the lung"
    settings = json.loads((dataset / "phantoms.json").read_text())
    assert (settings["n"], settings["size"], settings["seed"], settings["classes"]) == (3, SIZE, 5, list(CLASSES))
    assert settings["version"] and settings["parameter_ranges"]


def test_render_phantom_matches_the_files(dataset):
    image, lung, lesion, prompt, zone = render_phantom("Lung Opacity", 2, SIZE, 5)
    assert np.array_equal(image, np.asarray(Image.open(dataset / "Lung Opacity/images/Lung Opacity-2.png")))
    assert np.array_equal(lung, np.asarray(Image.open(dataset / "Lung Opacity/masks/Lung Opacity-2.png")) > 0)
    assert np.array_equal(lesion, np.asarray(Image.open(dataset / "Lung Opacity/lesions/Lung Opacity-2.png")) > 0)
    assert prompt == f"lung opacity in the {zone} zone"


def test_cardiomegaly_heart_is_wider_than_normal():
    normal = [make_phantom("Normal", i, 128, 1) for i in range(1, 7)]
    enlarged = [make_phantom("Cardiomegaly", i, 128, 1) for i in range(1, 7)]
    assert all(p.ctr < 0.5 for p in normal) and all(p.ctr > 0.5 for p in enlarged)
    # measured on the lung masks alone, as a radiologist would on the film
    assert all(cardiothoracic_ratio(p.lung_mask) < 0.5 for p in normal)
    assert all(cardiothoracic_ratio(p.lung_mask) > 0.5 for p in enlarged)
    # and the lesion is the lung the enlarged heart took: outside the lung mask, beside the heart
    for phantom in enlarged:
        assert phantom.lesion_mask.any() and not (phantom.lesion_mask & phantom.lung_mask).any()


def test_zone_in_the_prompt_holds_most_of_the_lesion_left_is_image_right():
    size = 128
    seen = set()
    for index in range(1, 19):
        phantom = make_phantom("Lung Opacity", index, size, 2)
        zone = phantom.zone
        seen.add(zone.split()[0])
        zones = lung_zones(phantom.lung_mask)[phantom.lesion_mask]
        counts = np.bincount(zones[zones >= 0], minlength=len(ZONES))
        assert ZONES[int(counts.argmax())] == zone == lesion_zone(phantom.lesion_mask, phantom.lung_mask)
        # independently of lung_zones: the side from the lungs' midline (patient's left = image right),
        # upper/middle/lower from thirds of that lung's rows
        columns = np.flatnonzero(phantom.lung_mask.any(axis=0))
        midline = (columns.min() + columns.max()) / 2
        histogram = {}
        for side in ("right", "left"):
            on_side = ((np.arange(size) > midline) == (side == "left"))[None, :]
            lung_rows = np.flatnonzero((phantom.lung_mask & on_side).any(axis=1))
            rows = np.nonzero(phantom.lesion_mask & on_side)[0]
            thirds = np.clip((rows - lung_rows[0]) * 3 // (lung_rows[-1] - lung_rows[0] + 1), 0, 2)
            for third, name in enumerate(("upper", "middle", "lower")):
                histogram[f"{side} {name}"] = int((thirds == third).sum())
        assert max(histogram, key=histogram.get) == zone, f"phantom {index}: {zone} but {histogram}"
    assert seen == {"left", "right"}


def test_lung_zones_left_lung_is_on_the_image_right():
    phantom = make_phantom("Normal", 1, 128, 0)
    zones = lung_zones(phantom.lung_mask)
    columns = np.arange(128)[None, :].repeat(128, axis=0)
    assert columns[zones >= 3].mean() > 64 > columns[(zones >= 0) & (zones < 3)].mean()
    assert ((zones >= 0) == phantom.lung_mask).all()


def test_cli_writes_the_dataset(capsys, tmp_path):
    out = tmp_path / "cli"
    args = ["--n", 2, "--size", 64, "--seed", 3, "--classes", "Normal,lung_opacity"]
    code, stdout, _ = dva(capsys, "phantoms", "--out", out, *args)
    assert code == 0
    assert "Normal" in stdout and "Lung Opacity" in stdout and "metadata.csv" in stdout
    rows = list(csv.DictReader(open(out / "metadata.csv", newline="", encoding="utf-8")))
    assert [row["class"] for row in rows] == ["Normal", "Normal", "Lung Opacity", "Lung Opacity"]
    # a rerun with fewer phantoms replaces the set: no stale files of the earlier run remain
    code, _, _ = dva(capsys, "phantoms", "--out", out, "--n", 1, "--size", 64, "--seed", 3, "--classes", "Normal")
    assert code == 0
    assert sorted(p.name for p in out.rglob("*.png")) == ["Normal-1.png"] * 3


@pytest.mark.parametrize(
    "args, words",
    [
        (["--n", "0"], "--n"),
        (["--size", "16"], "--size"),
        (["--size", "4096"], "--size"),
        (["--classes", "Normal,Pneumonia"], "Pneumonia"),
    ],
)
def test_cli_bad_options_exit_2(capsys, tmp_path, args, words):
    code, _, stderr = dva(capsys, "phantoms", "--out", tmp_path / "bad", *args)
    assert code == 2
    assert "Error:" in stderr and words in stderr and "Traceback" not in stderr
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_a_folder_that_is_not_a_phantom_set(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, stderr = dva(capsys, "phantoms", "--out", tmp_path, "--n", 1, "--size", 32)
    assert code == 2 and "phantoms.json" in stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"
