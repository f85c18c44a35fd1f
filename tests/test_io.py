"""Specification of dva.core.io: how scans are read, fitted to the model and written.

Fast unit tests, no models. Every reader failure is an InputError whose message is one sentence
naming the file, so a batch can report it and go on.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dva.core import io
from dva.core.errors import InputError


def assert_one_sentence(message: str, path: Path | str) -> None:
    """One line, one sentence (a single full stop, at the end), naming the file."""
    assert str(path) in message
    assert "\n" not in message and "\r" not in message
    assert message.endswith(".")
    body = message[:-1].replace(str(path), "PATH")
    assert not re.search(r"[.!?]\s+[A-Z]", body), f"more than one sentence: {message!r}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` 8-bit gray pixels but holding no pixel data: a bomb for free."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b""
    )


def read_error(path: Path | str) -> str:
    with pytest.raises(InputError) as caught:
        io.read_scan(path)
    message = str(caught.value)
    assert_one_sentence(message, path)
    return message


def save(path: Path, array: np.ndarray, **options) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


GRADIENT = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (24, 1))  # 24 rows x 32 columns, 0..248


# -- pictures --------------------------------------------------------------------------------------


def test_8bit_gray_png_is_float32_in_unit_range(tmp_path):
    path = save(tmp_path / "gray.png", GRADIENT)
    scan = io.read_scan(path)
    assert scan.pixels.dtype == np.float32
    assert scan.pixels.shape == (24, 32)
    assert scan.size == (24, 32)  # (height, width)
    np.testing.assert_allclose(scan.pixels, GRADIENT / 255.0, atol=1e-6)
    assert scan.kind == "png"
    assert scan.path == path


def test_sha256_is_the_hash_of_the_file_bytes(tmp_path):
    path = save(tmp_path / "gray.png", GRADIENT)
    assert io.read_scan(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert io.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_16bit_gray_png_keeps_16bit_precision(tmp_path):
    values = np.full((20, 30), 1000, dtype=np.uint16)
    values[0, 0], values[0, 1], values[0, 2] = 0, 1001, 65535
    path = save(tmp_path / "deep.png", values)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    pixels = io.read_scan(path).pixels
    assert pixels.dtype == np.float32
    assert pixels[5, 5] == pytest.approx(1000 / 65535, abs=1e-7)
    assert pixels[0, 1] - pixels[5, 5] == pytest.approx(1 / 65535, rel=1e-3)  # not rounded to 8 bits
    assert pixels[0, 0] == 0.0 and pixels[0, 2] == pytest.approx(1.0)


def test_16bit_tiff_keeps_16bit_precision(tmp_path):
    values = np.full((20, 30), 1000, dtype=np.uint16)
    values[0, 0] = 40000
    scan = io.read_scan(save(tmp_path / "deep.tif", values))
    assert scan.kind == "tiff"
    assert scan.pixels[3, 3] == pytest.approx(1000 / 65535, abs=1e-7)
    assert scan.notes == ()  # full-range 16-bit data: nothing assumed


def test_12bit_data_in_a_16bit_png_is_detected_and_said(tmp_path):
    """A 12-bit detector's scan saved as 16-bit PNG is not read as near-black; the note says what was done."""
    values = np.linspace(0, 4095, 20 * 30).reshape(20, 30).astype(np.uint16)
    scan = io.read_scan(save(tmp_path / "twelve.png", values))
    assert scan.pixels.max() == pytest.approx(1.0)
    assert scan.pixels[10, 15] == pytest.approx(values[10, 15] / 4095, abs=1e-6)
    assert len(scan.notes) == 1 and "12-bit" in scan.notes[0] and "--bit-depth 16" in scan.notes[0]


def test_a_given_bit_depth_overrides_detection(tmp_path):
    values = np.full((20, 30), 1000, dtype=np.uint16)
    path = save(tmp_path / "dark.png", values)
    assert io.read_scan(path, bit_depth=16).pixels[3, 3] == pytest.approx(1000 / 65535, abs=1e-7)
    assert io.read_scan(path, bit_depth=16).notes == ()
    assert io.read_scan(path).pixels[3, 3] == pytest.approx(1000 / 1023, abs=1e-6)  # fits in 10 bits


