"""Dataset layouts (COVID-19 Radiography, class folders, CSV/CheXpert), detection, checks and fingerprint."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dva.core.errors import ConfigError
from dva.datasets import LabelledDataset, Sample
from dva.datasets.layouts import check_dataset, dataset_fingerprint, open_dataset

COVID_CLASSES = ["COVID", "Lung Opacity", "Normal", "Viral Pneumonia"]


def png(path: Path, value: int = 128, size: int = 32) -> Path:
    """A tiny 8-bit grayscale PNG; ``value`` makes its bytes (and hash) differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size), value, dtype=np.uint8)
    pixels[0, 0] = 255 - value
    Image.fromarray(pixels).save(path)
    return path


def dicom(path: Path) -> Path:
    """A tiny uncompressed 12-bit DICOM."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = Dataset()
    data.file_meta = meta
    data.SOPClassUID, data.SOPInstanceUID, data.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "DX"
    values = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (32, 1))
    data.Rows, data.Columns = values.shape
    data.SamplesPerPixel, data.PhotometricInterpretation = 1, "MONOCHROME2"
    data.BitsAllocated, data.BitsStored, data.HighBit, data.PixelRepresentation = 16, 12, 11, 0
    data.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save_as(path, enforce_file_format=True)
    return path


def one_line(error: pytest.ExceptionInfo, *names: str) -> str:
    """The error's message: one line, ending in a full stop, naming each of ``names``."""
    message = str(error.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.endswith("."), message
    for name in names:
        assert str(name) in message, f"{name!r} not in {message!r}"
    return message


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def covid(tmp_path) -> Path:
    """COVID-19 Radiography Database layout: 2 images per class, masks except for one, lesions for COVID."""
    root = tmp_path / "COVID-19_Radiography_Dataset"
    value = 10
    for label in COVID_CLASSES:
        for index in (2, 1):  # written out of order on purpose
            name = f"{label}-{index}.png"
            png(root / label / "images" / name, value)
            if name != "Normal-2.png":
                png(root / label / "masks" / name, 255)
            if label == "COVID":
                png(root / label / "lesions" / name, 0)
            value += 10
    return root


@pytest.fixture
def phantoms(tmp_path) -> Path:
    """What ``dva phantoms`` writes: images, masks, lesions and metadata.csv with per-image prompts."""
    root = tmp_path / "phantoms"
    rows = []
    for label, prompt in (("Normal", "normal chest x ray"), ("COVID", "chest x ray with covid opacity")):
        for index in range(2):
            name = f"{label}-{index}.png"
            for folder in ("images", "masks", "lesions"):
                png(root / label / folder / name, 40 + index + 60 * (label == "COVID"))
            rows.append([label, f"{label}/images/{name}", f"{prompt} {index}", "upper left", "0.12"])
    write_csv(root / "metadata.csv", ["class", "file", "prompt", "zone", "lesion_fraction"], rows)
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    root = tmp_path / "folders"
    png(root / "normal" / "b.png", 10)
    png(root / "normal" / "a.jpg", 20)
    png(root / "normal" / "masks" / "a.png", 255)  # a mask, matched by stem, never a sample
    png(root / "normal" / "masks" / "nested" / "c.png", 255)
    png(root / "normal" / "nested" / "c.png", 30)
    png(root / "pneumonia" / "x.png", 40)
    dicom(root / "pneumonia" / "study" / "y.dcm")
    png(root / "pneumonia" / ".hidden.png", 50)
    png(root / ".cache" / "z.png", 60)
    return root


@pytest.fixture
def chexpert(tmp_path) -> Path:
    """A fake CheXpert-v1.0-small with a train.csv of 1.0, 0.0, -1.0 and blank values; returns the CSV."""
    root = tmp_path / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Cardiomegaly", "Edema"]
    rows = [
        ["patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP", "", "1.0", ""],  # Cardiomegaly
        ["patient00002/study1/view1_frontal.jpg", "Male", "40", "Frontal", "PA", "1.0", "0.0", ""],  # No Finding
        ["patient00003/study1/view1_frontal.jpg", "Male", "55", "Frontal", "AP", "", "-1.0", "1.0"],  # uncertain: skip
        ["patient00004/study1/view1_frontal.jpg", "Female", "71", "Frontal", "AP", "", "", "1.0"],  # blank: skip
        ["patient00005/study1/view1_frontal.jpg", "Female", "33", "Frontal", "AP", "", "0.0", "0.0"],  # 0.0: skip
        ["patient00001/study1/view2_lateral.jpg", "Female", "68", "Lateral", "", "", "1.0", ""],  # Cardiomegaly
        ["patient00006/study2/view1_frontal.jpg", "Male", "62", "Frontal", "AP", "1.0", "", ""],  # No Finding
    ]
    rows = [[f"CheXpert-v1.0-small/train/{row[0]}", *row[1:]] for row in rows]
    for index, row in enumerate(rows):
        png(root.parent / row[0], 10 + 10 * index)
    return write_csv(root / "train.csv", header, rows)


def relative(dataset: LabelledDataset, path: Path | None) -> str | None:
    return None if path is None else path.relative_to(dataset.root).as_posix()


# -- covid-radiography ------------------------------------------------------------------------------


def test_covid_radiography_samples_masks_and_lesions(covid, catalogue):
    dataset = open_dataset(covid, "covid-radiography", catalogue=catalogue)
    assert dataset.layout == "covid-radiography"
    assert dataset.classes() == COVID_CLASSES
    assert [relative(dataset, s.path) for s in dataset.samples[:3]] == [
        "COVID/images/COVID-1.png",
        "COVID/images/COVID-2.png",
        "Lung Opacity/images/Lung Opacity-1.png",
    ]
    first = dataset.samples[0]
    assert relative(dataset, first.mask) == "COVID/masks/COVID-1.png"
    assert relative(dataset, first.lesion) == "COVID/lesions/COVID-1.png"
    assert first.prompt is None
    normal_2 = dataset.by_class("Normal")[1]
    assert normal_2.path.name == "Normal-2.png" and normal_2.mask is None
    assert all(s.lesion is None for s in dataset.samples if s.label != "COVID")
    check_dataset(dataset)
    check_dataset(dataset, classes=["COVID", "Viral Pneumonia"], require_masks=True)


def test_covid_radiography_prompts_come_from_metadata_csv(phantoms, catalogue):
    dataset = open_dataset(phantoms, catalogue=catalogue)
    assert dataset.layout == "covid-radiography"
    assert dataset.classes() == ["COVID", "Normal"]
    assert [(s.path.name, s.prompt) for s in dataset.samples] == [
        ("COVID-0.png", "chest x ray with covid opacity 0"),
        ("COVID-1.png", "chest x ray with covid opacity 1"),
        ("Normal-0.png", "normal chest x ray 0"),
        ("Normal-1.png", "normal chest x ray 1"),
    ]
    assert all(s.mask is not None and s.lesion is not None for s in dataset.samples)
    check_dataset(dataset, require_masks=True)


def test_metadata_csv_without_a_prompt_column_is_an_error(phantoms, catalogue):
    write_csv(phantoms / "metadata.csv", ["class", "file"], [["Normal", "Normal/images/Normal-0.png"]])
    with pytest.raises(ConfigError) as error:
        open_dataset(phantoms, catalogue=catalogue)
    one_line(error, "metadata.csv", "'prompt'")


# -- class-folders ----------------------------------------------------------------------------------


def test_class_folders_recursive_with_masks_by_stem(class_folders, catalogue):
    dataset = open_dataset(class_folders, "class-folders", catalogue=catalogue)
    assert dataset.classes() == ["normal", "pneumonia"]
    assert [(relative(dataset, s.path), s.label, relative(dataset, s.mask)) for s in dataset.samples] == [
        ("normal/a.jpg", "normal", "normal/masks/a.png"),
        ("normal/b.png", "normal", None),
        ("normal/nested/c.png", "normal", "normal/masks/nested/c.png"),
        ("pneumonia/study/y.dcm", "pneumonia", None),
        ("pneumonia/x.png", "pneumonia", None),
    ]
    check_dataset(dataset)


def test_class_folders_are_detected(class_folders, catalogue):
    assert open_dataset(class_folders, catalogue=catalogue).layout == "class-folders"


# -- csv ----------------------------------------------------------------------------------------------


def test_csv_with_path_label_and_mask(tmp_path, catalogue):
    png(tmp_path / "data" / "img" / "b.png", 10)
    png(tmp_path / "data" / "img" / "a.png", 20)
    png(tmp_path / "data" / "img" / "c.png", 30)
    png(tmp_path / "data" / "masks" / "b.png", 255)
    source = write_csv(
        tmp_path / "data" / "labels.csv",
        ["path", "label", "mask"],
        [["img/b.png", "Pneumonia", "masks/b.png"], ["img/c.png", "Normal", ""], ["img/a.png", "Pneumonia", ""]],
    )
    for location in (source, source.parent):  # the CSV, or a folder whose only CSV it is
        dataset = open_dataset(location, catalogue=catalogue)
        assert dataset.layout == "csv"
        assert dataset.classes() == ["Pneumonia", "Normal"]  # order of appearance
        assert [(relative(dataset, s.path), s.label, relative(dataset, s.mask)) for s in dataset.samples] == [
            ("img/a.png", "Pneumonia", None),
            ("img/b.png", "Pneumonia", "masks/b.png"),
            ("img/c.png", "Normal", None),
        ]
        check_dataset(dataset)


def test_csv_paths_relative_to_the_root_option(tmp_path, catalogue):
    png(tmp_path / "images" / "a.png", 10)
    source = write_csv(tmp_path / "lists" / "set.csv", ["Path", "Label", "Prompt"], [["a.png", "Normal", "clear lungs"]])
    dataset = open_dataset(source, "csv", catalogue=catalogue, root=tmp_path / "images")
    assert dataset.samples == [Sample(tmp_path / "images" / "a.png", "Normal", prompt="clear lungs")]
    check_dataset(dataset)


def test_chexpert_csv_with_label_column(chexpert, catalogue):
    dataset = open_dataset(chexpert, catalogue=catalogue, label_column="Cardiomegaly")
    assert dataset.classes() == ["Cardiomegaly", "No Finding"]
    names = [(s.label, s.path.relative_to(chexpert.parent).as_posix()) for s in dataset.samples]
    assert names == [
        ("Cardiomegaly", "train/patient00001/study1/view1_frontal.jpg"),
        ("Cardiomegaly", "train/patient00001/study1/view2_lateral.jpg"),
        ("No Finding", "train/patient00002/study1/view1_frontal.jpg"),
        ("No Finding", "train/patient00006/study2/view1_frontal.jpg"),
    ]
    check_dataset(dataset)
    frontal = open_dataset(chexpert, "csv", catalogue=catalogue, label_column="Cardiomegaly", frontal_only=True)
    assert [s.path.name for s in frontal.by_class("Cardiomegaly")] == ["view1_frontal.jpg"]


def test_chexpert_paths_resolve_against_an_explicit_root(chexpert, catalogue, tmp_path):
    moved = tmp_path / "lists" / "train.csv"
    moved.parent.mkdir()
    shutil.move(chexpert, moved)
    dataset = open_dataset(moved, catalogue=catalogue, label_column="Edema", root=chexpert.parent)
    assert [s.label for s in dataset.samples] == ["No Finding", "No Finding", "Edema", "Edema"]  # order of appearance
    check_dataset(dataset, check_images=False)


# -- detection ------------------------------------------------------------------------------------------


def test_auto_detection_picks_each_layout(covid, class_folders, chexpert, catalogue):
    assert open_dataset(covid, catalogue=catalogue).layout == "covid-radiography"  # not the generic class-folders
    assert open_dataset(class_folders, "auto", catalogue=catalogue).layout == "class-folders"
    assert open_dataset(chexpert, catalogue=catalogue, label_column="Cardiomegaly").layout == "csv"


def test_open_dataset_uses_the_process_catalogue_by_default(covid):
    assert open_dataset(covid).layout == "covid-radiography"


def test_folder_of_no_known_layout(tmp_path, catalogue):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ConfigError) as error:
        open_dataset(tmp_path, catalogue=catalogue)
    one_line(error, tmp_path, "covid-radiography")


