"""NIfTI brain volumes in and out: axial slices for dva run, and the maps put back into the volume.

:func:`read_volume` is the ``brain-mri`` modality's reader: it loads a 3-D NIfTI volume with nibabel,
normalises intensities between two percentiles of the non-background voxels, makes a brain mask
(from a supplied mask volume, else a simple threshold) and returns the chosen axial slices as
named 2-D images (``z042``), shown radiologically (anterior up, patient's right on the left).
:func:`write_volume` is its writer: it puts each slice's attribution map and counterfactual back
into a volume of the input's shape, saved as NIfTI with the input's affine so it overlays the scan.
"""

from __future__ import annotations

import gzip
import hashlib
import io as _io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dva import MIN_SIDE, ConfigError, ImageResult, InputError, ScanImage, ScanInput, atomic_write_bytes

MAX_BYTES = 1 << 30  # a decompressed volume above 1 GiB is refused (a gzip bomb, or not a single brain scan)
SLICES_HELP = "auto, an index (42), a range (40:60 or 40:60:2) or a list (40,45,50)"
OUTPUTS = ("attribution.nii.gz", "counterfactual.nii.gz")


@dataclass(frozen=True)
class PlaneLayout:
    """How an axial plane of the stored array becomes an image: transposed, then rows and columns flipped."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool

    def to_image(self, plane: np.ndarray) -> np.ndarray:
        image = plane.T if self.transpose else plane
        image = image[::-1] if self.flip_rows else image
        return np.ascontiguousarray(image[:, ::-1] if self.flip_cols else image)

    def from_image(self, image: np.ndarray) -> np.ndarray:
        plane = image[:, ::-1] if self.flip_cols else image
        plane = plane[::-1] if self.flip_rows else plane
        return plane.T if self.transpose else plane


@dataclass(frozen=True)
class VolumeContext:
    """What :func:`write_volume` needs to map slices back: the volume, its space and the slices taken."""

    shape: tuple[int, ...]  # as stored (trailing length-1 axes included)
    affine: np.ndarray
    header: Any
    volume: np.ndarray  # float32, 3-D, the stored intensities
    axis: int  # the voxel axis that runs inferior-superior
    layout: PlaneLayout
    slices: tuple[int, ...]
    low: float  # intensities at 0 and 1 of the normalised images
    high: float


def axial_layout(affine: np.ndarray) -> tuple[int, PlaneLayout]:
    """The voxel axis closest to inferior-superior, and how its planes become radiological images."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)  # per voxel axis: (RAS axis, direction)
    axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    plane_axes = [a for a in range(3) if a != axis]
    row_axis = next(a for a in plane_axes if orientation[a, 0] == 1)  # anterior-posterior runs down the rows
    col_axis = next(a for a in plane_axes if a != row_axis)
    return axis, PlaneLayout(
        transpose=plane_axes.index(row_axis) != 0,
        flip_rows=bool(orientation[row_axis, 1] > 0),  # anterior at the top
        flip_cols=bool(orientation[col_axis, 1] > 0),  # the patient's right on the image's left
    )


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.rstrip(".")[:120]


def load_nifti(path: Path) -> tuple[Any, str]:
    """The NIfTI image in ``path`` (``.nii`` or ``.nii.gz``, NIfTI-1 or -2) and the sha256 of its bytes."""
    import nibabel as nib

    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error}); check the path and permissions.") from error
    if not data:
        raise InputError(f"{path}: the file is empty; replace it or remove it from the inputs.")
    sha = hashlib.sha256(data).hexdigest()
    raw = data
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=_io.BytesIO(data)) as stream:
                raw = stream.read(MAX_BYTES + 1)
        except (OSError, EOFError) as error:
            raise InputError(f"{path}: the gzip stream is damaged ({_reason(error)}); export the volume again.") from error
        if len(raw) > MAX_BYTES:
            raise InputError(f"{path}: the volume is over {MAX_BYTES >> 30} GiB uncompressed; crop or downsample it first.")
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return image_class.from_bytes(raw), sha
        except Exception:  # nibabel raises several types for a header of the other version or none
            continue
    raise InputError(f"{path}: not a NIfTI file nibabel can read; export the volume as .nii or .nii.gz.")


def volume_data(image: Any, path: Path) -> np.ndarray:
    """The image's voxels as a float32 3-D array (trailing length-1 axes dropped); InputError otherwise."""
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    size = "x".join(str(n) for n in image.shape)
    if len(shape) < 3:
        raise InputError(f"{path}: the NIfTI image is {len(shape)}-D ({size}); brain-mri needs a 3-D volume.")
    if len(shape) > 3:
        raise InputError(
            f"{path}: the NIfTI image is {len(shape)}-D ({size}), a series of volumes; extract one volume "
            "(e.g. with fslroi) first."
        )
    try:
        voxels = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as error:  # truncated data, bad dtype
        raise InputError(f"{path}: the NIfTI voxel data is damaged ({_reason(error)}); export the volume again.") from error
    return np.nan_to_num(voxels, nan=0.0, posinf=0.0, neginf=0.0)


def normalise(volume: np.ndarray, low_percentile: float, high_percentile: float, path: Path) -> tuple[np.ndarray, float, float]:
    """Intensities scaled so the two percentiles of the non-background voxels map to 0 and 1 (clipped)."""
    if low_percentile >= high_percentile:
        raise ConfigError(
            f"brain-mri low_percentile ({low_percentile}) must be below high_percentile ({high_percentile})."
        )
    foreground = volume > volume.min()
    if not foreground.any():
        raise InputError(f"{path}: every voxel of the volume is {volume.min():g}; check the file.")
    low, high = (float(v) for v in np.percentile(volume[foreground], [low_percentile, high_percentile]))
    if high <= low:
        low, high = float(volume.min()), float(volume.max())
    return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32), low, high