def test_a_png_sbit_chunk_states_the_bit_depth(tmp_path):
    """PNG's sBIT chunk (significant bits) is the file's own statement of its depth, and is believed."""
    import struct
    import zlib

    values = np.full((20, 30), 1000, dtype=np.uint16)
    values[0, 0] = 3000
    data = save(tmp_path / "plain.png", values).read_bytes()
    body = bytes([12])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    header_end = 8 + 25  # signature, then IHDR (length, type, 13 bytes, crc)
    path = tmp_path / "sbit.png"
    path.write_bytes(data[:header_end] + chunk + data[header_end:])
    assert io.png_significant_bits(path.read_bytes()) == 12
    scan = io.read_scan(path)
    assert scan.pixels[3, 3] == pytest.approx(1000 / 4095, abs=1e-6)
    assert "sBIT" in scan.notes[0]


def test_samples_scaled_to_16_bits_under_an_sbit_chunk_are_read_as_16_bit_not_clipped(tmp_path):
    """PNG scales samples to the full 16 bits and sBIT only records the original depth; values above the declared
    depth can only be such samples, and reading them as 12-bit would clip them to white."""
    import struct
    import zlib

    values = np.full((20, 30), 1000 * 16, dtype=np.uint16)
    values[0, 0] = 4095 * 16
    data = save(tmp_path / "plain.png", values).read_bytes()
    body = bytes([12])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    path = tmp_path / "scaled.png"
    path.write_bytes(data[:33] + chunk + data[33:])
    scan = io.read_scan(path)
    assert scan.bit_depth == 16 and scan.pixels[3, 3] == pytest.approx(16000 / 65535, abs=1e-6)
    assert "scaled to 16 bits" in scan.notes[0]


def test_rgb_png_becomes_luminance(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :10] = (255, 0, 0)
    rgb[:, 10:20] = (0, 255, 0)
    rgb[:, 20:] = (200, 200, 200)
    pixels = io.read_scan(save(tmp_path / "rgb.png", rgb)).pixels
    assert pixels.shape == (20, 30)
    assert pixels[0, 0] == pytest.approx(0.299, abs=0.01)  # ITU-R 601 luma, as Pillow's "L"
    assert pixels[0, 15] == pytest.approx(0.587, abs=0.01)
    assert pixels[0, 25] == pytest.approx(200 / 255, abs=0.005)


def test_rgba_png_is_composited_on_black(tmp_path):
    rgba = np.full((20, 30, 4), 255, dtype=np.uint8)
    rgba[:, :10, 3] = 0  # transparent white -> black
    rgba[:, 10:20, 3] = 128  # half-transparent white -> mid gray
    pixels = io.read_scan(save(tmp_path / "rgba.png", rgba)).pixels
    assert pixels[0, 0] == 0.0
    assert pixels[0, 15] == pytest.approx(128 / 255, abs=0.01)
    assert pixels[0, 25] == 1.0


def test_palette_png(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(GRADIENT).convert("P").save(path)
    with Image.open(path) as image:
        assert image.mode == "P"
    np.testing.assert_allclose(io.read_scan(path).pixels, GRADIENT / 255.0, atol=1e-6)


def test_palette_png_with_transparency_is_composited_on_black(tmp_path):
    path = tmp_path / "palette-alpha.png"
    image = Image.fromarray(np.full((20, 30), 200, dtype=np.uint8)).convert("P")
    image.save(path, transparency=image.getpixel((0, 0)))
    assert io.read_scan(path).pixels.max() == 0.0


def test_jpeg(tmp_path):
    path = save(tmp_path / "scan.jpg", np.full((24, 32), 100, dtype=np.uint8), quality=95)
    scan = io.read_scan(path)
    assert scan.kind == "jpeg"
    assert scan.pixels.dtype == np.float32
    np.testing.assert_allclose(scan.pixels, 100 / 255, atol=2 / 255)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    """A photographed film rotated by EXIF is read the way it is shown, as (height, width)."""
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, :20] = 255  # left half bright
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    scan = io.read_scan(path)
    assert scan.size == (40, 20)
    assert scan.pixels[:15].mean() > 0.9 and scan.pixels[25:].mean() < 0.1  # left went to the top


def test_tiff(tmp_path):
    scan = io.read_scan(save(tmp_path / "scan.tiff", GRADIENT))
    assert scan.kind == "tiff"
    np.testing.assert_allclose(scan.pixels, GRADIENT / 255.0, atol=1e-6)