def test_unknown_layout_and_option(covid, catalogue):
    with pytest.raises(ConfigError) as error:
        open_dataset(covid, "class-folder", catalogue=catalogue)
    assert "Did you mean 'class-folders'?" in one_line(error)
    with pytest.raises(ConfigError) as error:
        open_dataset(covid, catalogue=catalogue, label_column="Cardiomegaly")
    one_line(error, "label_column", "covid-radiography")


# -- bad data ---------------------------------------------------------------------------------------------


def test_missing_location(tmp_path, catalogue):
    with pytest.raises(ConfigError) as error:
        open_dataset(tmp_path / "nowhere", "class-folders", catalogue=catalogue)
    one_line(error, tmp_path / "nowhere", "does not exist")
    dataset = LabelledDataset(tmp_path / "gone", "class-folders", [Sample(tmp_path / "gone" / "a" / "x.png", "a")])
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset)
    one_line(error, tmp_path / "gone", "does not exist")


def test_no_classes_found(tmp_path, catalogue):
    (tmp_path / "empty").mkdir()
    for layout, expected in (("class-folders", "<class>/"), ("covid-radiography", "<Class>/images/")):
        dataset = open_dataset(tmp_path / "empty", layout, catalogue=catalogue)
        with pytest.raises(ConfigError) as error:
            check_dataset(dataset)
        one_line(error, "No classes found", tmp_path / "empty", expected)