def parse_slices(text: str, count: int, path: Path) -> list[int]:
    """Slice indices from ``42``, ``40:60``, ``40:60:2`` or ``40,45,50``; out of range is an InputError."""
    spec = str(text).strip()
    if re.fullmatch(r"\d+", spec):
        chosen = [int(spec)]
    elif match := re.fullmatch(r"(\d+):(\d+)(?::([1-9]\d*))?", spec):
        start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
        chosen = list(range(start, stop, step))
        if not chosen:
            raise ConfigError(f"brain-mri slices={spec!r} selects no slice (the end is exclusive); expected {SLICES_HELP}.")
        if stop > count:
            raise InputError(f"{path}: slices {spec} reach past the volume's {count} axial slices (0-{count - 1}).")
    elif re.fullmatch(r"\d+(\s*,\s*\d+)+", spec):
        chosen = list(dict.fromkeys(int(part) for part in spec.split(",")))
    else:
        raise ConfigError(f"brain-mri slices={spec!r}: expected {SLICES_HELP}.")
    for index in chosen:
        if index >= count:
            raise InputError(f"{path}: slice {index} is out of range; the volume has {count} axial slices (0-{count - 1}).")
    return chosen


def brain_mask(mask: Path | None, normalised: np.ndarray, threshold: float, path: Path) -> np.ndarray:
    """The supplied mask volume (non-zero voxels are brain), else voxels brighter than ``threshold``."""
    if mask is None:
        return normalised > threshold
    region = volume_data(load_nifti(Path(mask))[0], Path(mask)) > 0
    if region.shape != normalised.shape:
        size = "x".join(str(n) for n in region.shape)
        expected = "x".join(str(n) for n in normalised.shape)
        raise InputError(f"{mask}: the mask is {size} but its volume {path.name} is {expected}; use the mask made for this volume.")
    return region


def read_volume(
    path: Path,
    mask: Path | None = None,
    slices: str = "auto",
    low_percentile: float = 1.0,
    high_percentile: float = 99.0,
    threshold: float = 0.1,
    min_brain: float = 0.25,
) -> ScanInput:
    """The chosen axial slices of a NIfTI volume as named images in [0, 1] with brain masks.

    ``slices="auto"`` takes every slice whose brain area is at least ``min_brain`` of the largest's.
    """
    path = Path(path)
    image, sha = load_nifti(path)
    volume = volume_data(image, path)
    normalised, low, high = normalise(volume, low_percentile, high_percentile, path)
    region = brain_mask(mask, normalised, threshold, path)
    axis, layout = axial_layout(image.affine)
    count = volume.shape[axis]
    plane = [n for a, n in enumerate(volume.shape) if a != axis]
    if min(plane) < MIN_SIDE:
        raise InputError(
            f"{path}: axial slices are {plane[0]}x{plane[1]} voxels; dva needs at least {MIN_SIDE} on each side."
        )
    if str(slices).strip().lower() == "auto":
        areas = region.sum(axis=tuple(a for a in range(3) if a != axis))
        if areas.max() == 0:
            raise InputError(
                f"{path}: no voxel is brain (none above threshold {threshold} and no mask); pass --mask or "
                "lower the threshold option."
            )
        chosen = [int(k) for k in np.flatnonzero(areas >= min_brain * areas.max())]
    else:
        chosen = parse_slices(slices, count, path)
    width = max(3, len(str(count - 1)))
    images = tuple(
        ScanImage(
            layout.to_image(np.take(normalised, k, axis=axis)),
            f"z{k:0{width}d}",
            layout.to_image(np.take(region, k, axis=axis)),
        )
        for k in chosen
    )
    context = VolumeContext(
        tuple(int(n) for n in image.shape), np.asarray(image.affine), image.header, volume, axis, layout,
        tuple(chosen), low, high,
    )
    return ScanInput(path, sha, "nifti", images, context)


def write_volume(folder: Path, source: ScanInput, results: list[ImageResult]) -> list[str]:
    """``attribution.nii.gz`` (signed map, zero in slices not taken) and ``counterfactual.nii.gz`` (the
    input with the taken slices replaced, in its own intensity units), both in the input's space."""
    context: VolumeContext = source.context
    attribution = np.zeros(context.volume.shape, np.float32)
    counterfactual = context.volume.astype(np.float32, copy=True)
    for index, result in zip(context.slices, results):
        where: list[Any] = [slice(None)] * 3
        where[context.axis] = index
        attribution[tuple(where)] = context.layout.from_image(result.attribution)
        healthy = context.layout.from_image(result.counterfactual)
        counterfactual[tuple(where)] = context.low + healthy * (context.high - context.low)
    for name, volume in zip(OUTPUTS, (attribution, counterfactual)):
        atomic_write_bytes(Path(folder) / name, nifti_bytes(volume.reshape(context.shape), context))
    return list(OUTPUTS)


def nifti_bytes(volume: np.ndarray, context: VolumeContext) -> bytes:
    """A gzipped float32 NIfTI-1 of ``volume`` with the input's affine (qform and sform) and units."""
    import nibabel as nib

    image = nib.Nifti1Image(volume.astype(np.float32), context.affine)
    header = context.header
    for get, put in ((header.get_qform, image.set_qform), (header.get_sform, image.set_sform)):
        matrix, code = get(coded=True)
        if matrix is not None and int(code) > 0:
            put(matrix, int(code))
    image.header.set_xyzt_units(*header.get_xyzt_units())
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
