"""DICOM outputs of a DICOM input, so a clinician opens them in a DICOM viewer in the input's own study.

Three new instances, each in its own new series of the input's study (same patient and study attributes):

- ``dicom/counterfactual.dcm``: the healthy counterfactual at the input's size, a Secondary Capture image
  (``DERIVED\\SECONDARY``) with the input's bit depth, photometric interpretation, pixel spacing, rescale and
  window. Its stored values are dva's reading of the input run backwards (:func:`stored_values`), so they
  compare with the input's: an unchanged pixel inside the window gets its stored value back within 1.
- ``dicom/map.dcm``: the signed map (the input, or its reconstruction with ``--reference reconstruction``,
  less the counterfactual, in dva's [0, 1] intensities) as 16-bit grayscale whose rescale gives the map's
  float values back (:data:`MAP_UNITS`, also stated in a Real World Value Mapping), windowed at the heatmap's
  scale; a viewer that fuses series (3D Slicer) overlays it on the input with a colour table.
- ``dicom/overlay.dcm``: the input with the map's heatmap at the input's size (``overlay.png`` at full size) as an
  RGB Secondary Capture, for viewers that only show images side by side.

Secondary Capture rather than a Parametric Map for the map: highdicom's ParametricMap (0.28) fails to build
from a single-frame CR/DX image, which has no Frame of Reference ("Unexpected mismatch between dimension index
values ..."), and older highdicom refuses such sources outright. Secondary Capture rather than a DX/CR
object for the counterfactual: it was not acquired by a detector, and highdicom has no DX/CR class.

Files are deterministic (a resumed run writes the same bytes): UIDs are derived from the source's UIDs and a
hash of the pixels written (new pixels, new UIDs, as DICOM requires), and no clock time is written (content
date and time are the source's).
"""

from __future__ import annotations

import hashlib
import io as _io
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import io, manifest

COUNTERFACTUAL = "dicom/counterfactual.dcm"
MAP = "dicom/map.dcm"
OVERLAY = "dicom/overlay.dcm"
SERIES = {  # file: (SeriesNumber, SeriesDescription)
    COUNTERFACTUAL: (9001, "dva healthy counterfactual"),
    MAP: (9002, "dva attribution map (signed)"),
    OVERLAY: (9003, "dva attribution overlay"),
}
MANUFACTURER = "dva (diffusion visual attribution)"
MAP_UNITS = "difference in normalised intensity"
MAP_ZERO, MAP_STEP = 32768, 2.0**-14  # the map's stored value v means (v - MAP_ZERO) * MAP_STEP: [-2, 2) in 16 bits,
# with 0 and ±1 exact and a step that a decimal string (DS) holds exactly
NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns",
          "BitsAllocated", "BitsStored")
RENDERING = ("RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth",
             "VOILUTFunction", "WindowCenterWidthExplanation", "VOILUTSequence")
SPACING = ("PixelSpacing", "ImagerPixelSpacing")
COPIED = ("BodyPartExamined",)
# Copied after highdicom has built the image: it warns on single-component names ("ANONYMOUS"), which anonymised
# files often have and which are valid DICOM.
NAMES = ("PatientName", "ReferringPhysicianName")
SKIPPED_NOTE = "DICOM outputs not written: {reason}; its PNG and safetensors outputs are written"


class NotWritable(Exception):
    """Why a DICOM input's outputs cannot be written back; the image's other outputs still are."""