def test_empty_class(covid, catalogue):
    for image in (covid / "Normal" / "images").iterdir():
        image.unlink()
    dataset = open_dataset(covid, catalogue=catalogue)
    assert "Normal" not in dataset.classes()
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset)
    one_line(error, "'Normal'", "has no images", covid / "Normal" / "images")
    check_dataset(dataset, classes=["COVID", "Viral Pneumonia"])  # the empty class is not used


def test_images_outside_the_images_folder_make_an_empty_class(covid, catalogue):
    png(covid / "Tuberculosis" / "Tuberculosis-1.png")
    with pytest.raises(ConfigError) as error:
        check_dataset(open_dataset(covid, catalogue=catalogue))
    one_line(error, "'Tuberculosis'", covid / "Tuberculosis" / "images")


def test_unknown_class_has_a_did_you_mean_and_the_classes(covid, catalogue):
    dataset = open_dataset(covid, catalogue=catalogue)
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset, classes=["covid", "Normal"])
    message = one_line(error, "'covid'", "Did you mean 'COVID'?", "COVID, Lung Opacity, Normal, Viral Pneumonia")
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset, classes="Tuberculosis")
    message = one_line(error, "'Tuberculosis'", "Available: COVID")
    assert "Did you mean" not in message


def test_missing_masks_when_required(covid, catalogue):
    dataset = open_dataset(covid, catalogue=catalogue)
    check_dataset(dataset, classes=["COVID"], require_masks=True)
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset, require_masks=True)
    one_line(error, "1 of 8 images", "Normal/images/Normal-2.png", "masks/")


