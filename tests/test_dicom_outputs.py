"""Specification of the DICOM outputs of a DICOM input (dva.core.dicom_outputs), read back with pydicom.

- The counterfactual is a derived image (DERIVED\\SECONDARY) in the input's study and patient, in a new series
  with a new instance UID, at the input's size, pixel spacing and bit depth; its stored values are on the
  input's scale, so a counterfactual equal to the input gives the input's stored values back within 1.
- The map holds the signed map's float values (through its rescale), in its own new series.
- The files are deterministic (same inputs, same bytes), carry no clock time, and `dva run` writes them for a
  DICOM input; rerunning an image rewrites the same bytes.
- An input that cannot be written back is skipped with a note; its PNGs are still written.
"""

from __future__ import annotations

import datetime
import io as _io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from dva.core import dicom_outputs, io
from dva.core.dicom_outputs import COUNTERFACTUAL, MAP, OVERLAY, NotWritable
from dva.testing.dicom import write_radiograph


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(_io.BytesIO(data))


def outputs_of(path: Path, counterfactual: np.ndarray | None = None, signed: np.ndarray | None = None,
               **options) -> dict[str, pydicom.Dataset]:
    """The DICOM outputs of ``path`` (the counterfactual defaulting to the input as dva reads it), read back."""
    pixels = io.read_scan(path).pixels
    counterfactual = pixels if counterfactual is None else counterfactual
    signed = pixels - counterfactual if signed is None else signed
    files = dicom_outputs.dicom_files(path, counterfactual, signed, 0.25, **options)
    return {name: read(data) for name, data in files.items()}


@pytest.fixture
def dx(tmp_path) -> Path:
    """A 12-bit MONOCHROME2 DX with ImagerPixelSpacing and a rescale slope and intercept."""
    return write_radiograph(tmp_path / "dx.dcm", slope=2.0, intercept=-1024.0)


@pytest.mark.parametrize("kind", ["dx-monochrome2", "cr-monochrome1-windowed", "dx-8-bit", "dx-sigmoid"])
def test_a_counterfactual_equal_to_the_input_gives_back_its_stored_values_within_1(kind, tmp_path):
    if kind == "dx-monochrome2":
        path = write_radiograph(tmp_path / "dx.dcm", slope=2.0, intercept=-1024.0)
    elif kind == "dx-8-bit":
        path = write_radiograph(tmp_path / "dx8.dcm", bits=8)
    elif kind == "dx-sigmoid":  # a curved VOI transform: inverted by interpolation, not as a line
        path = write_radiograph(tmp_path / "sigmoid.dcm", slope=2.0, intercept=-1024.0, window=(3000.0, 8000.0),
                                function="SIGMOID")
    else:  # the window (rescaled values -700..6900) covers every stored value, so nothing is clipped
        path = write_radiograph(tmp_path / "cr.dcm", modality="CR", photometric="MONOCHROME1",
                                spacing="PixelSpacing", slope=2.0, intercept=-1000.0, window=(3100.0, 7600.0))
    source = pydicom.dcmread(path)
    counterfactual = outputs_of(path)[COUNTERFACTUAL]
    difference = counterfactual.pixel_array.astype(int) - source.pixel_array.astype(int)
    assert np.abs(difference).max() <= 1
    assert counterfactual.PhotometricInterpretation == source.PhotometricInterpretation
    assert (counterfactual.RescaleSlope, counterfactual.RescaleIntercept) == (source.RescaleSlope, source.RescaleIntercept)
    assert (counterfactual.BitsAllocated, counterfactual.BitsStored) == (source.BitsAllocated, source.BitsStored)


