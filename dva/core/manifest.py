"""Run manifests: versions, resolved recipe, seeds, input hashes and per-image status.

Each image's outputs end with ``record.json`` (written last, atomically), which lists every file
with its size and sha256; the run's ``manifest.json`` gathers them. A rerun into the same folder
skips an image whose record matches its input hash and the recipe fingerprint (which covers the
weights' content hashes) and whose files are all whole; a damaged file is made again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from dva.core.io import atomic_write_text
# The recipe settings that change no pixel of an image's outputs (declared with outputs=False), so a rerun
# may differ in them and still resume.
from dva.core.settings import NOT_IN_FINGERPRINT

RECORD = "record.json"
MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("dva", "torch", "diffusers", "transformers", "numpy", "pillow", "pydicom", "opencv-python-headless"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


# Component options added after runs were fingerprinted, left out of the fingerprint at their default (which
# changes no output), so that a run made before them still resumes: (recipe field, option, default).
LATER_OPTIONS: tuple[tuple[str, str, Any], ...] = (("prior_options", "region", ""),)
# Recipe settings added after runs were fingerprinted, left out at their default likewise: (setting, default).
# ``fullsize`` at its default writes fewer full-size PNGs than runs before it did, with the same maps and the same
# values in attribution.safetensors; an image finished by such a run keeps its files when the run resumes.
LATER_SETTINGS: tuple[tuple[str, Any], ...] = (("calibration", "auto"), ("tile", "off"), ("tile_overlap", 0.5),
                                                  ("fullsize", "counterfactual"))


def fingerprint(recipe: dict[str, Any], extra: dict[str, Any]) -> str:
    """A hash of everything that determines an image's outputs."""
    relevant = {k: v for k, v in recipe.items()
                if k not in NOT_IN_FINGERPRINT and (k, v) not in LATER_SETTINGS}
    for field, key, default in LATER_OPTIONS:
        options = relevant.get(field)
        if isinstance(options, dict) and key in options and options[key] == default:
            relevant[field] = {k: v for k, v in options.items() if k != key}
    text = json.dumps({"recipe": relevant, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record.json of an image (or file) folder, or None when there is none or it is damaged."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checksum(data: bytes) -> dict[str, Any]:
    """What a record keeps of a written file to tell later that it is still whole."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def damaged_files(folder: Path, record: dict[str, Any], content: bool = True) -> list[str]:
    """The files a record lists that are missing, or (``content``) differ in size or bytes from what was written.

    A record without checksums (older dva, or a modality writer's own files) is checked for presence.
    """
    from dva.core.io import file_sha256

    sums = record.get("checksums") or {} if content else {}
    damaged = []
    for name in record.get("files", []):
        file, expected = folder / name, sums.get(name)
        try:
            if not file.is_file():
                damaged.append(name)
            elif expected and (file.stat().st_size != expected["bytes"] or file_sha256(file) != expected["sha256"]):
                damaged.append(name)
        except OSError:
            damaged.append(name)
    return damaged


def is_complete(folder: Path, sha256: str, recipe_fingerprint: str) -> dict[str, Any] | None:
    """The record of an image already done with this input and recipe whose files are all whole, else None."""
    record = read_record(folder)
    if record is None or record.get("sha256") != sha256 or record.get("fingerprint") != recipe_fingerprint:
        return None
    if "checksums" not in record and "images" not in record:
        return None  # an image record from before checksums: its files cannot be shown to be whole
    if damaged_files(folder, record):
        return None
    return record


def write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_text(folder / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def write_manifest(out: Path, header: dict[str, Any], images: list[dict[str, Any]]) -> None:
    counts: dict[str, int] = {}
    for image in images:
        counts[image["status"]] = counts.get(image["status"], 0) + 1
    manifest = {
        **header,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "images": images,
    }
    # allow_nan=False: a non-finite number must never reach a file as invalid JSON.
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")
