"""Synthetic DICOM radiographs (CR or DX, uncompressed) for tests, benchmarks and ``make demo``.

Real DICOM test files carry patient data; these carry a made-up patient, study and series, pixel spacing, a
rescale and optionally a VOI window, so dva's reading and its DICOM outputs can be exercised end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


def stored_image(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth 12-bit stored values (200..3800) with a bright blob."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    blob = np.exp(-((x - np.random.default_rng(seed).uniform(0.3, 0.7)) ** 2 + (y - 0.4) ** 2) / 0.01)
    return (200 + 2400 * (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)) + 1200 * blob).clip(0, 4095).astype(np.uint16)


def write_radiograph(path: Path, pixels: np.ndarray | None = None, *, modality: str = "DX",
                     photometric: str = "MONOCHROME2", spacing: str = "ImagerPixelSpacing",
                     slope: float = 1.0, intercept: float = 0.0, window: tuple[float, float] | None = None,
                     signed: bool = False, study: bool = True, bits: int = 12, function: str | None = None) -> Path:
    """An uncompressed CR or DX file (12-bit, or 8-bit) with patient, study, series and spacing attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    values = stored_image() if pixels is None else pixels
    if bits == 8:
        values = (values // 16).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate, dataset.PatientSex = "Doe^Jane", "P-001", "19700101", "F"
    if study:
        dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    dataset.StudyDate, dataset.StudyTime, dataset.AccessionNumber, dataset.StudyID = "20240102", "093000", "A-7", "S-1"
    dataset.Modality, dataset.SeriesNumber, dataset.InstanceNumber = modality, 1, 1
    dataset.PatientOrientation = ["L", "F"]
    dataset[spacing] = pydicom.DataElement(spacing, "DS", [0.139, 0.143])
    dataset.Rows, dataset.Columns = values.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = (8, 8, 7) if bits == 8 else (16, 12, 11)
    dataset.PixelRepresentation = 1 if signed else 0
    dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = slope, intercept, "US"
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if function is not None:
        dataset.VOILUTFunction = function
    dataset.PixelData = values.astype(np.uint8 if bits == 8 else np.int16 if signed else np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path