def test_unreadable_images_are_counted_and_named(covid, catalogue, make_bad_inputs, tmp_path):
    bad = make_bad_inputs(tmp_path / "bad")
    for kind in ("empty", "text", "tiny", "truncated"):
        shutil.copy(bad[kind], covid / "COVID" / "images" / f"COVID-bad-{kind}.png")
    dataset = open_dataset(covid, catalogue=catalogue)
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset)
    message = one_line(error, "4 of", "cannot be read", "COVID/images/COVID-bad-empty.png (the file is empty)", "and 1 more")
    assert message.count("COVID-bad-") == 3  # the first few, not all
    check_dataset(dataset, check_images=False)
    check_dataset(dataset, classes=["Normal"])  # the broken files are not in the classes used


def test_missing_files_listed_by_a_csv(tmp_path, catalogue):
    png(tmp_path / "a.png")
    source = write_csv(tmp_path / "set.csv", ["path", "label", "mask"], [["a.png", "x", "m.png"], ["b.png", "y", ""]])
    dataset = open_dataset(source, catalogue=catalogue)
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset, check_images=False)
    one_line(error, "1 of 2 images", "b.png", "'root'")
    with pytest.raises(ConfigError) as error:
        check_dataset(dataset, classes=["x"], check_images=False)
    one_line(error, "mask", "m.png")


