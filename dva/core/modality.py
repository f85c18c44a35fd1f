"""The modality contract: how one input file becomes 2-D images, and how outputs go back onto it.

A modality's reader (its spec's ``implementation``) turns one file into a :class:`ScanInput`: one or
more named 2-D grayscale images in [0, 1], each with an optional region mask, plus a ``context``
for the writer. ``dva run`` fits every image to the model, writes each image's outputs into its own
folder, and, once every image of a file is done, calls the modality's optional writer with an
:class:`ImageResult` per image, so it can write outputs of its own (a volume in the input's space).

A reader may also return a plain :class:`dva.core.io.Scan` (one image, like ``read_scan``); dva
then reads the ``--mask`` image itself. This module imports numpy but not torch.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dva.core import io
from dva.core.contracts import ImageResult, ScanImage, ScanInput
from dva.core.errors import ConfigError, PluginError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TOLERANCE = 1e-4  # how far outside [0, 1] a reader's float pixels may stray (rounding) before it is a bug


def _accepts(function: Any, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (pluggy-style opt-in arguments)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def read_input(spec: Any, path: str | Path, mask: str | Path | None = None, options: dict[str, Any] | None = None) -> ScanInput:
    """Read ``path`` with modality ``spec``'s reader into a checked :class:`ScanInput`.

    ``mask`` is the mask file dva found for this input (``--mask``); a reader that takes a ``mask``
    argument reads it, otherwise dva reads it as an image of the same size. Raises InputError for a
    bad file and PluginError when the reader breaks the contract.
    """
    path = Path(path)
    reader = spec.resolve()
    options = dict(options or {})
    if mask is not None and _accepts(reader, "mask"):
        options["mask"] = Path(mask)
    found = reader(path, **options)
    if isinstance(found, io.Scan):
        image_mask = io.read_mask(mask, found.size) if mask is not None else None
        found = ScanInput(found.path, found.sha256, found.kind, (ScanImage(found.pixels, "", image_mask),),
                          notes=found.notes, bit_depth=found.bit_depth)
    return check_input(found, spec)


def check_input(found: Any, spec: Any) -> ScanInput:
    """``found`` with float32 pixels and bool masks, or a PluginError naming the modality and what is wrong."""

    def broken(what: str) -> PluginError:
        return PluginError(f"The reader of modality '{spec.name}' ({spec.implementation}) {what}; fix or uninstall its plugin.")

    if not isinstance(found, ScanInput):
        raise broken(f"returned {type(found).__name__}, not a ScanInput or Scan")
    if not found.images:
        raise broken(f"returned no images for {found.path}")
    names = [image.name for image in found.images]
    if len(found.images) > 1 or spec.writer:
        if not all(NAME.match(name) for name in names):
            raise broken(f"gave an image of {found.path} the name {next(n for n in names if not NAME.match(n))!r}; "
                         "images of a file with several images (or a writer) need names of letters, digits, . _ -")
        if len(set(names)) != len(names):
            raise broken(f"gave two images of {found.path} the same name")
    images = []
    for image in found.images:
        pixels = np.asarray(image.pixels)
        if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.floating):
            raise broken(f"returned image {image.name!r} as a {pixels.dtype} array of shape {pixels.shape}, not 2-D float")
        if not np.isfinite(pixels).all() or pixels.min() < -TOLERANCE or pixels.max() > 1 + TOLERANCE:
            raise broken(f"returned image {image.name!r} with values outside [0, 1]")
        pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)
        region = None
        if image.mask is not None:
            region = np.asarray(image.mask)
            if region.shape != pixels.shape:
                raise broken(f"returned image {image.name!r} with a mask of shape {region.shape}, not {pixels.shape}")
            region = region.astype(bool, copy=False)
        images.append(ScanImage(pixels, image.name, region))
    return ScanInput(found.path, found.sha256, found.kind, tuple(images), found.context, tuple(found.notes),
                     found.bit_depth)


def call_writer(spec: Any, folder: Path, source: ScanInput, results: list[ImageResult]) -> list[str]:
    """Call modality ``spec``'s writer; returns the files it wrote, relative to ``folder``."""
    from dva.core.imports import import_object

    written = import_object(spec.writer)(folder, source, results)
    if not isinstance(written, (list, tuple)) or not all(isinstance(name, str) for name in written):
        raise PluginError(
            f"The writer of modality '{spec.name}' ({spec.writer}) must return the list of files it wrote; "
            "fix or uninstall its plugin."
        )
    return list(written)


def load_result(image: ScanImage, folder: Path) -> ImageResult:
    """An image's results read back from its output folder (see :class:`ImageResult`)."""
    from PIL import Image
    from safetensors.numpy import load_file

    attribution = load_file(str(folder / "attribution.safetensors"))["attribution_fullsize"].astype(np.float32)
    with Image.open(folder / "fullsize" / "counterfactual.png") as saved:
        rgb = np.asarray(saved.convert("RGB"), dtype=np.float32) / 255.0
    return ImageResult(image, folder, rgb.mean(axis=-1), attribution)


def claimed_by(path: Path, catalogue: Any) -> set[str]:
    """The modalities whose extensions include ``path``'s."""
    return {
        name for name, item in catalogue.components["modality"].items()
        if item.spec.extensions and io.has_extension(path, item.spec.extensions)
    }


def _modality_extensions(catalogue: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(e for item in catalogue.components["modality"].values() for e in item.spec.extensions))


def walk_for_any_modality(inputs: list[str], catalogue: Any, exclude: Iterable[str | Path] = ()) -> io.InputWalk:
    """The inputs walked once for the files of every modality (and the images dva reads), so that the walk
    serves both :func:`modality_for_inputs` and the run of whichever modality is chosen."""
    extensions = tuple(dict.fromkeys((*io.SUPPORTED_EXTENSIONS, *_modality_extensions(catalogue))))
    return io.walk_inputs(inputs, exclude, extensions)


def modality_for_inputs(
    inputs: list[str] | io.InputWalk, catalogue: Any, exclude: Iterable[str | Path] = ()
) -> str | None:
    """The one modality whose extensions cover every input, or None when the inputs do not decide.

    ``inputs`` are paths, or their :func:`walk_for_any_modality`. Files of an extension no modality lists are
    left out of the vote. Inputs that no single modality covers (``.nii.gz`` and ``.png`` together) are a
    ConfigError asking to run them separately.
    """
    walk = inputs if isinstance(inputs, io.InputWalk) else walk_for_any_modality(inputs, catalogue, exclude)
    files, _ = walk.select(_modality_extensions(catalogue) or io.SUPPORTED_EXTENSIONS)
    common: set[str] | None = None
    first: dict[str, Path] = {}
    for path in files:
        claims = claimed_by(path, catalogue)
        if not claims:
            continue
        for name in claims:
            first.setdefault(name, path)
        common = claims if common is None else common & claims
        if not common:
            kinds = ", ".join(f"{first[name].name} ({name})" for name in sorted(first))
            raise ConfigError(
                f"The inputs are files of different modalities: {kinds}; run each modality separately, "
                "or pass --modality NAME."
            )
    return next(iter(common)) if common and len(common) == 1 else None