def write_dicom_outputs(folder: Path, source: Path, sha256: str | None, counterfactual: np.ndarray,
                        signed_map: np.ndarray, scale: float, overlay: np.ndarray | None,
                        warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Write :func:`dicom_files` into ``folder`` (atomically); returns each file's name with its checksum.

    An input that cannot be written back adds one sentence to ``warnings`` (the image's record and the
    terminal say it) and writes nothing, never a wrong file.
    """
    try:
        files = dicom_files(source, counterfactual, signed_map, scale, overlay, sha256)
    except NotWritable as why:
        warnings.append(SKIPPED_NOTE.format(reason=why))
        return {}
    written = {}
    for name, data in files.items():
        io.atomic_write_bytes(folder / name, data)
        written[name] = manifest.checksum(data)
    return written


def dicom_files(source: Path, counterfactual: np.ndarray, signed_map: np.ndarray, scale: float,
                overlay: np.ndarray | None = None, sha256: str | None = None) -> dict[str, bytes]:
    """The DICOM outputs of one DICOM input by file name (see the module), encoded; raises NotWritable.

    ``counterfactual`` is gray ``(H, W)`` in [0, 1] at the input's size; ``signed_map`` ``(H, W)`` is
    ``input - counterfactual`` on that scale; ``scale`` is the heatmap's (the map's window); ``overlay`` is the
    full-size overlay (RGB, float in [0, 1] or uint8); ``sha256``, when given, must be the input's as read.
    """
    dataset, raw = source_dataset(source, sha256)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    for name, array in (("counterfactual", counterfactual), ("map", signed_map), ("overlay", overlay)):
        if array is not None and tuple(array.shape[:2]) != (rows, columns):
            raise NotWritable(f"the {name} is {array.shape[1]}x{array.shape[0]}, not the input's {columns}x{rows}")
    stored = stored_values(dataset, raw, counterfactual)
    map_values = map_stored_values(signed_map)
    pixels = {COUNTERFACTUAL: stored, MAP: map_values}
    if overlay is not None:
        pixels[OVERLAY] = io.to_uint8(overlay)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(array).tobytes() for array in pixels.values())).hexdigest()
    try:
        made = {COUNTERFACTUAL: counterfactual_image(dataset, stored, _uids(dataset, COUNTERFACTUAL, digest)),
                MAP: map_image(dataset, map_values, scale, _uids(dataset, MAP, digest))}
        if overlay is not None:
            made[OVERLAY] = overlay_image(dataset, pixels[OVERLAY], _uids(dataset, OVERLAY, digest))
        return {name: encode(image) for name, image in made.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # highdicom's refusals of the input's values
        raise NotWritable(f"its attributes cannot be carried into a derived image ({_gist(error)})") from error


def source_dataset(source: Path, sha256: str | None = None) -> tuple[Any, np.ndarray]:
    """The input's dataset and stored pixel values, checked for what writing its derived images needs; raises
    NotWritable."""
    import pydicom

    try:
        data = Path(source).read_bytes()
        dataset = pydicom.dcmread(_io.BytesIO(data))
    except Exception as error:  # OSError, InvalidDicomError, ...: the file changed since it was read
        raise NotWritable(f"{source} cannot be read again ({_gist(error)})") from error
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise NotWritable(f"{source} changed while the run read it")
    missing = [keyword for keyword in NEEDED if not str(dataset.get(keyword, "") or "").strip()]
    if missing:
        raise NotWritable(f"the input has no {', '.join(missing)}")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotWritable("the input is not a single grayscale frame")
    if int(dataset.BitsAllocated) not in (8, 16) or not 1 <= int(dataset.BitsStored) <= int(dataset.BitsAllocated):
        raise NotWritable(f"the input stores {dataset.BitsStored} of {dataset.BitsAllocated} bits, not 8 or 16")
    if int(dataset.get("PixelRepresentation", 0) or 0) != 0:
        raise NotWritable("the input's pixel data is signed, which a Secondary Capture image cannot store")
    try:
        raw = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for encodings it cannot decode
        raise NotWritable(f"its pixel data cannot be decoded ({_gist(error)})") from error
    return dataset, raw


def stored_values(dataset, raw: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (gray, [0, 1], as dva reads this file, whose stored values are ``raw``) as the file's stored
    values: dva's reading of the file
    (:func:`dva.core.io.dicom_intensities`) run backwards.

    Inverted numerically: the reading is tabulated over every stored value and interpolated in reverse, so any
    monotonic rescale, VOI window, sigmoid, LUT or MONOCHROME1 inversion is undone without restating it here.
    A value the window clipped comes back at the window's end. Raises NotWritable when the reading is not
    monotonic (a VOI LUT that folds back).
    """
    bits = int(dataset.BitsStored)
    dtype = np.uint8 if int(dataset.BitsAllocated) == 8 else np.uint16
    every = np.arange(2**bits, dtype=dtype)
    table = io.dicom_intensities(every, dataset).astype(np.float64)
    own = slice(min(int(raw.min()), every.size - 1), min(int(raw.max()), every.size - 1) + 1)
    stretched = io.dicom_intensities(every[own], dataset).astype(np.float64)
    if not np.allclose(stretched, table[own], atol=1e-6):
        # Without a VOI transform dva stretched the image's own value range to [0, 1]: only that range maps back.
        every, table = every[own], stretched
    if table[-1] < table[0]:
        every, table = every[::-1], table[::-1]
    steps = np.diff(table)
    if (steps < 0).any():
        raise NotWritable("its VOI LUT is not monotonic, so its intensities do not map back to stored values")
    # One stored value per run of equal intensities: the clipped low end keeps its last, the rest their first.
    first, last = np.r_[True, steps > 0], np.r_[steps > 0, True]
    keep = np.where(table == table[0], last, first)
    if keep.sum() < 2:
        raise NotWritable("the input is a single intensity, so its intensities do not map back to stored values")
    found = _interpolate(np.clip(pixels, 0.0, 1.0).astype(np.float64), table[keep], every[keep].astype(np.float64))
    return np.rint(found).astype(dtype)


