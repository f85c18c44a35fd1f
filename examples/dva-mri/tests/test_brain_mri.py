"""dva-mri, specified: a brain MRI modality and dataset layout added to dva by installing a package.

Synthetic NIfTI volumes are made in each test; models are dva's tiny random ones (no network).
The fixtures ``dva_plugins``, ``dva_install_plugin`` and ``dva_tiny_sd`` come with dva
(``dva.testing.pytest_plugin``); ``dva_mri`` (conftest.py) is this package, installed for the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dva import ConfigError, InputError
from dva.testing.conformance import check_dataset_layout, check_light_import, check_modality, check_plugin

LAS = np.diag([-2.0, 2.0, 3.0, 1.0])  # voxel axes run to the patient's left, anterior, superior


def brain(shape: tuple[int, int, int] = (32, 32, 8), seed: int = 0) -> np.ndarray:
    """A bright ellipsoid 'brain' with some texture on a black background, in scanner-like units."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[tuple(slice(0, n) for n in shape)]
    radius = sum(((axis - (n - 1) / 2) / (0.45 * n)) ** 2 for axis, n in zip(grid, shape))
    texture = 40 * np.sin(grid[0] / 3.0) + rng.normal(0, 5, shape)
    return np.where(radius < 1, 400 + texture, 0).astype(np.float32)


def save(path: Path, volume: np.ndarray, affine: np.ndarray = LAS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def dva(capsys, *args) -> tuple[int, str]:
    from dva.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in args])
    return exited.value.code, capsys.readouterr().err


# -- the plugin and its reader ----------------------------------------------------------------------


def test_the_plugin_conforms_and_its_entry_module_is_light(dva_mri):
    specs = check_plugin(dva_mri)
    assert set(specs["modality"]) == {"brain-mri"} and set(specs["dataset"]) == {"brain-mri-volumes"}
    check_light_import("dva_mri")


def test_dva_plugins_lists_the_installed_modality_with_its_distribution():
    listed = subprocess.run([sys.executable, "-m", "dva", "plugins", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(listed.stdout)
    modalities = {row["name"]: row for row in data["components"]["modality"]}
    assert modalities["brain-mri"]["distribution"] == "dva-mri" and "chest-xray" in modalities
    assert "brain-mri-volumes" in {row["name"] for row in data["components"]["dataset"]}
    assert "dva-mri" not in {row["distribution"] for row in data["broken"]}


def test_slices_are_shown_radiologically_anterior_up_and_the_patients_right_on_the_left(dva_mri, tmp_path):
    volume = brain()
    volume[:4, -4:, :] = 1000  # x low = patient's right (axis runs leftward), y high = anterior
    source = dva_mri.BRAIN_MRI.read(save(tmp_path / "marked.nii.gz", volume), slices="4")
    (image,) = source.images
    assert image.name == "z004" and image.pixels.shape == (32, 32)
    assert image.pixels[:4, :4].min() > 0.99 and image.pixels[-4:, -4:].max() < 0.9


def test_the_modality_round_trips_a_volume_onto_its_own_grid(dva_mri, tmp_path):
    """An unchanged counterfactual, written back, is the input (clipped to the normalisation window in
    the slices taken, untouched elsewhere), with the input's affine: it overlays in any viewer."""
    volume = brain()
    path = save(tmp_path / "sub-01_T1w.nii.gz", volume)
    source = check_modality(dva_mri.BRAIN_MRI, path, tmp_path / "out", slices="2:6")
    context = source.context
    assert [image.name for image in source.images] == ["z002", "z003", "z004", "z005"]
    written = nib.load(tmp_path / "out" / "counterfactual.nii.gz")
    assert written.shape == volume.shape and np.allclose(written.affine, LAS)
    expected = volume.copy()
    expected[:, :, 2:6] = np.clip(volume[:, :, 2:6], context.low, context.high)
    assert np.allclose(written.get_fdata(), expected, atol=1e-3 * context.high)
    assert np.abs(nib.load(tmp_path / "out" / "attribution.nii.gz").get_fdata()).max() == 0


def test_auto_takes_the_slices_with_enough_brain_and_masks_come_from_a_threshold_or_a_file(dva_mri, tmp_path):
    volume = brain()
    path = save(tmp_path / "brain.nii", volume)
    auto = dva_mri.BRAIN_MRI.read(path)
    assert 0 < len(auto.images) < volume.shape[2]
    assert all(image.mask is not None and image.mask.any() for image in auto.images)
    supplied = np.zeros(volume.shape, np.uint8)
    supplied[8:24, 8:24, :] = 1
    masked = dva_mri.BRAIN_MRI.read(path, save(tmp_path / "mask.nii.gz", supplied), slices="3")
    assert masked.images[0].mask.sum() == 16 * 16


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("2-D image", InputError, "is 2-D"),
        ("4-D series", InputError, "is 4-D"),
        ("slice out of range", InputError, "slice 9 is out of range; the volume has 8 axial slices"),
        ("range past the end", InputError, "reach past the volume's 8 axial slices"),
        ("mask of another shape", InputError, "the mask is 32x32x7 but its volume"),
        ("bad slices", ConfigError, "expected auto, an index"),
        ("not NIfTI", InputError, "not a NIfTI file"),
        ("black volume", InputError, "every voxel of the volume is 0"),
    ],
)
def test_bad_volumes_are_one_clear_sentence(dva_mri, tmp_path, case, error, message):
    path, mask, options = tmp_path / "v.nii.gz", None, {}
    if case == "2-D image":
        save(path, brain()[:, :, 0], np.eye(4))
    elif case == "4-D series":
        save(path, np.stack([brain()] * 2, axis=-1))
    elif case == "not NIfTI":
        path = tmp_path / "v.nii"
        path.write_text("A radiology report, not a volume.\n")
    elif case == "black volume":
        save(path, np.zeros((32, 32, 8), np.float32))
    else:
        save(path, brain())
        options = {"slice out of range": {"slices": "2,9"}, "range past the end": {"slices": "4:12"},
                   "bad slices": {"slices": "middle"}}.get(case, {})
        if case == "mask of another shape":
            mask = save(tmp_path / "m.nii.gz", np.ones((32, 32, 7), np.uint8))
    with pytest.raises(error, match=message) as raised:
        dva_mri.BRAIN_MRI.read(path, mask, **options)
    assert "\n" not in str(raised.value)