# -- DICOM -----------------------------------------------------------------------------------------

RAMP = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (32, 1))  # 32x32, stored values 0..3875


def write_dicom(
    path: Path,
    pixels: np.ndarray = RAMP,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    frames: int = 1,
    syntax: str | None = None,
    pixel_data: bool = True,
) -> Path:
    """An uncompressed (ExplicitVRLittleEndian) 12-bit DX image, or with ``syntax`` junk encapsulated data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    values = np.asarray(pixels, dtype=np.uint16)
    dataset.Rows, dataset.Columns = values.shape[-2:]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    if slope is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = slope, intercept, "US"
    if center is not None:
        dataset.WindowCenter, dataset.WindowWidth = center, width
    if pixel_data:
        if syntax is None:
            dataset.PixelData = values.tobytes()
        else:
            dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51 junk, not a codestream" * 20])
            dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_dicom_is_read_as_float32_in_unit_range(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm")
    scan = io.read_scan(path)
    assert scan.kind == "dicom"
    assert scan.pixels.dtype == np.float32
    assert scan.size == (32, 32)
    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # No window: the stored range is stretched to [0, 1].
    np.testing.assert_allclose(scan.pixels[0], np.arange(32) / 31, atol=1e-6)


def test_dicom_is_recognised_by_content_without_extension(tmp_path):
    path = write_dicom(tmp_path / "IM000001")
    assert io.read_scan(path).kind == "dicom"


def test_dicom_window_maps_center_and_width_and_clips_outside(tmp_path):
    scan = io.read_scan(write_dicom(tmp_path / "window.dcm", center=2000, width=1000))
    row = scan.pixels[0]  # stored 0, 125, ..., 3875 ; window [1500, 2500]
    assert row.min() == 0.0 and row.max() == 1.0
    assert np.all(row[:12] == 0.0)  # <= 1375: below the window
    assert np.all(row[21:] == 1.0)  # >= 2625: above the window
    assert row[16] == pytest.approx(0.5, abs=0.002)  # 2000 is the center
    assert row[14] == pytest.approx(0.25, abs=0.002)  # 1750 is a quarter in


def test_dicom_window_is_absolute_not_stretched_to_the_data(tmp_path):
    """Values inside the window keep their place in it: the window, not the data range, sets 0 and 1."""
    inside = np.tile(np.arange(1600, 2400, 25, dtype=np.uint16), (32, 1))  # all within [1500, 2500]
    row = io.read_scan(write_dicom(tmp_path / "inside.dcm", inside, center=2000, width=1000)).pixels[0]
    assert row[0] == pytest.approx(0.1, abs=0.002)
    assert row[-1] == pytest.approx(0.875, abs=0.002)


def test_dicom_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    # Rescaled values: 2 * stored - 1000 ; the window [1000, 3000] is in rescaled units,
    # i.e. stored [1000, 2000].
    row = io.read_scan(
        write_dicom(tmp_path / "rescaled.dcm", slope=2, intercept=-1000, center=2000, width=2000)
    ).pixels[0]
    assert np.all(row[:8] == 0.0)  # stored <= 875 -> rescaled <= 750
    assert row[12] == pytest.approx(0.5, abs=0.002)  # stored 1500 -> rescaled 2000, the center
    assert np.all(row[17:] == 1.0)  # stored >= 2125 -> rescaled >= 3250
    # The same window on the un-rescaled values puts the center elsewhere.
    plain = io.read_scan(write_dicom(tmp_path / "plain.dcm", center=2000, width=2000)).pixels[0]
    assert plain[16] == pytest.approx(0.5, abs=0.002)
    assert plain[12] == pytest.approx(0.25, abs=0.002)


def test_dicom_negative_rescale_slope_inverts(tmp_path):
    row = io.read_scan(write_dicom(tmp_path / "negative.dcm", slope=-1, intercept=4095)).pixels[0]
    assert row[0] == 1.0 and row[-1] == 0.0


def test_dicom_monochrome1_is_inverted(tmp_path):
    normal = io.read_scan(write_dicom(tmp_path / "m2.dcm", photometric="MONOCHROME2")).pixels
    inverted = io.read_scan(write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)
    assert inverted[0, 0] == 1.0  # the lowest stored value is the brightest


def test_dicom_monochrome1_with_window_is_inverted(tmp_path):
    normal = io.read_scan(write_dicom(tmp_path / "m2.dcm", center=2000, width=1000)).pixels
    inverted = io.read_scan(write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1", center=2000, width=1000)).pixels
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_dicom_with_an_unusable_window_falls_back_to_the_data_range(tmp_path):
    row = io.read_scan(write_dicom(tmp_path / "zero-width.dcm", center=2000, width=0)).pixels[0]
    np.testing.assert_allclose(row, np.arange(32) / 31, atol=1e-6)


def test_dicom_without_pixel_data_is_an_input_error(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", pixel_data=False)
    assert "no PixelData" in read_error(path)


def test_multiframe_dicom_is_an_input_error(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", np.stack([RAMP, RAMP, RAMP]), frames=3)
    assert "multi-frame" in read_error(path)


def test_compressed_dicom_without_a_decoder_is_an_input_error(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", syntax=JPEG2000Lossless)
    message = read_error(path)
    assert "unsupported DICOM encoding" in message
    assert "JPEG 2000" in message


def test_dicom_with_truncated_pixel_data_is_an_input_error(tmp_path):
    whole = write_dicom(tmp_path / "whole.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[:-600])
    assert "damaged" in read_error(path)


def test_dcm_file_that_is_not_dicom_is_an_input_error(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_text("Patient: anonymous. This is not a DICOM file.\n")
    assert "not a DICOM file" in read_error(path)


def test_dicom_too_small_is_an_input_error(tmp_path):
    path = write_dicom(tmp_path / "small.dcm", RAMP[:8, :8])
    assert "8x8" in read_error(path)


# -- bad files -------------------------------------------------------------------------------------


def test_bad_files_are_input_errors_of_one_sentence_naming_the_file(tmp_path, make_bad_inputs):
    files = make_bad_inputs(tmp_path)
    messages = {kind: read_error(path) for kind, path in files.items()}
    assert "cannot be read" in messages["missing"]
    assert "empty" in messages["empty"]
    assert "damaged or truncated" in messages["truncated"]
    assert "not an image" in messages["text"]
    assert "1x1" in messages["tiny"] and str(io.MIN_SIDE) in messages["tiny"]
    assert "too large" in messages["bomb"] and "decompression bomb" in messages["bomb"]


def test_a_folder_is_not_a_scan(tmp_path):
    read_error(tmp_path)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_truncated_png_at_any_point_is_an_input_error(tmp_path, cut):
    whole = save(tmp_path / "whole.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = whole.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * cut)])
    read_error(path)


def test_truncated_jpeg_is_an_input_error(tmp_path):
    whole = save(tmp_path / "whole.jpg", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    data = whole.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    read_error(path)


def test_smallest_side_is_min_side(tmp_path):
    assert io.read_scan(save(tmp_path / "ok.png", np.zeros((io.MIN_SIDE, 40), np.uint8))).size == (io.MIN_SIDE, 40)
    assert f"40x{io.MIN_SIDE - 1}" in read_error(save(tmp_path / "thin.png", np.zeros((io.MIN_SIDE - 1, 40), np.uint8)))


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = save(tmp_path / "moderate.png", np.zeros((100, 100), np.uint8))
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 100)
    assert io.read_scan(path).size == (100, 100)  # exactly at the limit is allowed
    monkeypatch.setattr(io, "MAX_PIXELS", 100 * 100 - 1)
    assert "decompression bomb" in read_error(path)
    monkeypatch.setattr(io, "MAX_PIXELS", 1000)  # far over (Pillow's own error, not its warning)
    assert "decompression bomb" in read_error(path)


def test_reading_leaves_pillows_own_limit_alone(tmp_path, monkeypatch):
    path = save(tmp_path / "moderate.png", np.zeros((100, 100), np.uint8))
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(io, "MAX_PIXELS", 1000)
    read_error(path)
    io.read_scan(save(tmp_path / "small.png", np.zeros((20, 20), np.uint8)))
    assert Image.MAX_IMAGE_PIXELS == before  # other code opening images is not limited by dva's setting


def test_real_pixel_limit_on_header_only_pngs(tmp_path):
    """The real limit, tested without allocating: PNG headers that declare sizes around it."""
    side = int(io.MAX_PIXELS**0.5)
    assert side * side == io.MAX_PIXELS
    just_over = tmp_path / "just-over.png"
    just_over.write_bytes(png_header_only(side + 1, side))
    assert "decompression bomb" in read_error(just_over)
    at_limit = tmp_path / "at-limit.png"
    at_limit.write_bytes(png_header_only(side, side))
    message = read_error(at_limit)  # not a bomb: it fails only because it holds no pixel data
    assert "decompression bomb" not in message and "damaged or truncated" in message


def test_real_pixel_limit_on_a_real_image(tmp_path):
    """A 1-bit PNG of 20000x20000 that Pillow wrote itself: a few kilobytes on disk."""
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)
    assert path.stat().st_size < 100_000
    assert "decompression bomb" in read_error(path)


def test_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "big.dcm")
    monkeypatch.setattr(io, "MAX_PIXELS", 32 * 32 - 1)
    assert "decompression bomb" in read_error(path)


# -- collecting inputs -----------------------------------------------------------------------------


def test_collect_inputs_recursive_sorted_supported_unique(tmp_path):
    root = tmp_path / "scans"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    for name in ("b/deeper/z.png", "b/y.JPG", "a/x.dcm", "a/w.tif", "c.png", "a/notes.txt", "a/.DS_Store"):
        (root / name).write_bytes(b"x")
    files, errors = io.collect_inputs([root, root / "c.png", root / "a"])
    assert errors == []
    expected = [root / name for name in ("a/w.tif", "a/x.dcm", "b/deeper/z.png", "b/y.JPG", "c.png")]
    assert files == [p.resolve() for p in expected]


def test_collect_inputs_skips_hidden_files_and_folders_in_folders(tmp_path):
    (tmp_path / ".cache").mkdir()
    for name in ("scan.png", "._scan.png", ".cache/old.png"):
        (tmp_path / name).write_bytes(b"x")
    files, _ = io.collect_inputs([tmp_path])
    assert files == [(tmp_path / "scan.png").resolve()]
    files, _ = io.collect_inputs([tmp_path / "._scan.png"])  # named explicitly: taken
    assert files == [(tmp_path / "._scan.png").resolve()]


def test_collect_inputs_skips_the_output_folder_inside_an_input_folder(tmp_path):
    """``dva run . --out dva-out`` twice must not read the first run's outputs as inputs."""
    (tmp_path / "dva-out" / "scan").mkdir(parents=True)
    for name in ("scan.png", "dva-out/scan/input.png", "dva-out/scan/overlay.png"):
        (tmp_path / name).write_bytes(b"x")
    files, errors = io.collect_inputs([tmp_path], exclude=[tmp_path / "dva-out"])
    assert files == [(tmp_path / "scan.png").resolve()] and errors == []
    # Asked for explicitly, the output folder (or a file in it) is still read.
    files, _ = io.collect_inputs([tmp_path / "dva-out"], exclude=[tmp_path / "dva-out"])
    assert len(files) == 2
    files, _ = io.collect_inputs([tmp_path / "dva-out" / "scan" / "input.png"], exclude=[tmp_path / "dva-out"])
    assert len(files) == 1


