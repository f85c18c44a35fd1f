"""What a ``dva run`` folder holds, and which sample of a labelled dataset each of its images came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dva.core.errors import ConfigError
from dva.core.io import Padding
from dva.core.manifest import MANIFEST, RECORD, damaged_files, read_record
from dva.datasets import LabelledDataset, Sample


@dataclass(frozen=True)
class GeneratedImage:
    """One completed image of a run: where its outputs are and how they map onto the input."""

    folder: Path
    input: Path
    sha256: str
    original_size: tuple[int, int]
    padding: Padding
    prompt: str
    mask: Path | None = None
    score: float | None = None  # the image-level score dva run wrote (a calibrated model), if any

    @property
    def counterfactual(self) -> Path:
        """The counterfactual at the input's original size (as the real images are), else at model size."""
        full = self.folder / "fullsize" / "counterfactual.png"
        return full if full.is_file() else self.folder / "counterfactual.png"

    @property
    def model_input(self) -> Path:
        return self.folder / "input.png"

    @property
    def model_counterfactual(self) -> Path:
        return self.folder / "counterfactual.png"

    def attribution(self, name: str = "attribution") -> np.ndarray:
        """The signed map ``input - counterfactual`` at the input's original size; ``name`` ``calibrated``: the
        calibrated map a calibrated model writes beside it (tensor ``calibrated_fullsize``)."""
        from safetensors.numpy import load_file

        path = self.folder / "attribution.safetensors"
        try:
            maps = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types on damaged files
            raise damaged_output(path, error) from error
        if f"{name}_fullsize" not in maps:
            if name == "attribution":
                raise damaged_output(path, KeyError("attribution_fullsize"))
            raise ConfigError(f"{path} has no {name} map (tensor {name}_fullsize); evaluate the raw maps, or rerun "
                              f"with a model that writes one (dva calibrate).")
        return maps[f"{name}_fullsize"]

    def has_map(self, name: str) -> bool:
        """Whether attribution.safetensors holds the map ``name`` (``attribution``, ``calibrated``)."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.folder / "attribution.safetensors"), "numpy") as maps:
                return f"{name}_fullsize" in maps.keys()
        except Exception:  # unreadable: reading it later names the file
            return False


def damaged_output(path: Path, error: BaseException) -> ConfigError:
    """The sentence for an output of a run that cannot be read: which file, and how to repair it."""
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return ConfigError(f"{path}: this output of the run cannot be read ({reason}); rerun the dva run that made it, "
                       "into the same --out (it makes damaged outputs again), then evaluate again.")


def read_output_gray(path: Path) -> np.ndarray:
    """A run's 8-bit PNG as [0, 1] intensity, colour averaged over channels as the attribution map does."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=-1) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for missing, damaged and unknown files
        raise damaged_output(path, error) from error


@dataclass(frozen=True)
class RunOutputs:
    """A run folder's header (recipe, model, prompt) and its completed images."""

    folder: Path
    header: dict[str, Any]
    images: list[GeneratedImage]
    failed: int


def read_run(folder: str | Path) -> RunOutputs:
    """The completed images of a ``dva run`` output folder.

    Every image folder whose record.json has the run's fingerprint and whose files are whole counts,
    however it got there: made by the last invocation, resumed from an earlier one (listed as
    "skipped" in the manifest), or finished before an interruption that the manifest never saw.
    Images of other settings in the same folder are left out; images missing files are left out and counted.
    """
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise ConfigError(f"{folder}: not a dva run folder (no manifest.json); pass the --out folder of a dva run.")
    try:
        header = json.loads(manifest_file.read_text())
        listed = header.pop("images")
    except (ValueError, KeyError, AttributeError) as error:
        raise ConfigError(f"{manifest_file}: unreadable manifest ({error}); rerun dva run into this folder.") from None
    fingerprint = header.get("fingerprint")
    if fingerprint is None:  # a manifest of an older dva: its own list is all there is
        records = [record for record in listed if record.get("status") in ("done", "skipped")]
        failed = len(listed) - len(records)
    else:
        records, failed = _completed_records(folder, fingerprint)
        failed += sum(record.get("status") == "failed" for record in listed)
    prompt = header.get("prompt") or ""
    images = [
        GeneratedImage(
            folder=folder / record["output"],
            input=Path(record["input"]),
            sha256=record["sha256"],
            original_size=tuple(record["original_size"]),
            padding=Padding(**record["padding"]),
            prompt=prompt,
            mask=Path(record["mask"]) if record.get("mask") else None,
            score=_score(record.get("score")),
        )
        for record in records
    ]
    if not images:
        raise ConfigError(f"{folder}: the run has no completed images; finish it with dva run first.")
    return RunOutputs(folder, header, images, failed=failed)


def _score(value: Any) -> float | None:
    """A record's image-level score: a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if np.isfinite(value) else None


def _completed_records(folder: Path, fingerprint: str) -> tuple[list[dict[str, Any]], int]:
    """The image records under ``folder`` made with ``fingerprint`` whose files are all there, in output order,
    and how many such records miss files. (Contents are not checked here: a map edited on purpose is the
    user's to evaluate, and a damaged file fails with its name when it is read.)"""
    records, damaged = [], 0
    for file in sorted(folder.rglob(RECORD)):
        record = read_record(file.parent)
        if record is None or "images" in record:  # unreadable, or a file's own record (modality writer)
            continue
        if record.get("status") != "done" or record.get("fingerprint") != fingerprint:
            continue
        if damaged_files(file.parent, record, content=False):
            damaged += 1
            continue
        records.append(record)
    return sorted(records, key=lambda record: record["output"]), damaged


@dataclass(frozen=True)
class Pair:
    """A generated image and the dataset sample it was made from."""

    image: GeneratedImage
    sample: Sample


INPUTS_LABEL = "inputs"


def pair_with_inputs(images: list[GeneratedImage]) -> list[Pair]:
    """Without a dataset: each image with its own input (and the run's mask), all of one class."""
    return [Pair(image, Sample(image.input, INPUTS_LABEL, mask=image.mask)) for image in images]


def pair_with_dataset(images: list[GeneratedImage], dataset: LabelledDataset) -> tuple[list[Pair], list[GeneratedImage]]:
    """Match each generated image to its input's sample: by path, else by content hash (a moved dataset).

    Returns the pairs and the images that come from no sample of the dataset.
    """
    from dva.core.io import file_sha256

    by_path = {sample.path.resolve(): sample for sample in dataset.samples}
    unmatched = [image for image in images if image.input.resolve() not in by_path]
    by_hash: dict[str, Sample] = {}
    if unmatched:
        wanted = {image.sha256 for image in unmatched}
        for sample in dataset.samples:
            digest = file_sha256(sample.path)
            if digest in wanted:
                by_hash.setdefault(digest, sample)
    pairs, strangers = [], []
    for image in images:
        sample = by_path.get(image.input.resolve()) or by_hash.get(image.sha256)
        if sample is None:
            strangers.append(image)
        else:
            pairs.append(Pair(image, sample))
    if not pairs:
        example = images[0].input
        raise ConfigError(
            f"None of the {len(images)} generated images comes from the --real dataset {dataset.root} "
            f"(e.g. {example}); evaluate a run whose inputs are images of that dataset."
        )
    return pairs, strangers
