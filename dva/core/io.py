"""Reading scans (PNG/JPEG of any bit depth, DICOM), fitting them to the model, atomic writes.

Every reader failure is an :class:`InputError` whose message names the file and says what to do,
so a batch can report it and go on with the rest.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dva.core.contracts import MIN_SIDE, Scan
from dva.core.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS + DICOM_EXTENSIONS
MAX_PIXELS = 12_000 * 12_000  # larger is treated as a decompression bomb


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


def has_extension(path: Path, extensions: Iterable[str]) -> bool:
    """Whether ``path``'s name ends with one of ``extensions`` (any case; ``.nii.gz`` works)."""
    name = path.name.lower()
    return any(name.endswith(extension.lower()) for extension in extensions)


def strip_extension(path: Path, extensions: Iterable[str]) -> str:
    """``path``'s name without the longest of ``extensions`` it ends with, else its stem (``brain.nii.gz`` -> ``brain``)."""
    name = path.name.lower()
    found = [e for e in extensions if name.endswith(e.lower()) and len(e) < len(name)]
    return path.name[: -len(max(found, key=len))] if found else path.stem


def collect_inputs(
    paths: Iterable[str | Path], exclude: Iterable[str | Path] = (), extensions: tuple[str, ...] = SUPPORTED_EXTENSIONS
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively) into input files; missing paths are returned as errors.

    A folder gives its files of one of ``extensions`` (default: the images and DICOM files dva reads), sorted, skipping hidden files and folders
    (``.name``, e.g. macOS ``._scan.png`` companions) and anything under an ``exclude`` folder that lies
    inside it (the run's output folder, so a rerun does not read its own outputs as inputs). Files
    named explicitly are always taken. Duplicates are dropped, keeping the first.
    """
    return walk_inputs(paths, exclude, extensions).select(extensions)


@dataclass(frozen=True)
class InputWalk:
    """The inputs walked once (see :func:`collect_inputs`): each path given, what it is (``"folder"``, ``"file"``
    or ``"missing"``) and a folder's files of any of ``extensions``. :meth:`select` gives the files of some of
    those extensions without walking again, so ``dva run`` can choose a modality by the files' extensions and
    then read that modality's files."""

    found: tuple[tuple[Path, str, tuple[Path, ...]], ...]
    extensions: tuple[str, ...]

    def select(self, extensions: tuple[str, ...] = SUPPORTED_EXTENSIONS) -> tuple[list[Path], list[tuple[Path, str]]]:
        """The input files of ``extensions`` (which the walk must cover), and the paths that gave none, with why."""
        if not set(extensions) <= set(self.extensions):
            raise ValueError(f"the inputs were walked for {self.extensions}, not {extensions}")
        files: list[Path] = []
        missing: dict[Path, str] = {}
        for path, kind, found in self.found:
            if path in missing:
                continue
            if kind == "folder":
                chosen = [p for p in found if has_extension(p, extensions)]
                if not chosen:
                    what = "PNG, JPEG, TIFF, BMP or DICOM" if extensions == SUPPORTED_EXTENSIONS else " or ".join(extensions)
                    missing[path] = f"{path}: folder holds no {what} files."
                files.extend(chosen)
            elif kind == "file":
                files.append(path)
            else:
                missing[path] = f"{path}: no such file or folder; check the path."
        unique = list(dict.fromkeys(p.resolve() for p in files))
        return unique, list(missing.items())


def walk_inputs(
    paths: Iterable[str | Path], exclude: Iterable[str | Path] = (), extensions: tuple[str, ...] = SUPPORTED_EXTENSIONS
) -> InputWalk:
    """Walk the folders among ``paths`` once for files of ``extensions`` (see :func:`collect_inputs`)."""
    excluded = [Path(folder).resolve() for folder in exclude]
    found: list[tuple[Path, str, tuple[Path, ...]]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append((path, "file" if path.is_file() else "missing", ()))
            continue
        root = path.resolve()
        inside = [folder for folder in excluded if root in folder.parents]
        found.append((path, "folder", tuple(sorted(
            p
            for p in path.rglob("*")
            if has_extension(p, extensions)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and p.is_file()
            and not any(folder in p.resolve().parents for folder in inside)
        ))))
    return InputWalk(tuple(found), tuple(extensions))


def _reason(error: BaseException) -> str:
    """The gist of a library's error as a clause for one sentence: its first line, first sentence, no end stop."""
    text = str(error).strip()
    text = text.splitlines()[0].strip() if text else ""
    text = text.split(". ")[0].strip().rstrip(".")
    if len(text) > 120:
        text = text[:117].rstrip() + "..."
    return text or type(error).__name__


def _too_large(path: Path, width: int, height: int) -> InputError:
    return InputError(
        f"{path}: the image is {width}x{height} pixels, too large to be a scan (over {MAX_PIXELS:,} pixels, "
        "a possible decompression bomb); downscale it first."
    )


def read_scan(path: str | Path, bit_depth: int | None = None) -> Scan:
    """Read an image or DICOM file as grayscale float intensities in [0, 1].

    ``bit_depth``: how many bits of a 16-bit (or 32-bit integer) image hold data; None detects it (see
    :func:`detect_bit_depth`) and says so in the scan's notes. DICOM files state theirs.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(
            f"{path}: cannot be read ({error.strerror or _reason(error)}); check the path and permissions."
        ) from error
    if not data:
        raise InputError(f"{path}: the file is empty; replace it or remove it from the inputs.")
    sha = hashlib.sha256(data).hexdigest()
    # Decode the very bytes that were hashed, so the hash always describes the pixels.
    notes: tuple[str, ...] = ()
    bits: int | None = None  # DICOM pixels are windowed, not the stored values scaled: no depth to write back to
    if path.suffix.lower() in DICOM_EXTENSIONS or data[128:132] == b"DICM":
        pixels, kind = _read_dicom(path, data), "dicom"
    else:
        pixels, kind, notes, bits = _read_picture(path, data, bit_depth)
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        raise InputError(f"{path}: the image is {width}x{height} pixels; dva needs at least {MIN_SIDE} on each side.")
    return Scan(path, pixels, sha, kind, notes, bits)


DETECTED_DEPTHS = (10, 12, 14)  # what X-ray detectors store in 16-bit files, besides 16 bits proper


def png_significant_bits(data: bytes) -> int | None:
    """The grey sample depth a PNG's ``sBIT`` chunk declares (the bits that hold data), if it has one."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"sBIT" and length >= 1:
            return data[position + 8]
        if kind in (b"IDAT", b"IEND"):
            return None  # sBIT must come before the image data
        position += 12 + length
    return None


def detect_bit_depth(values: np.ndarray, declared: int | None) -> tuple[int, str | None]:
    """The number of bits holding data in 16-bit ``values``, and a note when it was not 16 or was guessed.

    A PNG's sBIT chunk is believed, as the depth of values that fit in it; values above it are samples scaled to
    the full 16 bits, as the PNG specification has them, and are read as 16-bit. Otherwise a scan whose largest
    value fits in 10, 12 or 14 bits is read as such (a 12-bit detector's image stored in a 16-bit file would
    otherwise look nearly black).
    """
    top = int(values.max()) if values.size else 0
    if declared is not None and 1 <= declared <= 16:
        if top >= 2**declared:
            return 16, (f"its sBIT chunk says {declared} bits and its values reach {top}: samples scaled to 16 bits, "
                        "as PNG specifies, read as 16-bit")
        note = None if declared == 16 else f"read as {declared}-bit data (the file's sBIT chunk says so)"
        return declared, note
    for bits in DETECTED_DEPTHS:
        if top < 2**bits:
            return bits, (f"read as {bits}-bit data stored in a 16-bit file (its largest value is {top}); "
                          "pass --bit-depth 16 if it really is full-range 16-bit")
    return 16, None


def _read_picture(
    path: Path, data: bytes, bit_depth: int | None = None
) -> tuple[np.ndarray, str, tuple[str, ...], int | None]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    # dva checks the size on the header, before decoding. Pillow's process-wide limit is left alone
    # (changing it per read is not thread-safe); it still stops anything above twice its default.
    try:
        with Image.open(_io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise _too_large(path, image.width, image.height)
            kind = (image.format or path.suffix.lstrip(".")).lower()
            image.load()
            if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation: show it the way it was taken
                image = ImageOps.exif_transpose(image)
            pixels, notes, bits = _to_gray(image, bit_depth, png_significant_bits(data))
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(
            f"{path}: the image is too large to be a scan (over {MAX_PIXELS:,} pixels, a possible "
            "decompression bomb); downscale it first."
        ) from error
    except UnidentifiedImageError as error:
        raise InputError(f"{path}: not an image dva can read (PNG, JPEG, TIFF, BMP or DICOM); check the file.") from error
    except MemoryError as error:
        raise InputError(f"{path}: the image does not fit in memory; downscale it first.") from error
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise InputError(f"{path}: the image is damaged or truncated ({_reason(error)}); re-export it.") from error
    return pixels, kind, notes, bits


def _to_gray(
    image, bit_depth: int | None = None, declared: int | None = None
) -> tuple[np.ndarray, tuple[str, ...], int | None]:
    """Grayscale intensity in [0, 1] for any PIL mode, keeping 16-bit precision, notes on what was assumed, and
    the bit depth the values were divided by (``pixels = values / (2**bits - 1)``; None for float images).

    16-bit images are scaled by their bit depth: ``bit_depth`` when given, else :func:`detect_bit_depth`.
    """
    from PIL import Image

    deep = image.mode in ("I;16", "I;16B", "I;16L", "I;16N")
    if deep or image.mode == "I":
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "I" and bit_depth is None and values.max() <= 255:
            return np.clip(values / 255.0, 0.0, 1.0), (), 8
        if bit_depth is not None:
            bits, note = bit_depth, None
        else:
            bits, note = detect_bit_depth(values, declared)
        return np.clip(values / float(2**bits - 1), 0.0, 1.0), (note,) if note else (), bits
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return _min_max(values), (), None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        background.alpha_composite(image)
        image = background
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0, (), 8


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _read_dicom(path: Path, data: bytes) -> np.ndarray:
    """DICOM pixels through the modality LUT (slope/intercept) and VOI window; MONOCHROME1 inverted."""
    import pydicom

    try:
        dataset = pydicom.dcmread(_io.BytesIO(data))
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... on bad files
        from pydicom.errors import InvalidDicomError

        if isinstance(error, InvalidDicomError):
            raise InputError(
                f"{path}: not a DICOM file (no DICOM header found); export it again as DICOM, PNG or TIFF."
            ) from error
        raise InputError(f"{path}: not a readable DICOM file ({_reason(error)}); export it again.") from error
    if "PixelData" not in dataset:
        raise InputError(f"{path}: the DICOM file holds no image (no PixelData); pick the image series.")
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"{path}: the DICOM image attributes are damaged ({_reason(error)}); export it again."
        ) from error
    # Checked before decoding, so a huge or multi-frame file is refused without decoding it.
    if frames > 1 or samples != 1:
        raise InputError(
            f"{path}: a {'multi-frame' if frames > 1 else 'colour'} DICOM is not a radiograph dva can read; "
            "export a single grayscale frame."
        )
    if rows * columns > MAX_PIXELS:
        raise _too_large(path, columns, rows)
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        raw = dataset.pixel_array
    except MemoryError as error:
        raise InputError(f"{path}: the DICOM image does not fit in memory; downscale it first.") from error
    except Exception as error:  # pydicom raises many types for unsupported encodings
        if syntax is None or getattr(syntax, "is_compressed", True):
            raise InputError(
                f"{path}: unsupported DICOM encoding ({getattr(syntax, 'name', None) or syntax or 'unknown'}); "
                "install pylibjpeg/gdcm or convert the file to uncompressed DICOM or PNG."
            ) from error
        raise InputError(f"{path}: the DICOM pixel data is damaged ({_reason(error)}); export it again.") from error
    if raw.ndim != 2:
        raise InputError(f"{path}: the DICOM image is not a single grayscale frame; export one.")
    try:
        pixels = dicom_intensities(raw, dataset)
    except Exception as error:  # a malformed rescale or LUT attribute
        raise InputError(
            f"{path}: the DICOM rescale or LUT attributes are damaged ({_reason(error)}); export it again."
        ) from error
    return pixels


def dicom_intensities(raw: np.ndarray, dataset) -> np.ndarray:
    """Stored DICOM values as dva reads them: through the modality LUT (slope/intercept) and the VOI transform
    (else the values' own range) to [0, 1], MONOCHROME1 inverted. Public so DICOM outputs can invert it."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(raw, dataset).astype(np.float32)
    pixels = _voi(values, dataset)
    if pixels is None:
        pixels = _min_max(values)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels.astype(np.float32, copy=False)


def _first(value) -> float:
    """The first of a multi-valued DICOM number, as a float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _voi(values: np.ndarray, dataset) -> np.ndarray | None:
    """The VOI transform (LUT, else window) to [0, 1]: the window's ends map to 0 and 1, values outside clip.

    None where the file has no usable VOI transform; the caller then stretches the values' own range.
    """
    if "VOILUTSequence" in dataset:
        try:
            from pydicom.pixels import apply_voi_lut

            bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
            mapped = apply_voi_lut(values, dataset, prefer_lut=True).astype(np.float32)
            return np.clip(mapped / float(2**bits - 1), 0.0, 1.0)
        except Exception:  # a damaged LUT: fall back to the window, then to the values' range
            pass
    if "WindowCenter" not in dataset or "WindowWidth" not in dataset:
        return None
    try:
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if not (np.isfinite(center) and np.isfinite(width)):
        return None
    if function == "SIGMOID":  # PS3.3 C.11.2.1.3.1
        if width <= 0:
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (values.astype(np.float64) - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":  # PS3.3 C.11.2.1.3.2
        if width <= 0:
            return None
        low, high = center - width / 2.0, center + width / 2.0
    else:  # LINEAR, PS3.3 C.11.2.1.2.1
        if width < 1:
            return None
        low, high = center - 0.5 - (width - 1.0) / 2.0, center - 0.5 + (width - 1.0) / 2.0
    if high <= low:
        return (values > low).astype(np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A binary mask (True inside the anatomy) of the given (height, width); values above half are in.

    A mask of another size but the same aspect ratio (the COVID-19 Radiography Database ships 256 px
    masks for 299 px images) is resized with nearest-neighbour sampling.
    """
    scan = read_scan(path)
    if scan.size != size:
        (mask_h, mask_w), (height, width) = scan.size, size
        if abs(mask_w / mask_h - width / height) > 0.02 * (width / height):
            raise InputError(
                f"{path}: the mask is {mask_w}x{mask_h} but its image is {width}x{height}, a different shape; "
                "use the mask made for this image."
            )
        return resize(scan.pixels, size, nearest=True) > 0.5
    return scan.pixels > 0.5


# Bytes a run allocates per pixel of the padded square and per pixel of the image, fitting an image to the
# model and writing its full-size outputs (measured peaks: 31-32 per square pixel for elongated images,
# 94-110 per image pixel for square ones, with --reference reconstruction).
BYTES_PER_SQUARE_PIXEL = 32
BYTES_PER_IMAGE_PIXEL = 96
MEMORY_SHARE = 0.5  # of the memory free when an image is fitted, so the run and the system keep room


def working_bytes(height: int, width: int) -> int:
    """The memory fitting an image of this size and writing its full-size outputs takes, about."""
    side = max(height, width)
    return BYTES_PER_SQUARE_PIXEL * side * side + BYTES_PER_IMAGE_PIXEL * height * width


def free_memory() -> int | None:
    """Bytes of memory available now (Linux' MemAvailable, else free pages), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(path: Path, height: int, width: int) -> None:
    """Refuse an image whose padded square and full-size outputs would not fit in memory (before allocating)."""
    needed, free = working_bytes(height, width), free_memory()
    if free is not None and needed > MEMORY_SHARE * free:
        raise InputError(
            f"{path}: the image is {width}x{height} pixels; fitting it to the model (padded to a "
            f"{max(height, width)}-pixel square) and writing its full-size outputs needs about {needed / 2**30:.1f} GiB "
            f"of memory, more than half of the {free / 2**30:.1f} GiB free; crop or downscale it first."
        )


def pad_to_square(pixels: np.ndarray, side: int | None = None) -> tuple[np.ndarray, Padding]:
    """Pad with black (zero) on both sides of the short axis so the aspect ratio is kept, to a square of the long
    side (or of ``side``, at least the long side)."""
    height, width = pixels.shape[:2]
    side = max(height, width) if side is None else side
    if side < max(height, width):
        raise ValueError(f"cannot pad a {width}x{height} image to a {side}-pixel square")
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


def to_model_input(pixels: np.ndarray, resolution: int, nearest: bool = False,
                   pad_only: bool = False) -> tuple[np.ndarray, Padding]:
    """Pad to a square and resize to ``resolution``; returns the model image and the padding used.

    ``pad_only``: pad straight to a ``resolution`` square (at least the long side) and resize nothing, so the
    pixels reach the model as they are (``--tile``, whose side is the long side rounded up to the latent grid).
    """
    if pad_only:
        return pad_to_square(pixels, resolution)
    square, padding = pad_to_square(pixels)
    return resize(square, (resolution, resolution), nearest=nearest), padding


def to_original(pixels: np.ndarray, padding: Padding, original: tuple[int, int]) -> np.ndarray:
    """Undo :func:`to_model_input`: resize to the padded square, then crop the padding away."""
    height, width = original
    side = height + padding.top + padding.bottom
    square = resize(pixels, (side, side)) if pixels.ndim == 2 else np.stack(
        [resize(pixels[..., c], (side, side)) for c in range(pixels.shape[-1])], axis=-1
    )
    return square[padding.top : padding.top + height, padding.left : padding.left + width]


# -- writing ----------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the whole new one, never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # Mode 0o666 less the umask, like any new file (tempfile.mkstemp would make it owner-only, 0o600).
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


PNG_LEVEL = 1  # zlib level: a 2500x2048 output encodes 3x faster than at Pillow's default 6, for ~8% more bytes


def to_uint8(array: np.ndarray) -> np.ndarray:
    """A float [0, 1] array as uint8 levels (clipped, rounded); a uint8 array as it is."""
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a float [0, 1] gray (H, W) or RGB (H, W, 3) array, or a uint8 one, as PNG (zlib level 1)."""
    from PIL import Image

    buffer = _io.BytesIO()
    Image.fromarray(to_uint8(array)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def png16_bytes(values: np.ndarray) -> bytes:
    """Encode gray ``(H, W)`` uint16 ``values`` as a 16-bit PNG, the values as they are.

    No ``sBIT`` chunk: PNG wants samples scaled to the full 16 bits under one, and dva writes a scan's own stored
    values (e.g. 0-4095 for 12-bit data), as the scan's file held them; the depth is in the image's record.
    """
    from PIL import Image

    if values.dtype != np.uint16 or values.ndim != 2:
        raise ValueError(f"png16_bytes takes gray uint16 values, not {values.dtype} of shape {values.shape}")
    buffer = _io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def to_stored_values(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """Intensities in [0, 1] back on a ``bit_depth``-bit input's own scale (the inverse of :func:`read_scan`'s
    ``values / (2**bit_depth - 1)``), rounded, as uint16."""
    top = float(2**bit_depth - 1)
    return np.rint(np.clip(pixels, 0.0, 1.0).astype(np.float64) * top).astype(np.uint16)


def atomic_write_png(path: str | Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))
