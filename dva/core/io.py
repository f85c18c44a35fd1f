"""Reading scans (PNG/JPEG of any bit depth, DICOM), fitting them to the model, atomic writes.

Every reader failure is an :class:`InputError` whose message names the file and says what to do,
so a batch can report it and go on with the rest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dva.core.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS + DICOM_EXTENSIONS
MIN_SIDE = 16
MAX_PIXELS = 12_000 * 12_000  # larger is treated as a decompression bomb


@dataclass(frozen=True)
class Scan:
    """A scan as grayscale intensities in [0, 1] at its original size, with its content hash."""

    path: Path
    pixels: np.ndarray  # float32, (height, width)
    sha256: str
    kind: str  # "png", "jpeg", "dicom", ...

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True)
class Padding:
    """How an image was padded to a square before resizing: pixels added on each side."""

    top: int
    bottom: int
    left: int
    right: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively) into input files; missing paths are returned as errors."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
            if not found:
                missing.append((path, f"{path}: folder holds no PNG, JPEG, TIFF, BMP or DICOM files."))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, f"{path}: no such file or folder; check the path."))
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, missing


def read_scan(path: str | Path) -> Scan:
    """Read an image or DICOM file as grayscale float intensities in [0, 1]."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror}); check the path and permissions.") from error
    if not data:
        raise InputError(f"{path}: the file is empty; replace it or remove it from the inputs.")
    sha = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() in DICOM_EXTENSIONS or data[128:132] == b"DICM":
        pixels, kind = _read_dicom(path), "dicom"
    else:
        pixels, kind = _read_picture(path)
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{path}: the image is {width}x{height} pixels; dva needs at least {MIN_SIDE} on each side.")
    return Scan(path, pixels, sha, kind)


def _read_picture(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                kind = (image.format or path.suffix.lstrip(".")).lower()
                image.load()
                pixels = _to_gray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(
            f"{path}: the image is too large to be a scan (over {MAX_PIXELS:,} pixels, a possible "
            "decompression bomb); downscale it first."
        ) from error
    except UnidentifiedImageError as error:
        raise InputError(f"{path}: not an image dva can read (PNG, JPEG, TIFF, BMP or DICOM); check the file.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f"{path}: the image is damaged or truncated ({error}); re-export it.") from error
    return pixels, kind


def _to_gray(image) -> np.ndarray:
    """Grayscale intensity in [0, 1] for any PIL mode, keeping 16-bit precision."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if values.max() > 255 else 255.0
        return np.clip(values / top, 0.0, 1.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return _min_max(values)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        background.alpha_composite(image)
        image = background
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _read_dicom(path: Path) -> np.ndarray:
    """DICOM pixels through the modality LUT (slope/intercept) and VOI window; MONOCHROME1 inverted."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable DICOM file ({error}); export it again.") from error
    if "PixelData" not in dataset:
        raise InputError(f"{path}: the DICOM file holds no image (no PixelData); pick the image series.")
    try:
        raw = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for unsupported encodings
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(
            f"{path}: unsupported DICOM encoding ({getattr(syntax, 'name', syntax)}); install pylibjpeg/"
            "gdcm or convert the file to uncompressed DICOM or PNG."
        ) from error
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
    if frames > 1 or samples != 1:
        raise InputError(
            f"{path}: a {'multi-frame' if frames > 1 else 'colour'} DICOM is not a radiograph dva can read; "
            "export a single grayscale frame."
        )
    values = apply_modality_lut(raw, dataset).astype(np.float32)
    if "WindowCenter" in dataset and "WindowWidth" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset).astype(np.float32)
    pixels = _min_max(values)
    if getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A binary mask (True inside the anatomy) of the given (height, width); values above half are in."""
    scan = read_scan(path)
    if scan.size != size:
        raise InputError(
            f"{path}: the mask is {scan.size[1]}x{scan.size[0]} but its image is {size[1]}x{size[0]}; "
            "use a mask of the same size."
        )
    return scan.pixels > 0.5


def pad_to_square(pixels: np.ndarray) -> tuple[np.ndarray, Padding]:
    """Pad with black (zero) on both sides of the short axis so the aspect ratio is kept."""
    height, width = pixels.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    padding = Padding(top, side - height - top, left, side - width - left)
    widths = [(padding.top, padding.bottom), (padding.left, padding.right)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, widths), padding


def resize(pixels: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a float (H, W) array to (height, width): area-averaging when shrinking, bicubic when growing.

    Values are not clipped (signed maps pass through); image writers clip to [0, 1].
    """
    import cv2

    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels.astype(np.float32, copy=False)
    if nearest:
        method = cv2.INTER_NEAREST
    elif height < pixels.shape[0]:
        method = cv2.INTER_AREA
    else:
        method = cv2.INTER_CUBIC
    return cv2.resize(pixels.astype(np.float32), (width, height), interpolation=method)


def to_model_input(pixels: np.ndarray, resolution: int, nearest: bool = False) -> tuple[np.ndarray, Padding]:
    """Pad to a square and resize to ``resolution``; returns the model image and the padding used."""
    square, padding = pad_to_square(pixels)
    return resize(square, (resolution, resolution), nearest=nearest), padding


def to_original(pixels: np.ndarray, padding: Padding, original: tuple[int, int]) -> np.ndarray:
    """Undo :func:`to_model_input`: resize to the padded square, then crop the padding away."""
    height, width = original
    side = max(height, width)
    square = resize(pixels, (side, side)) if pixels.ndim == 2 else np.stack(
        [resize(pixels[..., c], (side, side)) for c in range(pixels.shape[-1])], axis=-1
    )
    return square[padding.top : padding.top + height, padding.left : padding.left + width]


# -- writing ----------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the whole new one, never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a float [0, 1] gray (H, W) or RGB (H, W, 3) array, or a uint8 one, as PNG."""
    import io as _io

    from PIL import Image

    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def atomic_write_png(path: str | Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))