# -- dva run and dva finetune -----------------------------------------------------------------------


def test_dva_run_picks_brain_mri_by_extension_and_writes_maps_back_as_nifti(
    dva_mri, dva_plugins, dva_tiny_sd, tmp_path, capsys
):
    dva_plugins(dva_mri)
    scans = tmp_path / "scans"
    save(scans / "sub-01.nii.gz", brain())
    out = tmp_path / "out"
    args = ["run", scans, "--model", dva_tiny_sd, "--steps", 2, "--modality-option", "slices=3:5", "--out", out]
    code, err = dva(capsys, *args)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["modality"] == "brain-mri" and manifest["prompt"] == "normal brain mri"
    assert [image["output"] for image in manifest["images"]] == ["sub-01/z003", "sub-01/z004"]
    assert (out / "sub-01" / "z003" / "overlay.png").is_file()
    attribution = nib.load(out / "sub-01" / "attribution.nii.gz")
    assert attribution.shape == (32, 32, 8) and np.allclose(attribution.affine, LAS)
    data = attribution.get_fdata()
    assert np.abs(data[:, :, 3:5]).max() > 0 and np.abs(data[:, :, [0, 1, 2, 5, 6, 7]]).max() == 0
    (out / "sub-01" / "counterfactual.nii.gz").unlink()  # an interrupted run: the volume is written again
    code, _ = dva(capsys, *args)
    assert code == 0 and (out / "sub-01" / "counterfactual.nii.gz").is_file()
    assert json.loads((out / "manifest.json").read_text())["counts"] == {"skipped": 2}


def test_a_folder_of_volumes_is_a_dataset_layout_that_dva_finetune_trains_on(
    dva_mri, dva_plugins, dva_tiny_sd, tmp_path, capsys
):
    dva_plugins(dva_mri)
    data = tmp_path / "data"
    for label, offset in (("Normal", 0), ("Tumour", 10)):
        for index in range(2):
            save(data / label / f"sub-{offset + index:02d}.nii.gz", brain(seed=offset + index))
    dataset = check_dataset_layout(dva_mri.BRAIN_MRI_VOLUMES, data, slices="3:5")
    assert dataset.classes() == ["Normal", "Tumour"] and len(dataset.samples) == 8
    assert all(sample.mask is not None for sample in dataset.samples)
    model = tmp_path / "model"
    code, err = dva(capsys, "finetune", "--model", dva_tiny_sd, "--data", data, "--schedule", "Normal:2,Tumour:1",
                    "--out", model, "--prior-weight", 0, "--device", "cpu", "--batch-size", 1)
    assert code == 0, err
    info = json.loads((model / "dva.json").read_text())
    assert info["classes"] == ["Normal", "Tumour"] and info["data"]["layout"] == "brain-mri-volumes"
