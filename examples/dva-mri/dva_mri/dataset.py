"""The ``brain-mri-volumes`` dataset layout: class folders of NIfTI volumes, for ``dva finetune``.

``<class>/*.nii.gz`` (or ``.nii``), with optional brain masks of the same name in ``<class>/masks/``.
Fine-tuning trains on 2-D images, so opening the dataset writes each volume's chosen axial slices
(read exactly as ``dva run --modality brain-mri`` reads them) as 16-bit PNGs, with their brain masks,
into a cache folder (default ``<dataset>/.dva-slices``, hidden so no other layout mistakes it for
images). A slice PNG is rewritten only when its content changes, so reopening is cheap and the
dataset fingerprint only changes with the volumes.
"""

from __future__ import annotations

import io as _io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dva import ConfigError, InputError, LabelledDataset, Sample, atomic_write_bytes, has_extension, strip_extension

LAYOUT = "brain-mri-volumes"
NIFTI = (".nii.gz", ".nii")
MASKS = "masks"
CACHE = ".dva-slices"


@dataclass
class VolumeDataset(LabelledDataset):
    """Slices of NIfTI volumes by class; ``class_folders`` names where each class's volumes were looked for."""

    class_folders: dict[str, Path | None] = field(default_factory=dict)


def _visible_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def _volumes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and has_extension(p, NIFTI))


def looks_like_volume_folders(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a folder with at least one class folder holding NIfTI volumes."""
    root = Path(location)
    return root.is_dir() and any(_volumes(folder) for folder in _visible_folders(root))


def _png(pixels: np.ndarray, sixteen_bit: bool) -> bytes:
    from PIL import Image

    if sixteen_bit:
        array = (np.clip(pixels, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
    else:
        array = np.where(pixels, 255, 0).astype(np.uint8)
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def _mask_for(volume: Path, masks: Path) -> Path | None:
    if not masks.is_dir():
        return None
    stem = strip_extension(volume, NIFTI)
    return next((p for p in _volumes(masks) if strip_extension(p, NIFTI) == stem), None)


def open_volume_folders(location: str | os.PathLike, slices: str = "auto", cache: str | None = None) -> VolumeDataset:
    """Every visible subfolder is a class of NIfTI volumes; their slices become the samples."""
    from dva_mri.volume import read_volume

    root = Path(os.path.abspath(location))
    if not root.is_dir():
        raise ConfigError(f"Dataset {root} is not a folder; {LAYOUT} expects <class>/*.nii.gz folders.")
    cache_root = Path(cache).expanduser().resolve() if cache else root / CACHE
    classes: dict[str, Path | None] = {}
    samples = []
    for folder in _visible_folders(root):
        classes[folder.name] = folder
        for volume in _volumes(folder):
            try:
                source = read_volume(volume, mask=_mask_for(volume, folder / MASKS), slices=slices)
            except InputError as error:
                raise ConfigError(f"{error} (dataset {root}, layout {LAYOUT})") from error
            stem = strip_extension(volume, NIFTI)
            for image in source.images:
                path = cache_root / folder.name / f"{stem}_{image.name}.png"
                _write_if_changed(path, _png(image.pixels, sixteen_bit=True))
                mask = None
                if image.mask is not None:
                    mask = cache_root / folder.name / MASKS / f"{stem}_{image.name}.png"
                    _write_if_changed(mask, _png(image.mask, sixteen_bit=False))
                samples.append(Sample(path, folder.name, mask))
    return VolumeDataset(root, LAYOUT, samples, class_folders=classes)