def test_collect_inputs_explicit_files_keep_their_order(tmp_path):
    first, second = tmp_path / "z.png", tmp_path / "a.png"
    first.write_bytes(b"x")
    second.write_bytes(b"x")
    files, _ = io.collect_inputs([str(first), str(second), str(tmp_path / "." / "z.png")])
    assert files == [first.resolve(), second.resolve()]


def test_collect_inputs_reports_missing_paths_and_empty_folders(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    only_text = tmp_path / "reports"
    only_text.mkdir()
    (only_text / "report.txt").write_text("x")
    missing = tmp_path / "nowhere.png"
    files, errors = io.collect_inputs([good, missing, empty, only_text, missing])
    assert files == [good.resolve()]
    assert [path for path, _ in errors] == [missing, empty, only_text]  # each reported once, in order
    for path, message in errors:
        assert_one_sentence(message, path)
    assert "no such file" in errors[0][1]
    assert "holds no" in errors[1][1]


# -- fitting to the model --------------------------------------------------------------------------


def smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return (0.2 + 0.6 * (x / width) * 0.5 + 0.3 * (y / height) ** 2).astype(np.float32)


def test_pad_to_square_keeps_aspect_with_black_bars():
    image = np.ones((30, 50), dtype=np.float32)
    square, padding = io.pad_to_square(image)
    assert square.shape == (50, 50)
    assert padding == io.Padding(top=10, bottom=10, left=0, right=0)
    assert square[:10].max() == 0.0 and square[40:].max() == 0.0 and square[10:40].min() == 1.0

    tall, padding = io.pad_to_square(np.ones((51, 20), dtype=np.float32))
    assert tall.shape == (51, 51)
    assert (padding.left, padding.right, padding.top, padding.bottom) == (15, 16, 0, 0)
    assert tall[:, :15].max() == 0.0 and tall[:, 35:].max() == 0.0


def test_pad_to_square_of_a_square_adds_nothing():
    square, padding = io.pad_to_square(np.ones((40, 40), dtype=np.float32))
    assert square.shape == (40, 40) and padding == io.Padding(0, 0, 0, 0)


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (64, 64), (300, 200), (37, 91)])
def test_model_input_round_trip_recovers_size_and_content(shape):
    original = smooth(*shape)
    model, padding = io.to_model_input(original, 64)
    assert model.shape == (64, 64) and model.dtype == np.float32
    height, width = shape
    side = max(shape)
    assert padding.top + padding.bottom == side - height
    assert padding.left + padding.right == side - width
    back = io.to_original(model, padding, shape)
    assert back.shape == shape
    # Resizing blurs across the image's edges (and the black bars) by about two model pixels; inside,
    # the content comes back within 0.02, and on average everywhere.
    margin = int(np.ceil(2 * side / 64)) + 1
    inner = (back - original)[margin:-margin, margin:-margin]
    assert np.abs(inner).max() < 0.02
    assert np.abs(back - original).mean() < 0.02