def test_an_anonymised_input_is_written_without_library_warnings(tmp_path, recwarn):
    path = write_radiograph(tmp_path / "anonymised.dcm")
    dataset = pydicom.dcmread(path)
    dataset.PatientName = "ANONYMOUS"  # one component: valid DICOM, which highdicom warns about
    del dataset.PatientOrientation
    dataset.save_as(path)
    counterfactual = outputs_of(path)[COUNTERFACTUAL]
    assert counterfactual.PatientName == "ANONYMOUS"
    assert counterfactual.PatientOrientation == ""  # none in the source, so none guessed
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_the_counterfactual_is_a_derived_image_in_the_inputs_study_at_its_size_spacing_and_bit_depth(dx):
    source = pydicom.dcmread(dx)
    made = outputs_of(dx)
    counterfactual = made[COUNTERFACTUAL]
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID"):
        assert counterfactual[keyword].value == source[keyword].value, keyword
    assert counterfactual.SeriesInstanceUID != source.SeriesInstanceUID
    assert counterfactual.SOPInstanceUID != source.SOPInstanceUID
    assert counterfactual.file_meta.MediaStorageSOPInstanceUID == counterfactual.SOPInstanceUID
    assert list(counterfactual.ImageType) == ["DERIVED", "SECONDARY"]
    assert counterfactual.SeriesDescription == "dva healthy counterfactual"
    assert [float(v) for v in counterfactual.ImagerPixelSpacing] == [0.139, 0.143]
    assert (counterfactual.Rows, counterfactual.Columns) == (source.Rows, source.Columns)
    assert (counterfactual.BitsAllocated, counterfactual.BitsStored, counterfactual.HighBit) == (16, 12, 11)
    assert "DerivationDescription" in counterfactual
    referenced = counterfactual.SourceImageSequence[0]
    assert (referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert counterfactual.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


def test_each_output_is_its_own_new_series_in_the_same_study(dx):
    made = outputs_of(dx, overlay=np.zeros((40, 48, 3)))
    assert set(made) == {COUNTERFACTUAL, MAP, OVERLAY}
    assert len({image.SeriesInstanceUID for image in made.values()}) == 3
    assert len({image.SOPInstanceUID for image in made.values()}) == 3
    assert {image.StudyInstanceUID for image in made.values()} == {pydicom.dcmread(dx).StudyInstanceUID}
    assert made[OVERLAY].PhotometricInterpretation == "RGB" and made[OVERLAY].pixel_array.shape == (40, 48, 3)


def test_a_pixel_spacing_is_kept_under_its_own_name(tmp_path):
    path = write_radiograph(tmp_path / "cr.dcm", modality="CR", spacing="PixelSpacing")
    counterfactual = outputs_of(path)[COUNTERFACTUAL]
    assert [float(v) for v in counterfactual.PixelSpacing] == [0.139, 0.143]
    assert "ImagerPixelSpacing" not in counterfactual


def test_the_maps_values_are_the_signed_maps_in_normalised_intensity(dx):
    signed = np.random.default_rng(1).uniform(-0.6, 0.6, (40, 48)).astype(np.float32)
    signed[0, :3] = (-1.0, 0.0, 1.0)
    found = outputs_of(dx, signed=signed)[MAP]
    values = apply_modality_lut(found.pixel_array, found)
    assert np.abs(values - signed).max() <= 0.5 * dicom_outputs.MAP_STEP + 1e-9
    assert list(values[0, :3]) == [-1.0, 0.0, 1.0]  # exactly
    mapping = found.RealWorldValueMappingSequence[0]
    assert dicom_outputs.MAP_UNITS in mapping.LUTExplanation
    assert (float(found.WindowCenter), float(found.WindowWidth)) == (0.0, 0.5)  # ± the heatmap's scale
    assert list(found.ImageType) == ["DERIVED", "SECONDARY"]


def test_a_value_the_window_clipped_comes_back_at_the_windows_end(tmp_path):
    # DICOM's linear window: stored values up to 1499 show black, from 2500 on white (PS3.3 C.11.2.1.2.1).
    path = write_radiograph(tmp_path / "windowed.dcm", window=(2000.0, 1001.0))
    counterfactual = outputs_of(path)[COUNTERFACTUAL].pixel_array
    source = pydicom.dcmread(path).pixel_array
    inside = (source >= 1499) & (source <= 2500)
    assert inside.any() and (source < 1499).any() and (source > 2500).any()
    assert np.abs(counterfactual[inside].astype(int) - source[inside]).max() <= 1
    assert set(np.unique(counterfactual[source < 1499])) == {1499}
    assert set(np.unique(counterfactual[source > 2500])) == {2500}


def test_the_same_inputs_give_the_same_bytes_and_new_pixels_new_uids(dx):
    pixels = io.read_scan(dx).pixels
    first = dicom_outputs.dicom_files(dx, pixels, np.zeros_like(pixels), 0.25)
    assert dicom_outputs.dicom_files(dx, pixels, np.zeros_like(pixels), 0.25) == first
    darker = dicom_outputs.dicom_files(dx, pixels * 0.9, pixels * 0.1, 0.25)
    assert read(darker[COUNTERFACTUAL]).SOPInstanceUID != read(first[COUNTERFACTUAL]).SOPInstanceUID
    today = datetime.date.today().strftime("%Y%m%d").encode()
    assert not any(today in data for data in first.values()), "no clock time is written"
    assert read(first[COUNTERFACTUAL]).ContentDate == "20240102"  # the source's


@pytest.mark.parametrize("problem", ["no study uid", "signed pixels", "changed since read"])
def test_an_input_that_cannot_be_written_back_is_skipped_with_a_note(problem, tmp_path):
    path = write_radiograph(tmp_path / "scan.dcm", study=problem != "no study uid", signed=problem == "signed pixels")
    pixels = io.read_scan(path).pixels
    sha256 = io.file_sha256(path) if problem != "changed since read" else "0" * 64
    with pytest.raises(NotWritable):
        dicom_outputs.dicom_files(path, pixels, np.zeros_like(pixels), 0.25, sha256=sha256)
    warnings: list[str] = []
    written = dicom_outputs.write_dicom_outputs(tmp_path / "out", path, sha256, pixels, np.zeros_like(pixels), 0.25,
                                                None, warnings)
    assert written == {} and not (tmp_path / "out").exists()
    assert len(warnings) == 1 and warnings[0].startswith("DICOM outputs not written: ")


def test_dva_run_writes_them_for_a_dicom_input_and_a_rerun_writes_the_same_bytes(tiny_sd, tmp_path, capsys):
    from dva.cli import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_radiograph(inputs / "chest.dcm", slope=2.0, intercept=-1024.0)
    write_radiograph(inputs / "nostudy.dcm", study=False)
    out = tmp_path / "out"

    def dva_run() -> int:
        with pytest.raises(SystemExit) as exited:
            main(["run", str(inputs), "--model", str(tiny_sd), "--steps", "2", "--out", str(out), "--device", "cpu"])
        return exited.value.code or 0

    assert dva_run() == 0
    record = json.loads((out / "chest" / "record.json").read_text())
    for name in (COUNTERFACTUAL, MAP, OVERLAY):
        assert name in record["checksums"] and (out / "chest" / name).is_file()
    counterfactual = pydicom.dcmread(out / "chest" / COUNTERFACTUAL)
    assert counterfactual.StudyInstanceUID == pydicom.dcmread(inputs / "chest.dcm").StudyInstanceUID
    assert counterfactual.pixel_array.shape == (40, 48)
    skipped = json.loads((out / "nostudy" / "record.json").read_text())
    assert skipped["status"] == "done" and not (out / "nostudy" / "dicom").exists()
    assert (out / "nostudy" / "fullsize" / "counterfactual.png").is_file()
    assert any(w.startswith("DICOM outputs not written: the input has no StudyInstanceUID") for w in skipped["warnings"])
    assert "DICOM outputs not written: the input has no StudyInstanceUID" in capsys.readouterr().err  # the terminal

    before = {name: (out / "chest" / name).read_bytes() for name in (COUNTERFACTUAL, MAP, OVERLAY)}
    (out / "chest" / "record.json").unlink()  # as if the run had been killed while writing this image
    assert dva_run() == 0
    assert json.loads((out / "chest" / "record.json").read_text())["checksums"][COUNTERFACTUAL] == record["checksums"][COUNTERFACTUAL]
    assert {name: (out / "chest" / name).read_bytes() for name in before} == before


def test_dicom_files_of_an_earlier_run_are_removed_when_this_run_writes_none(tmp_path):
    from dva.core.outputs import remove_stale_outputs

    for name in (COUNTERFACTUAL, MAP, OVERLAY):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"earlier")
    remove_stale_outputs(tmp_path, {"input.png"}, [])
    assert not any((tmp_path / name).exists() for name in (COUNTERFACTUAL, MAP, OVERLAY))