def test_csv_missing_required_columns(tmp_path, catalogue):
    source = write_csv(tmp_path / "set.csv", ["file", "finding"], [["a.png", "x"]])
    with pytest.raises(ConfigError) as error:
        open_dataset(source, "csv", catalogue=catalogue)
    one_line(error, source, "'path', 'label'", "file, finding")


def test_chexpert_csv_without_label_column_hints_at_it(chexpert, catalogue):
    with pytest.raises(ConfigError) as error:
        open_dataset(chexpert, catalogue=catalogue)
    one_line(error, "'label'", "label_column")


def test_label_column_not_in_csv(chexpert, catalogue):
    with pytest.raises(ConfigError) as error:
        open_dataset(chexpert, catalogue=catalogue, label_column="cardiomegally")
    one_line(error, "'cardiomegally'", "Did you mean 'Cardiomegaly'?", "No Finding")


def test_csv_rows_with_an_empty_label_or_conflicting_labels(tmp_path, catalogue):
    source = write_csv(tmp_path / "set.csv", ["path", "label"], [["a.png", "x"], ["b.png", ""]])
    with pytest.raises(ConfigError) as error:
        open_dataset(source, catalogue=catalogue)
    one_line(error, "line 3", "b.png")
    write_csv(source, ["path", "label"], [["a.png", "x"], ["a.png", "y"]])
    with pytest.raises(ConfigError) as error:
        open_dataset(source, catalogue=catalogue)
    one_line(error, "a.png", "'x'", "'y'")


# -- determinism --------------------------------------------------------------------------------------------


def test_order_and_fingerprint_are_deterministic(covid, catalogue, tmp_path):
    first, second = open_dataset(covid, catalogue=catalogue), open_dataset(covid, catalogue=catalogue)
    assert first.samples == second.samples
    fingerprint = dataset_fingerprint(first)
    assert len(fingerprint) == 64 and fingerprint == dataset_fingerprint(second)
    shuffled = list(first.samples)
    random.Random(0).shuffle(shuffled)
    assert dataset_fingerprint(LabelledDataset(first.root, first.layout, shuffled)) == fingerprint
    copy = shutil.copytree(covid, tmp_path / "elsewhere")  # moving the dataset keeps its fingerprint
    moved = open_dataset(copy, catalogue=catalogue)
    assert [relative(moved, s.path) for s in moved.samples] == [relative(first, s.path) for s in first.samples]
    assert dataset_fingerprint(moved) == fingerprint


def test_fingerprint_changes_with_content_label_or_mask(covid, catalogue):
    dataset = open_dataset(covid, catalogue=catalogue)
    fingerprint = dataset_fingerprint(dataset)
    relabelled = [Sample(s.path, "Other" if i == 0 else s.label, s.mask, s.lesion) for i, s in enumerate(dataset.samples)]
    assert dataset_fingerprint(LabelledDataset(dataset.root, dataset.layout, relabelled)) != fingerprint
    png(covid / "Normal" / "masks" / "Normal-1.png", 254)
    assert dataset_fingerprint(open_dataset(covid, catalogue=catalogue)) != fingerprint
    png(covid / "Normal" / "images" / "Normal-1.png", 3)
    changed = dataset_fingerprint(open_dataset(covid, catalogue=catalogue))
    assert changed != fingerprint


# -- plugins --------------------------------------------------------------------------------------------


def test_dva_plugins_json_lists_the_layouts():
    result = subprocess.run([sys.executable, "-m", "dva", "plugins", "--json"], capture_output=True, text=True, check=True)
    layouts = {row["name"]: row for row in json.loads(result.stdout)["components"]["dataset"]}
    assert {"covid-radiography", "class-folders", "csv"} <= set(layouts)
    assert all(layouts[name]["distribution"] == "dva" for name in ("covid-radiography", "class-folders", "csv"))


def test_dataset_plugin_and_layouts_do_not_import_torch():
    code = (
        "import sys\n"
        "import dva.plugins.datasets, dva.datasets.layouts\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