def test_to_original_of_color_images():
    original = smooth(48, 80)
    model, padding = io.to_model_input(original, 64)
    rgb = np.stack([model, model * 0.5, model * 0.25], axis=-1)
    back = io.to_original(rgb, padding, (48, 80))
    assert back.shape == (48, 80, 3)
    assert np.abs(back[4:-4, 4:-4, 0] - original[4:-4, 4:-4]).max() < 0.02


def test_nearest_resize_keeps_a_mask_binary():
    mask = np.zeros((48, 80), dtype=np.float32)
    mask[10:30, 20:60] = 1.0
    model, _ = io.to_model_input(mask, 64, nearest=True)
    assert set(np.unique(model)) <= {0.0, 1.0}


# -- masks -----------------------------------------------------------------------------------------


def test_read_mask_is_binarised_at_half(tmp_path):
    values = np.repeat(np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8), 16, axis=0).repeat(3, axis=1)
    mask = io.read_mask(save(tmp_path / "mask.png", values), (16, 18))
    assert mask.dtype == bool and mask.shape == (16, 18)
    assert mask[0, ::3].tolist() == [False, False, False, True, True, True]


def test_read_mask_of_the_same_shape_but_another_size_is_resized(tmp_path):
    """The COVID-19 Radiography Database pairs 299 px images with 256 px masks."""
    values = np.zeros((256, 256), dtype=np.uint8)
    values[:, 128:] = 255
    mask = io.read_mask(save(tmp_path / "mask.png", values), (299, 299))
    assert mask.shape == (299, 299)
    assert not mask[:, :148].any() and mask[:, 151:].all()


def test_read_mask_of_another_shape_is_an_input_error(tmp_path):
    path = save(tmp_path / "mask.png", np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(InputError) as caught:
        io.read_mask(path, (40, 30))
    assert_one_sentence(str(caught.value), path)
    assert "30x20" in str(caught.value) and "30x40" in str(caught.value)


# -- writing ---------------------------------------------------------------------------------------


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    io.atomic_write_bytes(target, b"first")
    io.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_atomic_write_makes_files_readable_like_any_new_file(tmp_path):
    umask = os.umask(0o022)
    try:
        io.atomic_write_bytes(tmp_path / "out.png", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_bytes(b"old content")

    def broken_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        io.atomic_write_bytes(target, b"new content that never lands")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old content")

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_atomic_write_text_and_png(tmp_path):
    io.atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    io.atomic_write_png(tmp_path / "gray.png", GRADIENT / 255.0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "gray.png")), GRADIENT)


def test_png_bytes_clips_and_rounds():
    data = io.png_bytes(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]] * 2, dtype=np.float32))
    decoded = np.asarray(Image.open(_io.BytesIO(data)))
    assert decoded[0].tolist() == [0, 0, 128, 255, 255]