def _interpolate(values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``np.interp(values, xs, ys)``, computed as a straight line where the table is one between its end points
    (a linear rescale and window, or none: the usual case, several times faster than np.interp's search at scan
    sizes, benchmarks/bench_dicom.py) to within a thousandth of a stored value, and by np.interp elsewhere."""
    inner_x, inner_y = xs[1:-1], ys[1:-1]
    if inner_x.size < 2 or inner_x[-1] <= inner_x[0]:
        return np.interp(values, xs, ys)
    slope = (inner_y[-1] - inner_y[0]) / (inner_x[-1] - inner_x[0])
    if np.abs(inner_y[0] + (inner_x - inner_x[0]) * slope - inner_y).max() > 1e-3:
        return np.interp(values, xs, ys)
    found = inner_y[0] + (values - inner_x[0]) * slope
    outside = (values < inner_x[0]) | (values > inner_x[-1])  # the clipped ends: few pixels, searched
    found[outside] = np.interp(values[outside], xs, ys)
    return found


def map_stored_values(signed_map: np.ndarray) -> np.ndarray:
    """The signed map ([-1, 1]) as 16-bit stored values, ``MAP_ZERO`` for 0 (see :func:`map_image`'s rescale)."""
    return (np.rint(np.clip(signed_map, -1.0, 1.0) / MAP_STEP) + MAP_ZERO).astype(np.uint16)


def _uids(dataset, name: str, digest: str) -> tuple[str, str]:
    """The (series, instance) UIDs of output ``name``: from the source's series (one derived series per source
    series and result) and instance, and the written pixels' ``digest``."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=["dva", name, str(dataset.SeriesInstanceUID), digest])
    instance = generate_uid(entropy_srcs=["dva", name, str(dataset.SOPInstanceUID), digest])
    return series, instance


def _secondary_capture(dataset, name: str, pixels: np.ndarray, photometric: str, bits: int, uids: tuple[str, str]):
    """A highdicom Secondary Capture of ``pixels`` in ``dataset``'s study, with its description, spacing and a
    reference to ``dataset`` as its source."""
    import highdicom
    from pydicom.dataset import Dataset

    orientation = [str(value) for value in (dataset.get("PatientOrientation") or [])]
    number, description = SERIES[name]
    header = Dataset()  # the source's attributes less its pixels and names (see NAMES)
    for element in dataset:
        if element.keyword not in (*NAMES, "PixelData"):
            header.add(element)
    image = highdicom.sc.SCImage.from_ref_dataset(
        header, pixels, photometric, bits, "PATIENT", uids[0], number, uids[1], 1, MANUFACTURER,
        patient_orientation=tuple(orientation) if len(orientation) == 2 else ("L", "F"),
        transfer_syntax_uid=highdicom.UID("1.2.840.10008.1.2.1"),  # explicit VR little endian, uncompressed
        series_description=description,
    )
    if len(orientation) != 2:
        image.PatientOrientation = ""  # the source states none; type 2, so empty rather than guessed
    for keyword in (*NAMES, *SPACING, *COPIED):
        if keyword in dataset:
            image[keyword] = dataset[keyword]
    image.ImageType = ["DERIVED", "SECONDARY"]
    reference(image, dataset)
    fixed_times(image, dataset)
    return image


def counterfactual_image(dataset, stored: np.ndarray, uids: tuple[str, str]):
    """The counterfactual in the input's stored-value range, bit depth and rendering (rescale, window)."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    image = _secondary_capture(dataset, COUNTERFACTUAL, stored, photometric, int(dataset.BitsAllocated), uids)
    image.BitsStored, image.HighBit = int(dataset.BitsStored), int(dataset.BitsStored) - 1
    for keyword in RENDERING:
        if keyword in dataset:
            image[keyword] = dataset[keyword]
    image.DerivationDescription = ("Healthy counterfactual synthesised by dva (latent diffusion) from the source "
                                   "image; stored values on the source's scale")
    return image


def map_image(dataset, map_values: np.ndarray, scale: float, uids: tuple[str, str]):
    """The signed map as 16-bit grayscale: rescale slope and intercept (and a Real World Value Mapping, in
    :data:`MAP_UNITS`) give its values back; windowed at ``±scale``, the heatmap's range."""
    import highdicom
    from pydicom.sr.codedict import codes

    image = _secondary_capture(dataset, MAP, map_values, "MONOCHROME2", 16, uids)
    slope, intercept = MAP_STEP, -MAP_ZERO * MAP_STEP
    image.RescaleSlope, image.RescaleIntercept, image.RescaleType = repr(slope), repr(intercept), "US"
    image.WindowCenter, image.WindowWidth = 0.0, f"{2.0 * max(float(scale), 1e-6):.6g}"
    mapping = highdicom.pm.RealWorldValueMapping(
        lut_label="dva map", lut_explanation=f"signed map, {MAP_UNITS}",
        unit=codes.UCUM.NoUnits, value_range=(0, 2**16 - 1), slope=slope, intercept=intercept)
    image.RealWorldValueMappingSequence = [mapping]
    image.DerivationDescription = (f"dva signed attribution map, {MAP_UNITS} (dva's [0, 1] reading of the source): "
                                   "the input (or its reconstruction) less the healthy counterfactual")
    return image


def overlay_image(dataset, rgb: np.ndarray, uids: tuple[str, str]):
    """The input with the map's heatmap, at the input's size, as an 8-bit RGB Secondary Capture."""
    image = _secondary_capture(dataset, OVERLAY, rgb, "RGB", 8, uids)
    image.DerivationDescription = "dva attribution heatmap blended over the source image"
    return image


def reference(image, dataset) -> None:
    """Name ``dataset`` as ``image``'s source: Source Image Sequence and Referenced Series Sequence."""
    from highdicom.sr import CodedConcept
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    purpose = CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    source = Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = dataset.SOPClassUID, dataset.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = [purpose]
    image.SourceImageSequence = [source]
    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = dataset.SOPClassUID, dataset.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedInstanceSequence = dataset.SeriesInstanceUID, [instance]
    image.ReferencedSeriesSequence = [series]


def fixed_times(image, dataset) -> None:
    """Replace the clock times highdicom writes (creation, capture, its contribution): the content date and time
    are the source's (content, else acquisition, else study), the optional (type 3) creation times go."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture"):
        if keyword in image:
            del image[keyword]
    for item in image.get("ContributingEquipmentSequence", []):
        if str(item.get("ManufacturerModelName", "")) == "highdicom" and "ContributionDateTime" in item:
            del item.ContributionDateTime
    for when in ("Content", "Acquisition", "Study"):
        if str(dataset.get(f"{when}Date", "") or ""):
            image.ContentDate, image.ContentTime = dataset.get(f"{when}Date"), dataset.get(f"{when}Time", "") or ""
            return
    image.ContentDate, image.ContentTime = "", ""  # type 2: empty rather than the clock's


def encode(image) -> bytes:
    """``image`` as the bytes of a DICOM file (preamble, file meta, explicit VR little endian)."""
    from pydicom import dcmwrite

    buffer = _io.BytesIO()
    dcmwrite(buffer, image, enforce_file_format=True)
    return buffer.getvalue()


def _gist(error: BaseException) -> str:
    """The first line of a library's error, without its end stop."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    return text[:117] + "..." if len(text) > 120 else text
