"""Read each input of the plan into jobs: its images (and masks) fitted to the model, on reader threads.

A modality reads the file (one image, or several: the slices of a volume); each image becomes one job,
``key`` or ``key/name``. What the user should know about an image (no mask found for it, an assumed
bit depth) goes into its job's warnings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import io, manifest, outputs
from dva.core.contracts import ScanImage, ScanInput
from dva.core.errors import ConfigError, InputError
from dva.core.modality import read_input
from dva.core.run.jobs import ImageJob
from dva.core.run.plan import MISSING_MASK
from dva.core.tiles import Tiling, working_side

NO_MASK_FOR_INPUT = "no mask named like this input in {mask}: its map covers the whole image, not the lungs"


@dataclass
class ReadInput:
    """One input read: the modality's result, a job per image, and the output key it got."""

    source: ScanInput
    jobs: list[ImageJob]
    key: str


class InputReader:
    """Reads one ``(path, key)`` of the plan into a :class:`ReadInput`; raises InputError for that input alone."""

    def __init__(self, out: Path, modality: Any, options: dict[str, Any], resolution: int, mask: str | None,
                 mask_needed: str | None = None, tiling: Tiling | None = None) -> None:
        self.out, self.modality, self.options = out, modality, options
        self.resolution, self.mask = resolution, mask
        self.mask_needed = mask_needed  # why the prior needs each image's mask (its ``needs_mask``), else None
        self.tiling = tiling  # --tile: each image is fitted at its own size (dva.core.tiles.working_side)

    def __call__(self, item: tuple[Path, str]) -> ReadInput:
        started = time.perf_counter()
        path, key = item
        source, jobs = expand(path, key, self.modality, self.options, self.resolution, self.mask, self.tiling)
        if self.mask_needed and any(job.model_mask is None for job in jobs):
            raise InputError(f"{path}: {self.mask_needed}, but --mask {self.mask} has no mask for this input; "
                             "add its mask, or run it without --region.")
        taken = next((folder for folder in (self.out / key, self.out / jobs[0].key)
                      if owned_by_another_input(folder, path, source.sha256)), None)
        if taken is not None:  # a same-named input of an earlier run keeps its outputs; this one goes beside them
            own_key = f"{key}-{outputs.path_tag(path)}"
            for job in jobs:
                job.key = own_key + job.key[len(key):]
                job.warnings.append(f"{taken} holds the outputs of another input of the same name, so this "
                                    f"input's outputs are in {self.out / own_key}")
            key = own_key
        share = (time.perf_counter() - started) / len(jobs)
        for job in jobs:
            job.seconds = share
        return ReadInput(source, jobs, key)


def expand(
    path: Path, key: str, modality: Any, options: dict[str, Any], resolution: int, mask: str | None,
    tiling: Tiling | None = None,
) -> tuple[ScanInput, list[ImageJob]]:
    """Read one input with its modality into one job per image (``key`` or ``key/name``); raises InputError."""
    mask_path = find_mask(mask, path, modality.extensions or io.SUPPORTED_EXTENSIONS)
    source = read_input(modality, path, mask_path, options)
    notes = list(source.notes)
    if mask is not None and mask_path is None:
        notes.append(NO_MASK_FOR_INPUT.format(mask=mask))
    jobs = []
    for image in source.images:
        job = ImageJob(path, f"{key}/{image.name}" if image.name else key, mask_path=mask_path, warnings=list(notes))
        side, note = working_side(image.pixels.shape[:2], tiling, resolution)
        if note:
            job.warnings.append(note)
        fit(job, source, image, side, pad_only=tiling is not None and note is None)
        jobs.append(job)
    return source, jobs


def find_mask(mask: str | None, image: Path, extensions: tuple[str, ...] = io.SUPPORTED_EXTENSIONS) -> Path | None:
    """A mask file for ``image``: the file itself, or the file of the same name (less extension) in a mask folder."""
    if mask is None:
        return None
    location = Path(mask)
    if location.is_file():
        return location
    if location.is_dir():
        stem = io.strip_extension(image, extensions)
        for candidate in sorted(location.iterdir()):
            if io.has_extension(candidate, extensions) and io.strip_extension(candidate, extensions) == stem:
                return candidate
        return None
    raise ConfigError(MISSING_MASK.format(mask=mask))


def fit(job: ImageJob, source: ScanInput, image: ScanImage, resolution: int, pad_only: bool = False) -> None:
    """Fill ``job`` with one image of ``source`` fitted to the model (and its mask, if any); ``pad_only``: padded to
    a ``resolution`` square and not resized (:func:`dva.core.io.to_model_input`)."""
    job.sha256 = source.sha256
    job.kind = source.kind
    job.bit_depth = source.bit_depth
    job.name = image.name
    job.original_size = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
    io.check_fits_in_memory(source.path, *job.original_size)
    if image.mask is not None and not image.mask.any():
        raise InputError(f"{job.mask_path or source.path}: the mask of {source.path.name} is empty (all zero), so its "
                         "map would be all zero; use the mask made for this image.")
    job.model_image, job.padding = io.to_model_input(image.pixels, resolution, pad_only=pad_only)
    if image.mask is not None:
        job.mask = image.mask
        job.model_mask = io.to_model_input(image.mask.astype(np.float32), resolution, nearest=True,
                                           pad_only=pad_only)[0] > 0.5
        if not job.model_mask.any():
            raise InputError(f"{job.mask_path or source.path}: the mask of {source.path.name} covers less than one pixel "
                             f"of the {resolution}-pixel model image, so its map would be all zero; check the mask.")


def owned_by_another_input(folder: Path, path: Path, sha256: str) -> bool:
    """Whether ``folder`` holds the outputs of another input file (other path and other content).

    Two runs of same-named inputs into one --out would otherwise overwrite each other's outputs; the same
    file moved (same content) or edited in place (same path) is the same input and reuses its folder.
    """
    record = manifest.read_record(folder)
    if record is None or record.get("sha256") == sha256 or not record.get("input"):
        return False
    return Path(record["input"]).resolve() != path.resolve()
